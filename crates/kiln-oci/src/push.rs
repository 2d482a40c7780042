//! Pushing images: each layer and config blob unless the registry has it
//! already (or can mount it from another of its repositories that holds
//! it), then the manifests (by digest when several platforms make an
//! index), then the tag. Blobs stream from the blob store in pieces.

use std::collections::HashMap;

use futures::StreamExt;
use kiln_store::{BlobStore, Digest};
use oci_client::RegistryOperation;
use reqwest::header::HeaderValue;
use tokio::io::AsyncReadExt;

use crate::archive::{BuiltImage, build_index};
use crate::error::{Error, Failure, Fault, Result};
use crate::image::OCI_INDEX;
use crate::pull::{Registry, Source};
use crate::reference::Reference;

/// Bytes read from a blob file per piece sent.
const PIECE: usize = 1 << 20;

/// What a push did: the digest the tag names now, and the blobs sent,
/// mounted and found already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The digest of the manifest or index the tag names.
    pub digest: Digest,
    /// Blobs uploaded.
    pub blobs_sent: usize,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Blobs mounted from another repository of the registry.
    pub blobs_mounted: usize,
    /// Blobs the repository had already.
    pub blobs_present: usize,
}

/// How one blob reached the repository.
enum Sent {
    Uploaded(u64),
    Mounted,
    Present,
}

impl Pushed {
    fn count(&mut self, sent: Sent) {
        match sent {
            Sent::Uploaded(bytes) => {
                self.blobs_sent += 1;
                self.bytes_sent += bytes;
            }
            Sent::Mounted => self.blobs_mounted += 1,
            Sent::Present => self.blobs_present += 1,
        }
    }
}

impl Registry {
    /// Pushes `images` (one per platform; several make an index) to
    /// `reference`'s repository and tag, with the credentials of its
    /// registry; what the tag now names and what was sent. `elsewhere`
    /// names, for blobs the registry may hold in other repositories, one
    /// such repository: the blob is mounted from there when it can be.
    pub async fn push(
        &self,
        reference: &Reference,
        images: &[BuiltImage],
        blobs: &BlobStore,
        elsewhere: &HashMap<Digest, String>,
    ) -> Result<Pushed> {
        let host = reference.registry();
        let failed = |failure: Failure| Error::Push {
            reference: reference.to_string(),
            host: host.to_string(),
            failure: Box::new(failure),
        };
        let fault = |f: Fault| match f {
            Fault::Fatal(e) => e,
            Fault::Failure(failure) => failed(failure),
        };
        let source = self.source(host).map_err(fault)?;
        let target = reference.to_client(host);
        source
            .client
            .auth(&target, &source.auth, RegistryOperation::Push)
            .await
            .map_err(|e| fault(source.failure(e)))?;
        let mut pushed = Pushed {
            digest: images
                .first()
                .map(|i| i.manifest.1)
                .ok_or_else(|| failed(Failure::Invalid("no image to push".into())))?,
            blobs_sent: 0,
            bytes_sent: 0,
            blobs_mounted: 0,
            blobs_present: 0,
        };
        let mut seen = std::collections::HashSet::new();
        for image in images {
            for layer in image.layers.iter().filter(|l| seen.insert(l.digest)) {
                let from = elsewhere.get(&layer.digest).map(String::as_str);
                pushed.count(
                    push_blob(&source, &target, blobs, &layer.digest, from)
                        .await
                        .map_err(fault)?,
                );
            }
            let (config, digest) = &image.config;
            pushed.count(put_bytes(&source, &target, config, digest).await.map_err(fault)?);
        }
        let (body, media_type, digest) = match images {
            [image] => (image.manifest.0.clone(), image.media_type, image.manifest.1),
            _ => {
                for image in images {
                    let by_digest = target.clone_with_digest(image.manifest.1.to_string());
                    put_manifest(&source, &by_digest, &image.manifest.0, image.media_type)
                        .await
                        .map_err(fault)?;
                }
                let (index, digest) = build_index(images).map_err(|e| failed(Failure::Invalid(e.to_string())))?;
                (index, OCI_INDEX, digest)
            }
        };
        put_manifest(&source, &target, &body, media_type).await.map_err(fault)?;
        pushed.digest = digest;
        Ok(pushed)
    }
}

/// Whether the registry has the blob already.
async fn has_blob(source: &Source<'_>, target: &oci_client::Reference, digest: &Digest) -> Result<bool, Fault> {
    let what = format!("blob {digest}");
    let digest = digest.to_string();
    source
        .request(&what, || source.client.blob_exists(target, &digest))
        .await
}

/// Pushes a blob of the store, unless the repository has it or it can be
/// mounted from the repository `from` of the same registry.
async fn push_blob(
    source: &Source<'_>,
    target: &oci_client::Reference,
    blobs: &BlobStore,
    digest: &Digest,
    from: Option<&str>,
) -> Result<Sent, Fault> {
    if has_blob(source, target, digest).await? {
        return Ok(Sent::Present);
    }
    if let Some(from) = from.filter(|f| *f != target.repository()) {
        let other = oci_client::Reference::with_tag(target.registry().into(), from.into(), "latest".into());
        // A registry that does not mount answers with an upload session
        // instead (an error here): then the blob is uploaded.
        if source
            .client
            .mount_blob(target, &other, &digest.to_string())
            .await
            .is_ok()
        {
            return Ok(Sent::Mounted);
        }
    }
    let path = blobs.path(digest);
    let sent = std::sync::atomic::AtomicU64::new(0);
    let what = format!("blob {digest}");
    source
        .retrying(&what, || async {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| Fault::Fatal(Error::io("open blob", &path)(e)))?;
            let size = file.metadata().await.map(|m| m.len()).ok();
            sent.store(size.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
            let pieces = futures::stream::unfold(file, |mut file| async move {
                let mut piece = vec![0; PIECE];
                match file.read(&mut piece).await {
                    Ok(0) => None,
                    Ok(n) => {
                        piece.truncate(n);
                        Some((Ok(bytes::Bytes::from(piece)), file))
                    }
                    Err(e) => Some((Err(e.into()), file)),
                }
            })
            .boxed();
            source
                .patiently(
                    &what,
                    source
                        .client
                        .push_blob_stream(target, pieces, &digest.to_string(), size),
                )
                .await
                .map(drop)
                .map_err(|e| source.failure(e))
        })
        .await?;
    Ok(Sent::Uploaded(sent.into_inner()))
}

/// Pushes a small blob (a config) held in memory, unless the registry has
/// it; its size when it was sent.
async fn put_bytes(
    source: &Source<'_>,
    target: &oci_client::Reference,
    bytes: &[u8],
    digest: &Digest,
) -> Result<Sent, Fault> {
    if has_blob(source, target, digest).await? {
        return Ok(Sent::Present);
    }
    let (what, digest) = (format!("blob {digest}"), digest.to_string());
    source
        .request(&what, || source.client.push_blob(target, bytes.to_vec(), &digest))
        .await
        .map(|_| Sent::Uploaded(bytes.len() as u64))
}

/// Pushes a manifest or index to `target` (a tag or a digest).
async fn put_manifest(
    source: &Source<'_>,
    target: &oci_client::Reference,
    body: &[u8],
    media_type: &str,
) -> Result<(), Fault> {
    let what = format!("manifest {}", target.whole());
    let content_type =
        HeaderValue::from_str(media_type).map_err(|e| Fault::Failure(Failure::Invalid(e.to_string())))?;
    source
        .request(&what, || {
            source
                .client
                .push_manifest_raw(target, body.to_vec(), content_type.clone())
        })
        .await
        .map(drop)
}

//! The registry client: resolves a reference to one platform's manifest and
//! config (stored as verified blobs), then downloads its layers in parallel,
//! trying configured mirrors before the registry itself.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kiln_store::{BlobStore, Digest};
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use crate::config::RegistryConfig;
use crate::credentials::Credentials;
use crate::error::{Error, Failure, Fault, Result, blob_failure};
use crate::image::{
    DOCKER_LIST, DOCKER_MANIFEST, MAX_CONFIG_BYTES, MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES, Manifest, OCI_INDEX,
    OCI_MANIFEST, ResolvedImage, assemble, parse_manifest, select_platform, to_digest,
};
use crate::platform::Platform;
use crate::reference::Reference;

const ACCEPT: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// A registry client for pulls, built from a [`RegistryConfig`]. Cheap to
/// share; it keeps one HTTP client (and its tokens) per registry host.
pub struct Registry {
    config: RegistryConfig,
    clients: Mutex<HashMap<String, Client>>,
}

impl Registry {
    /// A client with the given settings.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn client(&self, host: &str) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(host.to_string())
            .or_insert_with(|| {
                let protocol = if self.config.is_insecure(host) {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                };
                Client::new(ClientConfig {
                    protocol,
                    connect_timeout: Some(Duration::from_secs(30)),
                    read_timeout: Some(Duration::from_secs(300)),
                    user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")),
                    platform_resolver: None,
                    ..Default::default()
                })
            })
            .clone()
    }

    fn auth(&self, host: &str) -> Result<RegistryAuth> {
        let dir = self.config.docker_config_dir();
        Ok(Credentials::lookup(dir.as_deref(), host)?.to_auth())
    }

    /// Adds what to check to a connection failure.
    fn hint(&self, host: &str, fault: Fault) -> Fault {
        match fault {
            Fault::Failure(Failure::Connect(msg)) => {
                let hint = if self.config.is_insecure(host) {
                    "is the registry running and listening there? it is spoken to over plain HTTP"
                } else {
                    "is the registry running and reachable? for a plain-HTTP registry add it to `insecure`"
                };
                Fault::Failure(Failure::Connect(format!("{msg} ({hint})")))
            }
            other => other,
        }
    }

    /// Resolves `reference` for `platform`: fetches the manifest (choosing
    /// from an index if needed), verifies and stores manifest and config in
    /// `store`, and returns the image. A reference pinned by digest must
    /// match the content served. Mirrors of the registry are tried first,
    /// in order; the registry itself only if they all fail.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &BlobStore,
    ) -> Result<ResolvedImage> {
        let sources = self.config.sources(reference.registry());
        let mut earlier = Vec::new();
        for (i, host) in sources.iter().enumerate() {
            match self
                .resolve_from(host, reference, platform, store)
                .await
                .map_err(|f| self.hint(host, f))
            {
                Ok(image) => return Ok(image),
                Err(Fault::Fatal(e)) => return Err(e),
                Err(Fault::Failure(failure)) if i + 1 == sources.len() => {
                    return Err(Error::Pull {
                        reference: reference.to_string(),
                        host: host.clone(),
                        failure: Box::new(failure),
                        earlier,
                    });
                }
                Err(Fault::Failure(failure)) => {
                    tracing::info!(%reference, mirror = %host, %failure, "mirror failed; trying the next source");
                    earlier.push(format!("{host}: {failure}"));
                }
            }
        }
        unreachable!("sources always include the registry itself")
    }

    async fn resolve_from(
        &self,
        host: &str,
        reference: &Reference,
        platform: &Platform,
        store: &BlobStore,
    ) -> Result<ResolvedImage, Fault> {
        let client = self.client(host);
        let auth = self.auth(host).map_err(Fault::Fatal)?;
        let cref = reference.to_client(host);

        let (mut bytes, mut digest) = fetch_manifest(&client, &cref, &auth, reference.digest()).await?;
        let mut index_digest = None;
        for _ in 0..MAX_INDEX_DEPTH {
            match parse_manifest(&bytes)? {
                Manifest::Image(manifest) => {
                    put_blob(store, &bytes, &digest, reference, "manifest")?;
                    let config_digest = to_digest(manifest.config().digest())?;
                    let config_size = manifest.config().size();
                    if config_size > MAX_CONFIG_BYTES {
                        return Err(Failure::Invalid(format!(
                            "config is {config_size} bytes, more than the {MAX_CONFIG_BYTES} accepted"
                        ))
                        .into());
                    }
                    let config = if store.contains(&config_digest) {
                        store
                            .read(&config_digest)
                            .map_err(|e| Fault::Fatal(Error::store("read config")(e)))?
                    } else {
                        let config = fetch_small_blob(&client, &cref, &config_digest, config_size).await?;
                        put_blob(store, &config, &config_digest, reference, "config")?;
                        config
                    };
                    return Ok(assemble(
                        Some(reference.clone()),
                        host.to_string(),
                        index_digest,
                        digest,
                        *manifest,
                        &config,
                    )?);
                }
                Manifest::Index(index) => {
                    put_blob(store, &bytes, &digest, reference, "index")?;
                    index_digest.get_or_insert(digest);
                    let entry = select_platform(&index, platform)?;
                    let entry_digest = to_digest(entry.digest())?;
                    let (b, d) = fetch_manifest(
                        &client,
                        &cref.clone_with_digest(entry_digest.to_string()),
                        &auth,
                        Some(&entry_digest),
                    )
                    .await?;
                    if b.len() as u64 != entry.size() {
                        return Err(Failure::SizeMismatch {
                            digest: entry_digest.to_string(),
                            expected: entry.size(),
                            actual: b.len() as u64,
                        }
                        .into());
                    }
                    (bytes, digest) = (b, d);
                }
            }
        }
        Err(Failure::Unsupported(format!("image indexes nested more than {MAX_INDEX_DEPTH} deep")).into())
    }

    /// Downloads the layers of `image` that `store` lacks, several at once,
    /// each streamed into the store and verified against its digest and
    /// size. Tries the source that served the manifest first, then the
    /// other mirrors and the registry.
    pub async fn fetch_layers(&self, image: &ResolvedImage, store: &BlobStore) -> Result<()> {
        // Owned descriptors: borrowed ones make the future not provably Send.
        let missing: Vec<crate::LayerDesc> = {
            let mut seen = std::collections::HashSet::new();
            image
                .layers
                .iter()
                .filter(|l| !store.contains(&l.digest) && seen.insert(l.digest))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let reference = image.reference.as_ref().ok_or_else(|| Error::Pull {
            reference: image.manifest_digest.to_string(),
            host: image.source.clone(),
            failure: Box::new(Failure::Other(
                "the image was not pulled from a registry and its layers are missing".into(),
            )),
            earlier: Vec::new(),
        })?;
        let mut sources = vec![image.source.clone()];
        sources.extend(
            self.config
                .sources(reference.registry())
                .into_iter()
                .filter(|s| *s != image.source),
        );
        let pinned = reference.with_digest(image.manifest_digest);

        futures::stream::iter(missing)
            .map(|layer: crate::LayerDesc| {
                let sources = &sources;
                let pinned = &pinned;
                async move {
                    let mut earlier = Vec::new();
                    for (i, host) in sources.iter().enumerate() {
                        let outcome = async {
                            let auth = self.auth(host).map_err(Fault::Fatal)?;
                            let client = self.client(host);
                            let cref = pinned.to_client(host);
                            client.store_auth_if_needed(cref.resolve_registry(), &auth).await;
                            download_blob(&client, &cref, &layer.digest, layer.size, store).await
                        }
                        .await
                        .map_err(|f| self.hint(host, f));
                        match outcome {
                            Ok(()) => return Ok(()),
                            Err(Fault::Fatal(e)) => return Err(e),
                            Err(Fault::Failure(failure)) if i + 1 == sources.len() => {
                                return Err(Error::Pull {
                                    reference: format!("{} layer {}", pinned, layer.digest),
                                    host: host.clone(),
                                    failure: Box::new(failure),
                                    earlier,
                                });
                            }
                            Err(Fault::Failure(failure)) => earlier.push(format!("{host}: {failure}")),
                        }
                    }
                    unreachable!("there is always at least one source")
                }
            })
            .buffer_unordered(self.config.concurrent_downloads())
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// [`Registry::resolve`] then [`Registry::fetch_layers`].
    pub async fn pull(&self, reference: &Reference, platform: &Platform, store: &BlobStore) -> Result<ResolvedImage> {
        let image = self.resolve(reference, platform, store).await?;
        self.fetch_layers(&image, store).await?;
        Ok(image)
    }
}

/// Fetches a manifest or index, checks its size and (when pinned) digest.
async fn fetch_manifest(
    client: &Client,
    cref: &oci_client::Reference,
    auth: &RegistryAuth,
    pinned: Option<&Digest>,
) -> Result<(Vec<u8>, Digest), Fault> {
    let (bytes, _) = client.pull_manifest_raw(cref, auth, ACCEPT).await.map_err(failure_of)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Failure::Invalid(format!(
            "manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} accepted",
            bytes.len()
        ))
        .into());
    }
    let actual = Digest::of(&bytes);
    if let Some(expected) = pinned
        && *expected != actual
    {
        return Err(Failure::DigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
        .into());
    }
    Ok((bytes.to_vec(), actual))
}

/// Fetches a small blob (a config) into memory, bounded by its size.
async fn fetch_small_blob(
    client: &Client,
    cref: &oci_client::Reference,
    digest: &Digest,
    size: u64,
) -> Result<Vec<u8>, Fault> {
    let d = digest.to_string();
    let mut stream = client.pull_blob_stream(cref, d.as_str()).await.map_err(failure_of)?;
    let mut out = Vec::with_capacity(size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(io_failure)?;
        out.extend_from_slice(&chunk);
        if out.len() as u64 > size {
            return Err(Failure::SizeMismatch {
                digest: d,
                expected: size,
                actual: out.len() as u64,
            }
            .into());
        }
    }
    if out.len() as u64 != size {
        return Err(Failure::SizeMismatch {
            digest: d,
            expected: size,
            actual: out.len() as u64,
        }
        .into());
    }
    let actual = Digest::of(&out);
    if actual != *digest {
        return Err(Failure::DigestMismatch {
            expected: d,
            actual: actual.to_string(),
        }
        .into());
    }
    Ok(out)
}

enum Chunk {
    Data(bytes::Bytes),
    Done,
}

/// Streams a blob into the store: the network side stays async, the file
/// side runs on a blocking thread; the blob only becomes visible when
/// complete and verified.
async fn download_blob(
    client: &Client,
    cref: &oci_client::Reference,
    digest: &Digest,
    size: u64,
    store: &BlobStore,
) -> Result<(), Fault> {
    let d = digest.to_string();
    let mut stream = client.pull_blob_stream(cref, d.as_str()).await.map_err(failure_of)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(16);
    let writer_store = store.clone();
    let expected = *digest;
    let writer = tokio::task::spawn_blocking(move || -> Result<Option<Result<(), Fault>>, Error> {
        let mut w = writer_store.writer().map_err(Error::store("start a blob"))?;
        loop {
            match rx.blocking_recv() {
                Some(Chunk::Data(b)) => w.write_all(&b).map_err(|e| Error::Io {
                    op: "write blob".into(),
                    path: "blob store".into(),
                    source: e,
                })?,
                Some(Chunk::Done) => break,
                None => return Ok(None), // aborted: dropping `w` discards the data
            }
        }
        match w.commit(Some(&expected)) {
            Ok(_) => Ok(Some(Ok(()))),
            Err(e) => match blob_failure(e) {
                Ok(f) => Ok(Some(Err(Fault::Failure(f)))),
                Err(e) => Err(Error::store(format!("store blob {expected}"))(e)),
            },
        }
    });
    let mut total = 0u64;
    let received: Result<(), Fault> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(io_failure)?;
            total += chunk.len() as u64;
            if total > size {
                return Err(Failure::SizeMismatch {
                    digest: d.clone(),
                    expected: size,
                    actual: total,
                }
                .into());
            }
            if tx.send(Chunk::Data(chunk)).await.is_err() {
                break; // the writer failed; its error is reported below
            }
        }
        if total != size {
            return Err(Failure::SizeMismatch {
                digest: d.clone(),
                expected: size,
                actual: total,
            }
            .into());
        }
        let _ = tx.send(Chunk::Done).await;
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| {
            Fault::Fatal(Error::Io {
                op: "write blob".into(),
                path: d.clone().into(),
                source: std::io::Error::other(e),
            })
        })?
        .map_err(Fault::Fatal)?;
    received?;
    written.unwrap_or_else(|| Err(Failure::Other(format!("download of {d} was interrupted")).into()))
}

fn put_blob(store: &BlobStore, bytes: &[u8], digest: &Digest, reference: &Reference, what: &str) -> Result<(), Fault> {
    if store.contains(digest) {
        return Ok(());
    }
    let op = format!("store {what} {digest} of {reference}");
    let mut w = store.writer().map_err(|e| Fault::Fatal(Error::store(op.clone())(e)))?;
    w.write_all(bytes).map_err(|e| {
        Fault::Fatal(Error::Io {
            op: op.clone(),
            path: "blob store".into(),
            source: e,
        })
    })?;
    match w.commit(Some(digest)) {
        Ok(_) => Ok(()),
        Err(e) => match blob_failure(e) {
            Ok(f) => Err(f.into()),
            Err(e) => Err(Fault::Fatal(Error::store(op)(e))),
        },
    }
}

/// Maps an error of a blob stream.
fn io_failure(e: std::io::Error) -> Fault {
    if let Some(DigestError::VerificationError { expected, actual }) =
        e.get_ref().and_then(|inner| inner.downcast_ref::<DigestError>())
    {
        return Failure::DigestMismatch {
            expected: expected.clone(),
            actual: actual.clone(),
        }
        .into();
    }
    Failure::Connect(error_chain(&e)).into()
}

/// Maps an oci-client error to a failure with an actionable message.
fn failure_of(e: OciDistributionError) -> Fault {
    let f = match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            let first = envelope.errors.first();
            let message = first.map(|e| e.message.clone()).unwrap_or_default();
            match first.map(|e| &e.code) {
                Some(OciErrorCode::ManifestUnknown) => Failure::ManifestUnknown,
                Some(OciErrorCode::NameUnknown) => Failure::RepositoryUnknown,
                Some(OciErrorCode::BlobUnknown) => Failure::BlobUnknown(message),
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => Failure::Unauthorized(message),
                Some(OciErrorCode::Toomanyrequests) => Failure::RateLimited(message),
                Some(code) => Failure::Registry {
                    code: format!("{code:?}"),
                    message,
                },
                None => Failure::Registry {
                    code: "unknown".into(),
                    message,
                },
            }
        }
        OciDistributionError::UnauthorizedError { url } => Failure::Unauthorized(format!("401 from {url}")),
        OciDistributionError::AuthenticationFailure(reason) => Failure::Unauthorized(reason.trim().to_string()),
        OciDistributionError::ServerError {
            code: 401 | 403,
            message,
            ..
        } => Failure::Unauthorized(message),
        OciDistributionError::ServerError { code: 404, url, .. } => Failure::Registry {
            code: "404".into(),
            message: format!("not found: {url}"),
        },
        OciDistributionError::ServerError { code: 429, message, .. } => Failure::RateLimited(message),
        OciDistributionError::ServerError { code, message, .. } => Failure::Registry {
            code: code.to_string(),
            message: message.trim().to_string(),
        },
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            Failure::DigestMismatch { expected, actual }
        }
        OciDistributionError::RequestError(e) => Failure::Connect(error_chain(&e)),
        OciDistributionError::IoError(e) => Failure::Connect(error_chain(&e)),
        OciDistributionError::UnsupportedMediaTypeError(m) => Failure::Unsupported(format!("manifest media type {m}")),
        OciDistributionError::UnsupportedSchemaVersionError(v) => {
            Failure::Unsupported(format!("manifest schemaVersion {v} (only 2 is supported)"))
        }
        OciDistributionError::VersionedParsingError(m) | OciDistributionError::ManifestParsingError(m) => {
            Failure::Invalid(m)
        }
        other => Failure::Other(other.to_string()),
    };
    f.into()
}

/// An error with its sources, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send_so_callers_can_spawn_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("b"), dir.path().join("t")).unwrap();
        let registry = Registry::new(RegistryConfig::default());
        let reference = Reference::parse("127.0.0.1:1/x").unwrap();
        let platform = Platform::host();
        let resolve = registry.resolve(&reference, &platform, &store);
        assert_send(&resolve);
        drop(resolve);
        assert_send(&registry);
    }
}

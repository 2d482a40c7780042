//! Images out as a tarball: one or several platforms' containers written
//! as one image archive (an OCI layout and a Docker archive at once, see
//! `kiln_oci::archive`). Each snapshot of a root filesystem's chain is one
//! layer, made once per compression and kept as a blob, so that exporting
//! or publishing the same container again compresses nothing.

use std::collections::HashMap;
use std::fs;
use std::time::Instant;

use async_trait::async_trait;
use kiln_graph::KeyBuilder;
use kiln_oci::{BuiltImage, Compression, LayerBlob, MediaTypes, Platform, RunConfig};
use kiln_store::{CacheRecord, Digest, SnapshotId, Store, now_secs};
use serde::{Deserialize, Serialize};

use super::{Context, Definition, OpOutput, Operation, Prepared};
use crate::error::Context as _;
use crate::{Cause, SolveError};

/// The file an [`ImageArchive`] writes, at the root of its tree.
pub const ARCHIVE_NAME: &str = "image.tar";

/// One platform's image: input `i` of the op is image `i`'s root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// How it runs (env, entrypoint, cmd, ...).
    pub run: RunConfig,
}

/// Writes containers as an image tarball ([`ARCHIVE_NAME`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageArchive {
    /// The images, one per platform.
    pub images: Vec<ImageSpec>,
    /// How layers are compressed.
    pub compression: Compression,
    /// OCI or Docker media types.
    pub media_types: MediaTypes,
    /// The name the archive tags its images with, if any.
    pub name: Option<String>,
}

impl Definition for ImageArchive {
    const KIND: &'static str = "image_archive";
}

#[async_trait]
impl Operation for ImageArchive {
    fn describe(&self) -> String {
        let platforms: Vec<&str> = self.images.iter().map(|i| i.platform.as_str()).collect();
        format!("image tarball ({})", platforms.join(", "))
    }

    async fn run(&self, cx: &Context<'_>, inputs: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let (op, inputs) = (self.clone(), inputs.to_vec());
        cx.blocking(move |store| {
            let images = build_images(store, &op.images, &inputs, op.compression, op.media_types)?;
            let staged = store.stage(None)?;
            let path = staged.diff().join(ARCHIVE_NAME);
            let file = fs::File::create(&path).context(|| format!("creating {}", path.display()))?;
            kiln_oci::write_archive(std::io::BufWriter::new(file), &images, store.blobs(), op.name.as_deref())
                .context(|| "writing the image tarball".to_string())?;
            Ok(OpOutput::single(staged))
        })
        .await
    }
}

/// The images of `specs` over the root filesystems `tops` (one each), with
/// their layers made (or found) in the blob store.
pub fn build_images(
    store: &Store,
    specs: &[ImageSpec],
    tops: &[Option<SnapshotId>],
    compression: Compression,
    media_types: MediaTypes,
) -> Result<Vec<BuiltImage>, Cause> {
    specs
        .iter()
        .zip(tops)
        .map(|(image, rootfs)| {
            let platform = Platform::parse(&image.platform)?;
            let layers = layer_blobs(store, *rootfs, compression)?;
            kiln_oci::build_image(&platform, &image.run, layers, compression, media_types)
                .context(|| "the image's manifest".to_string())
        })
        .collect()
}

/// The cache key under which kiln remembers a repository of the registry
/// `host` that holds the blob `digest` (a hint for cross-repository mounts).
fn blob_location_key(host: &str, digest: &Digest) -> [u8; 32] {
    *KeyBuilder::new("kiln/blob-location/v1")
        .bytes(host.as_bytes())
        .bytes(digest.to_string().as_bytes())
        .finish()
        .as_bytes()
}

/// The blobs of `images` that a repository of `host` is known to hold (from
/// earlier pushes and pulls), with that repository.
pub fn blob_locations(store: &Store, host: &str, images: &[BuiltImage]) -> Result<HashMap<Digest, String>, Cause> {
    let mut found = HashMap::new();
    for digest in images.iter().flat_map(|i| i.layers.iter().map(|l| l.digest)) {
        let record = store.cache_get(&blob_location_key(host, &digest))?;
        if let Some(repository) = record.and_then(|r| Some(r.meta.get("repository")?.as_str()?.to_string())) {
            found.insert(digest, repository);
        }
    }
    Ok(found)
}

/// Remembers that `repository` of `host` holds the blobs `digests`.
pub fn record_blob_locations(
    store: &Store,
    host: &str,
    repository: &str,
    digests: impl IntoIterator<Item = Digest>,
) -> Result<(), Cause> {
    for digest in digests {
        let record = CacheRecord {
            outputs: Vec::new(),
            meta: serde_json::json!({ "repository": repository }),
            description: format!("blob {digest} is in {host}/{repository}"),
            created: now_secs(),
            duration_ms: 0,
        };
        store.commit(Vec::new(), Some((&blob_location_key(host, &digest), &record)))?;
    }
    Ok(())
}

/// The cache key of the layer blob made of snapshot `id` with `compression`.
fn layer_blob_key(id: SnapshotId, compression: Compression) -> [u8; 32] {
    *KeyBuilder::new("kiln/layer-blob/v1")
        .bytes(&id.0.to_le_bytes())
        .bytes(serde_json::to_string(&compression).expect("serializes").as_bytes())
        .finish()
        .as_bytes()
}

/// Records `layer` as the blob of snapshot `id` with `compression` (made
/// from it, or the pulled blob it was extracted from).
pub(crate) fn record_layer_blob(
    store: &Store,
    id: SnapshotId,
    compression: Compression,
    layer: &LayerBlob,
    duration_ms: u64,
) -> Result<(), Cause> {
    let record = CacheRecord {
        outputs: Vec::new(),
        meta: serde_json::json!({ "layer": layer }),
        description: format!("layer blob of snapshot {id}"),
        created: now_secs(),
        duration_ms,
    };
    store.commit(Vec::new(), Some((&layer_blob_key(id, compression), &record)))?;
    Ok(())
}

/// The layer blobs of the tree `top` (base first; empty layers left out),
/// each made from its snapshot once per compression and recorded.
pub(crate) fn layer_blobs(
    store: &Store,
    top: Option<SnapshotId>,
    compression: Compression,
) -> Result<Vec<LayerBlob>, Cause> {
    let mut chain = Vec::new();
    let mut cur = top;
    while let Some(id) = cur {
        chain.push(id);
        cur = store.record(id)?.parent;
    }
    chain.reverse();
    let mut layers = Vec::new();
    for id in chain {
        let dir = store.layer_dir(id);
        let empty = fs::read_dir(&dir)
            .context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if empty {
            continue;
        }
        let known = store
            .cache_get(&layer_blob_key(id, compression))?
            .and_then(|r| serde_json::from_value::<LayerBlob>(r.meta.get("layer")?.clone()).ok())
            .filter(|l| store.blobs().contains(&l.digest));
        if let Some(layer) = known {
            layers.push(layer);
            continue;
        }
        let started = Instant::now();
        let mut blob = store.blobs().writer()?;
        let stats = kiln_oci::diff_to_layer(&dir, compression, &mut blob)?;
        let digest = blob.commit(Some(&stats.digest))?;
        let layer = LayerBlob {
            digest,
            diff_id: stats.diff_id,
            size: stats.size,
        };
        record_layer_blob(store, id, compression, &layer, started.elapsed().as_millis() as u64)?;
        layers.push(layer);
    }
    Ok(layers)
}

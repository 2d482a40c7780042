//! Image sources pulled from registries, and how any image becomes a tree:
//! unpacked layer by layer, each layer snapshot cached by its chain (parent
//! chain + uncompressed diff digest), so that images sharing base layers
//! share their snapshots.

use std::path::Path;

use async_trait::async_trait;
use kiln_graph::{Key, KeyBuilder};
use kiln_oci::{ExtractLimits, Platform, Reference, Registry, ResolvedImage};
use kiln_store::{CacheRecord, Digest, SnapshotId, Store, now_secs};
use serde::{Deserialize, Serialize};

use super::{CacheMap, Context, Definition, OpOutput, Operation, Prepared};
use crate::error::Context as _;
use crate::result::ImageMeta;
use crate::{Cause, SolveError};

/// The root filesystem of a registry image, pinned to its manifest digest
/// (the API resolves tags before building the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference as the user wrote it, normalized (for display).
    pub reference: String,
    /// Digest of the platform-specific manifest.
    pub manifest_digest: String,
    /// `os/arch[/variant]`.
    pub platform: String,
}

impl Definition for Image {
    const KIND: &'static str = "image";
}

impl Image {
    /// Keyed by what the image is, not what it is called.
    pub(crate) fn pinned(&self) -> CacheMap {
        pinned(&self.manifest_digest, &self.platform)
    }
}

#[async_trait]
impl Operation for Image {
    fn describe(&self) -> String {
        format!("pull {}", self.reference)
    }

    fn image(&self) -> Option<String> {
        Some(self.reference.clone())
    }

    async fn cache_map(&self, _: &Context<'_>) -> Result<CacheMap, SolveError> {
        Ok(self.pinned())
    }

    async fn run(&self, cx: &Context<'_>, _: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let digest: Digest = self
            .manifest_digest
            .parse()
            .map_err(|e: kiln_store::digest::InvalidDigest| cx.error(e.to_string()))?;
        let r = Reference::parse(&self.reference)
            .map_err(|e| cx.error(e))?
            .with_digest(digest);
        let notify = cx.notifier();
        let registry = cx.registry().with_observer(move |notice| notify(notice.to_string()));
        let image = resolve(&registry, cx.store(), &r, Some(&self.platform))
            .await
            .map_err(|e| cx.error(e))?;
        registry
            .fetch_layers(&image, cx.store().blobs())
            .await
            .map_err(|e| cx.error(e))?;
        unpack(cx, image).await
    }
}

/// The cache map of an image known by its manifest digest.
pub(crate) fn pinned(manifest_digest: &str, platform: &str) -> CacheMap {
    CacheMap::from_parts(vec![
        b"image".to_vec(),
        manifest_digest.as_bytes().to_vec(),
        platform.as_bytes().to_vec(),
    ])
}

/// A platform as written (`None` or empty: the host's).
pub(crate) fn parse_platform(platform: Option<&str>) -> Result<Platform, Cause> {
    match platform {
        Some(p) if !p.is_empty() => Ok(Platform::parse(p)?),
        _ => Ok(Platform::host()),
    }
}

/// Resolves `reference` with `registry` to its platform-specific manifest;
/// the manifest and config are stored.
pub(crate) async fn resolve(
    registry: &Registry,
    store: &Store,
    reference: &Reference,
    platform: Option<&str>,
) -> Result<ResolvedImage, Cause> {
    let platform = parse_platform(platform)?;
    Ok(registry.resolve(reference, &platform, store.blobs()).await?)
}

/// Loads an image from an OCI layout directory or an OCI/docker archive.
pub(crate) fn load(store: &Store, path: &Path, tag: Option<&str>, platform: Option<&str>) -> Result<ResolvedImage, Cause> {
    let platform = parse_platform(platform)?;
    let image = if path.is_dir() {
        kiln_oci::import_oci_layout(path, tag, &platform, store.blobs())
    } else {
        kiln_oci::import_archive(path, tag, &platform, store.blobs())
    };
    Ok(image?)
}

/// Unpacks a resolved image whose layers are stored.
pub(crate) async fn unpack(cx: &Context<'_>, image: ResolvedImage) -> Result<OpOutput, SolveError> {
    let meta = serde_json::json!({ "image": ImageMeta { config: image.config.clone() } });
    let limits = cx.layer_limits();
    let top = cx
        .blocking(move |store| {
            let mut parent: Option<SnapshotId> = None;
            let mut chain = KeyBuilder::new("kiln/layer/v1").finish();
            // Layers found in the cache stay while the image is unpacked.
            let mut pins = Vec::with_capacity(image.layers.len());
            // Pulled (not imported from a file): the registry that served
            // it holds its blobs, for publishes to mount.
            if let Some(reference) = image.reference.as_ref().filter(|_| !image.source.starts_with('/')) {
                let digests = image.layers.iter().map(|l| l.digest);
                super::image_archive::record_blob_locations(store, &image.source, reference.repository(), digests)?;
            }
            for layer in &image.layers {
                chain = KeyBuilder::new("kiln/layer/v1")
                    .key(&chain)
                    .bytes(layer.diff_id.as_bytes())
                    .finish();
                pins.push(store.pin_keys(&[*chain.as_bytes()]));
                if let Some(rec) = store.cache_get(chain.as_bytes())? {
                    parent = rec.outputs.first().copied().flatten();
                    continue;
                }
                parent = Some(apply(store, chain, parent, layer, limits)?);
            }
            Ok(parent)
        })
        .await?;
    Ok(OpOutput {
        staged: vec![],
        outputs: vec![top],
        meta,
    })
}

fn apply(
    store: &Store,
    chain: Key,
    parent: Option<SnapshotId>,
    layer: &kiln_oci::LayerDesc,
    limits: ExtractLimits,
) -> Result<SnapshotId, Cause> {
    let staged = store.stage(parent)?;
    let limits = bounded_limits(store, limits);
    let lowers = store.chain(parent)?;
    let blob = store.blobs().open_blob(&layer.digest)?;
    let started = std::time::Instant::now();
    let stats = kiln_oci::apply_layer(
        std::io::BufReader::new(blob),
        &layer.media_type,
        &staged.diff(),
        &lowers,
        limits,
    )
    .context(|| format!("layer {}", layer.digest))?;
    // The layer's snapshot is cached by its uncompressed digest: check it.
    if stats.diff_id != Some(layer.diff_id) {
        return Err(Cause::Invalid(format!(
            "layer {}: its uncompressed content does not match the image config (diff_id {} expected)",
            layer.digest, layer.diff_id
        )));
    }
    let id = staged.id();
    let record = CacheRecord {
        outputs: vec![Some(id)],
        meta: serde_json::Value::Null,
        description: format!("layer {}", layer.digest),
        created: now_secs(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    store.commit(vec![staged], Some((chain.as_bytes(), &record)))?;
    // The blob it came from is its layer blob in that compression: an
    // export or publish of the image sends the registry's own bytes (same
    // digests, so registries share and mount them).
    let mut prefix = [0u8; 4];
    let read = std::io::Read::read(&mut store.blobs().open_blob(&layer.digest)?, &mut prefix).unwrap_or(0);
    let compression = kiln_oci::Compression::detect(&layer.media_type, &prefix[..read]);
    let blob = kiln_oci::LayerBlob {
        digest: layer.digest,
        diff_id: layer.diff_id,
        size: layer.size,
    };
    super::image_archive::record_layer_blob(store, id, compression, &blob, 0)?;
    Ok(id)
}

/// `limits`, with the bytes a layer may write bounded by the free disk
/// space too: a layer that does not fit fails naming its entry instead of
/// filling the disk.
pub(crate) fn bounded_limits(store: &Store, limits: ExtractLimits) -> ExtractLimits {
    let available = kiln_store::free_space(store.root());
    ExtractLimits {
        max_total_bytes: [limits.max_total_bytes, available].into_iter().flatten().min(),
        ..limits
    }
}

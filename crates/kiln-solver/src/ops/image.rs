//! Image sources: resolved and pulled from registries or imported from
//! layouts and archives, then unpacked layer by layer. Each layer snapshot
//! is cached by its chain (parent chain + uncompressed diff digest), so
//! images sharing base layers share their snapshots.

use std::path::Path;
use std::sync::Arc;

use kiln_graph::{Key, KeyBuilder};
use kiln_oci::{ExtractLimits, Platform, Reference, ResolvedImage};
use kiln_store::{CacheRecord, Digest, SnapshotId, now_secs};

use super::{OpOutput, blocking};
use crate::engine::Engine;
use crate::error::Context;
use crate::result::ImageMeta;
use crate::running::Running;
use crate::{Cause, SolveError};

fn parse_platform(op: &str, platform: Option<&str>) -> Result<Platform, SolveError> {
    match platform {
        Some(p) if !p.is_empty() => Platform::parse(p).map_err(|e| SolveError::op(op, e)),
        _ => Ok(Platform::host()),
    }
}

impl Engine {
    /// Resolves an image reference (a tag goes to the registry) to its
    /// platform-specific manifest; the manifest and config are stored.
    pub async fn resolve_image(&self, reference: &str, platform: Option<&str>) -> Result<ResolvedImage, SolveError> {
        // The errors of kiln-oci name the reference already.
        let op = "resolve image";
        let r = Reference::parse(reference).map_err(|e| SolveError::op(op, e))?;
        let p = parse_platform(op, platform)?;
        // Not an operation yet (the API resolves tags as pipelines are
        // built): notices go to the log.
        self.registry
            .with_observer(|notice| tracing::warn!("{notice}"))
            .resolve(&r, &p, self.store.blobs())
            .await
            .map_err(|e| SolveError::op(op, e))
    }

    /// Loads an image from an OCI layout directory or an OCI/docker archive.
    pub async fn load_image(
        self: &Arc<Self>,
        path: &str,
        tag: Option<&str>,
        platform: Option<&str>,
    ) -> Result<ResolvedImage, SolveError> {
        let op = format!("import {path}");
        let p = parse_platform(&op, platform)?;
        let (path, tag) = (path.to_string(), tag.map(str::to_string));
        blocking(&self.store, &op, move |store| {
            let path = Path::new(&path);
            let result = if path.is_dir() {
                kiln_oci::import_oci_layout(path, tag.as_deref(), &p, store.blobs())
            } else {
                kiln_oci::import_archive(path, tag.as_deref(), &p, store.blobs())
            };
            Ok(result?)
        })
        .await
    }
}

pub(crate) async fn pull(
    engine: &Arc<Engine>,
    reference: &str,
    manifest_digest: &str,
    platform: &str,
    running: &Running,
) -> Result<OpOutput, SolveError> {
    let op = format!("pull {reference}");
    let digest: Digest = manifest_digest
        .parse()
        .map_err(|e: kiln_store::digest::InvalidDigest| SolveError::op(&op, e.to_string()))?;
    let r = Reference::parse(reference)
        .map_err(|e| SolveError::op(&op, e))?
        .with_digest(digest);
    let p = parse_platform(&op, Some(platform))?;
    let notify = running.notifier();
    let registry = engine.registry.with_observer(move |notice| notify(notice.to_string()));
    let image = registry
        .resolve(&r, &p, engine.store.blobs())
        .await
        .map_err(|e| SolveError::op(&op, e))?;
    registry
        .fetch_layers(&image, engine.store.blobs())
        .await
        .map_err(|e| SolveError::op(&op, e))?;
    unpack(engine, &op, image).await
}

pub(crate) async fn import(
    engine: &Arc<Engine>,
    path: &str,
    tag: Option<&str>,
    manifest_digest: &str,
    platform: &str,
) -> Result<OpOutput, SolveError> {
    let op = format!("import {path}");
    let image = engine.load_image(path, tag, Some(platform)).await?;
    if image.manifest_digest.to_string() != manifest_digest {
        return Err(SolveError::op(
            &op,
            format!(
                "the image there is now {} but the pipeline was built with {manifest_digest}; load it again",
                image.manifest_digest
            ),
        ));
    }
    unpack(engine, &op, image).await
}

async fn unpack(engine: &Arc<Engine>, op: &str, image: ResolvedImage) -> Result<OpOutput, SolveError> {
    let meta = serde_json::json!({ "image": ImageMeta { config: image.config.clone() } });
    let limits = engine.layer_limits;
    let top = blocking(&engine.store, op, move |store| {
        let mut parent: Option<SnapshotId> = None;
        let mut chain = KeyBuilder::new("kiln/layer/v1").finish();
        // Layers found in the cache stay while the image is unpacked.
        let mut pins = Vec::with_capacity(image.layers.len());
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
    store: &kiln_store::Store,
    chain: Key,
    parent: Option<SnapshotId>,
    layer: &kiln_oci::LayerDesc,
    limits: ExtractLimits,
) -> Result<SnapshotId, Cause> {
    let staged = store.stage(parent)?;
    // Never more than the disk can take: a layer that does not fit fails
    // naming its entry instead of filling the disk.
    let available = kiln_store::free_space(store.root());
    let limits = ExtractLimits {
        max_total_bytes: [limits.max_total_bytes, available].into_iter().flatten().min(),
        ..limits
    };
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
    Ok(id)
}

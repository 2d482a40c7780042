//! A resolved image (manifest, config and layer list of one platform) and
//! the manifest handling shared by registry pulls and imports: telling
//! manifests from indexes (OCI and Docker v2 schema 2), choosing a platform,
//! and checking that the config matches the layers.

use kiln_store::Digest;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::error::Failure;
use crate::platform::Platform;
use crate::reference::Reference;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker v2 schema 2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Largest manifest or index accepted (as Docker does).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 32 << 20;
/// Deepest nesting of indexes followed.
pub(crate) const MAX_INDEX_DEPTH: usize = 4;

/// One layer of an image, base layer first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDesc {
    /// Digest of the layer blob as stored (compressed or not).
    pub digest: Digest,
    /// Media type of the blob, e.g. `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar (from the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// One platform's image: its manifest and config are in the blob store;
/// its layers are once [`crate::Registry::fetch_layers`] ran (imports store
/// them right away).
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// What was asked for (for imports: the archive's tag, when it is a full
    /// reference such as docker-archive `RepoTags`).
    pub reference: Option<Reference>,
    /// Where it came from: the registry or mirror host that answered, or the
    /// path of the layout or archive.
    pub source: String,
    /// Digest of the index the manifest was chosen from, if there was one.
    pub index_digest: Option<Digest>,
    /// Digest of the platform-specific manifest (the image's identity).
    pub manifest_digest: Digest,
    /// The platform-specific manifest.
    pub manifest: ImageManifest,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// The image config (entrypoint, env, diff ids, ...).
    pub config: ImageConfiguration,
    /// The layers, base first.
    pub layers: Vec<LayerDesc>,
    /// Docker's health check, which the config may hold beside OCI's fields.
    pub healthcheck: Option<crate::Healthcheck>,
}

impl ResolvedImage {
    /// The uncompressed layer digests, base first.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id).collect()
    }

    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform::new(
            &self.config.os().to_string(),
            &self.config.architecture().to_string(),
            self.config.variant().as_deref(),
        )
    }

    /// Fails unless the image runs on `wanted` (for an image that did not
    /// come from an index, where its platform was chosen already).
    pub(crate) fn check_platform(&self, wanted: &Platform) -> Result<(), Failure> {
        let actual = self.platform();
        if self.index_digest.is_some() || wanted.matches(&actual) {
            return Ok(());
        }
        Err(Failure::PlatformMismatch {
            wanted: wanted.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// The `config.Healthcheck` of a Docker image config, if it has one.
fn docker_healthcheck(config: &[u8]) -> Option<crate::Healthcheck> {
    #[derive(serde::Deserialize)]
    struct Outer {
        config: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(rename = "Healthcheck")]
        healthcheck: Option<crate::Healthcheck>,
    }
    serde_json::from_slice::<Outer>(config).ok()?.config?.healthcheck
}

/// A parsed manifest document.
#[derive(Debug)]
pub(crate) enum Manifest {
    Image(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

/// Parses a manifest or an index (OCI or Docker v2 schema 2).
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Manifest, Failure> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Failure::Invalid(format!("manifest is not JSON: {e}")))?;
    let schema = value.get("schemaVersion").and_then(|v| v.as_u64());
    if schema != Some(2) {
        return Err(Failure::Unsupported(format!(
            "manifest schemaVersion {} (only 2 is supported; re-push the image with a current tool)",
            schema.map_or("missing".to_string(), |s| s.to_string())
        )));
    }
    let media_type = value.get("mediaType").and_then(|v| v.as_str());
    let is_index = match media_type {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(Failure::Unsupported(format!("manifest media type {other}"))),
        None if value.get("manifests").is_some() => true,
        None if value.get("config").is_some() => false,
        None => {
            return Err(Failure::Invalid("document is neither a manifest nor an index".into()));
        }
    };
    if is_index {
        let index: ImageIndex =
            serde_json::from_value(value).map_err(|e| Failure::Invalid(format!("malformed image index: {e}")))?;
        Ok(Manifest::Index(Box::new(index)))
    } else {
        let manifest: ImageManifest =
            serde_json::from_value(value).map_err(|e| Failure::Invalid(format!("malformed image manifest: {e}")))?;
        let config_type = manifest.config().media_type().to_string();
        if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
            return Err(Failure::Unsupported(format!(
                "config media type {config_type}: this is not a container image (an artifact?)"
            )));
        }
        Ok(Manifest::Image(Box::new(manifest)))
    }
}

/// Whether a descriptor points at a manifest or an index (rather than, say,
/// an attestation blob).
fn is_manifest_like(d: &Descriptor) -> bool {
    matches!(
        d.media_type().to_string().as_str(),
        OCI_INDEX | DOCKER_LIST | OCI_MANIFEST | DOCKER_MANIFEST
    )
}

fn is_attestation(d: &Descriptor) -> bool {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get("vnd.docker.reference.type"))
        .is_some_and(|t| t == "attestation-manifest")
}

/// Chooses the entry of `index` for `platform`. Entries without a platform
/// are taken only when they are the sole candidate.
pub(crate) fn select_platform<'a>(index: &'a ImageIndex, platform: &Platform) -> Result<&'a Descriptor, Failure> {
    let entries: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| is_manifest_like(d) && !is_attestation(d))
        .collect();
    let with_platform: Vec<(&Descriptor, Platform)> = entries
        .iter()
        .filter_map(|d| d.platform().as_ref().map(|p| (*d, Platform::from_oci(p))))
        .collect();
    if let Some(i) = platform.select(with_platform.iter().map(|(_, p)| p)) {
        return Ok(with_platform[i].0);
    }
    if with_platform.is_empty() && entries.len() == 1 {
        return Ok(entries[0]);
    }
    let available: Vec<String> = entries
        .iter()
        .map(|d| {
            d.platform()
                .as_ref()
                .map_or_else(|| "unspecified".to_string(), |p| Platform::from_oci(p).to_string())
        })
        .collect();
    Err(Failure::NoMatchingPlatform {
        wanted: platform.to_string(),
        available: if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        },
    })
}

/// Converts an oci-spec digest to the store's (sha256 only).
pub(crate) fn to_digest(d: &oci_spec::image::Digest) -> Result<Digest, Failure> {
    d.to_string()
        .parse::<Digest>()
        .map_err(|_| Failure::Unsupported(format!("digest {d}: only sha256 digests are supported")))
}

/// Checks the config against the manifest and assembles the image.
pub(crate) fn assemble(
    reference: Option<Reference>,
    source: String,
    index_digest: Option<Digest>,
    manifest_digest: Digest,
    manifest: ImageManifest,
    config_bytes: &[u8],
) -> Result<ResolvedImage, Failure> {
    let config_digest = to_digest(manifest.config().digest())?;
    let config: ImageConfiguration =
        serde_json::from_slice(config_bytes).map_err(|e| Failure::Invalid(format!("malformed image config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Failure::Invalid(format!(
            "config lists {} diff_ids for {} layers in the manifest",
            diff_ids.len(),
            manifest.layers().len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let diff_id = diff_id
            .parse::<Digest>()
            .map_err(|_| Failure::Invalid(format!("config diff_id {diff_id:?} is not a sha256 digest")))?;
        layers.push(LayerDesc {
            digest: to_digest(desc.digest())?,
            media_type: desc.media_type().to_string(),
            size: desc.size(),
            diff_id,
        });
    }
    Ok(ResolvedImage {
        healthcheck: docker_healthcheck(config_bytes),
        reference,
        source,
        index_digest,
        manifest_digest,
        manifest,
        config_digest,
        config,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn index(json: serde_json::Value) -> ImageIndex {
        match parse_manifest(&serde_json::to_vec(&json).unwrap()).unwrap() {
            Manifest::Index(i) => *i,
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn tells_manifests_from_indexes_oci_and_docker() {
        let docker = serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": D1, "size": 10},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D2, "size": 5}]
        });
        assert!(matches!(
            parse_manifest(&serde_json::to_vec(&docker).unwrap()),
            Ok(Manifest::Image(_))
        ));
        let list = serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_LIST,
            "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": D1, "size": 1,
                           "platform": {"os": "linux", "architecture": "amd64"}}]
        });
        assert!(matches!(
            parse_manifest(&serde_json::to_vec(&list).unwrap()),
            Ok(Manifest::Index(_))
        ));
        let schema1 = br#"{"schemaVersion": 1, "name": "x"}"#;
        assert!(matches!(parse_manifest(schema1), Err(Failure::Unsupported(m)) if m.contains("schemaVersion 1")));
        let artifact = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": D1, "size": 10},
            "layers": []
        });
        assert!(matches!(
            parse_manifest(&serde_json::to_vec(&artifact).unwrap()),
            Err(Failure::Unsupported(m)) if m.contains("not a container image")
        ));
        assert!(matches!(parse_manifest(b"nope"), Err(Failure::Invalid(_))));
    }

    #[test]
    fn selects_the_platform_and_skips_attestations() {
        let idx = index(serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": D1, "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "digest": D2, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": D3, "size": 1, "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
            ]
        }));
        let pick = |p: &str| select_platform(&idx, &Platform::parse(p).unwrap()).map(|d| d.digest().to_string());
        assert_eq!(pick("linux/amd64").unwrap(), D2);
        assert_eq!(pick("linux/arm64").unwrap(), D1);
        match pick("linux/s390x") {
            Err(Failure::NoMatchingPlatform { wanted, available }) => {
                assert_eq!(wanted, "linux/s390x");
                assert_eq!(available, "linux/arm64/v8, linux/amd64");
            }
            other => panic!("{other:?}"),
        }

        let single = index(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": D1, "size": 1}]
        }));
        assert_eq!(
            select_platform(&single, &Platform::parse("linux/riscv64").unwrap())
                .unwrap()
                .digest()
                .to_string(),
            D1
        );
    }

    #[test]
    fn assemble_checks_diff_ids_against_layers() {
        let manifest: ImageManifest = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": D1, "size": 10},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 5}]
        }))
        .unwrap();
        let config = |ids: &[&str]| {
            serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ids}
            }))
            .unwrap()
        };
        let d = Digest::of(b"m");
        let img = assemble(None, "here".into(), None, d, manifest.clone(), &config(&[D3])).unwrap();
        assert_eq!(img.layers[0].diff_id.to_string(), D3);
        assert_eq!(img.layers[0].digest.to_string(), D2);
        assert_eq!(img.config_digest.to_string(), D1);
        assert_eq!(img.platform().to_string(), "linux/amd64");
        assert!(matches!(
            assemble(None, "".into(), None, d, manifest, &config(&[])),
            Err(Failure::Invalid(_))
        ));
    }
}

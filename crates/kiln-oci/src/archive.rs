//! Images out: the config and manifest of an image made of layer blobs, and
//! the tarball that holds one or several platforms' images both as an OCI
//! image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) and as a
//! Docker archive (`manifest.json`), so that `docker load`, `skopeo` and
//! `Container.import` all read it.

use std::io::{self, Write};

use kiln_store::{BlobStore, Digest};
use oci_spec::image::{
    Config, ConfigBuilder, Descriptor, DescriptorBuilder, History, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, RootFsBuilder,
};
use serde::{Deserialize, Serialize};

use crate::image::{DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use crate::layer::Compression;
use crate::platform::Platform;

/// Which media types an image's manifest, config and layers are written with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaTypes {
    /// OCI's (the default).
    #[default]
    Oci,
    /// Docker's v2 schema 2.
    Docker,
}

/// A layer blob made from a snapshot (in the blob store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    /// Digest of the blob as stored (compressed as asked).
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the blob.
    pub size: u64,
}

/// What an image's config says of how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Default arguments.
    pub cmd: Vec<String>,
    /// User.
    pub user: String,
    /// Working directory.
    pub workdir: String,
    /// Labels, in order.
    pub labels: Vec<(String, String)>,
    /// Exposed ports, `8080/tcp`.
    pub exposed_ports: Vec<String>,
    /// Paths declared as volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// The signal that stops the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Docker's health check (not part of OCI's config; Docker reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Annotations of the image's manifest, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<(String, String)>,
}

/// Docker's `HEALTHCHECK` as its image config holds it: the test
/// (`["CMD", args...]`, `["CMD-SHELL", line]` or `["NONE"]`) and
/// durations in nanoseconds (0 or absent: Docker's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// What to run.
    #[serde(default)]
    pub test: Vec<String>,
    /// Time between checks.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    /// Time one check may take.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    /// Time to start, during which failures do not count.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    /// Time between checks while starting.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    /// Failures in a row that make the container unhealthy.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One platform's image, ready to write: its manifest and config (in
/// memory) and its layers (in the blob store).
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The platform.
    pub platform: Platform,
    /// The manifest's bytes and digest.
    pub manifest: (Vec<u8>, Digest),
    /// The config's bytes and digest.
    pub config: (Vec<u8>, Digest),
    /// The layer blobs, base first.
    pub layers: Vec<LayerBlob>,
    /// The manifest's media type.
    pub media_type: &'static str,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> io::Result<Descriptor> {
    DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(digest.to_string().parse::<oci_spec::image::Digest>().map_err(invalid)?)
        .size(size)
        .build()
        .map_err(invalid)
}

/// The media type of layers compressed with `compression`.
pub fn layer_media_type(compression: Compression, media: MediaTypes) -> &'static str {
    match (media, compression) {
        (MediaTypes::Oci, Compression::None) => crate::image::OCI_LAYER_TAR,
        (MediaTypes::Oci, Compression::Gzip) => crate::image::OCI_LAYER_GZIP,
        (MediaTypes::Oci, Compression::Zstd) => crate::image::OCI_LAYER_ZSTD,
        (MediaTypes::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
        (MediaTypes::Docker, _) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
}

/// The config of an image with `layers` that runs as `run` says.
fn image_config(platform: &Platform, run: &RunConfig, layers: &[LayerBlob]) -> io::Result<ImageConfiguration> {
    let mut config = ConfigBuilder::default();
    let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    if let Some(env) = nonempty(&run.env) {
        config = config.env(env);
    }
    if let Some(entrypoint) = nonempty(&run.entrypoint) {
        config = config.entrypoint(entrypoint);
    }
    if let Some(cmd) = nonempty(&run.cmd) {
        config = config.cmd(cmd);
    }
    if !run.user.is_empty() {
        config = config.user(run.user.clone());
    }
    if !run.workdir.is_empty() {
        config = config.working_dir(run.workdir.clone());
    }
    if !run.labels.is_empty() {
        config = config.labels(run.labels.iter().cloned().collect::<std::collections::HashMap<_, _>>());
    }
    if let Some(ports) = nonempty(&run.exposed_ports) {
        config = config.exposed_ports(ports);
    }
    if let Some(volumes) = nonempty(&run.volumes) {
        config = config.volumes(volumes);
    }
    if let Some(signal) = &run.stop_signal {
        config = config.stop_signal(signal.clone());
    }
    let config: Config = config.build().map_err(invalid)?;
    let diff_ids = layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>();
    let history: Vec<History> = layers
        .iter()
        .map(|_| HistoryBuilder::default().created_by("kiln").build().map_err(invalid))
        .collect::<io::Result<_>>()?;
    let mut builder = ImageConfigurationBuilder::default()
        .architecture(platform.architecture.as_str())
        .os(platform.os.as_str())
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(diff_ids)
                .build()
                .map_err(invalid)?,
        )
        .history(history);
    if let Some(variant) = &platform.variant {
        builder = builder.variant(variant.clone());
    }
    builder.build().map_err(invalid)
}

/// The manifest and config of an image of `layers` (in the blob store,
/// compressed with `compression`) for `platform`, run as `run` says.
pub fn build_image(
    platform: &Platform,
    run: &RunConfig,
    layers: Vec<LayerBlob>,
    compression: Compression,
    media: MediaTypes,
) -> io::Result<BuiltImage> {
    let mut config = serde_json::to_value(image_config(platform, run, &layers)?).map_err(invalid)?;
    if let (Some(check), Some(fields)) = (
        &run.healthcheck,
        config.get_mut("config").and_then(|c| c.as_object_mut()),
    ) {
        fields.insert("Healthcheck".into(), serde_json::to_value(check).map_err(invalid)?);
    }
    let config = serde_json::to_vec(&config).map_err(invalid)?;
    let config_digest = Digest::of(&config);
    let (manifest_type, config_type) = match media {
        MediaTypes::Oci => (OCI_MANIFEST, OCI_CONFIG),
        MediaTypes::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
    };
    let layer_type = layer_media_type(compression, media);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(manifest_type))
        .config(descriptor(config_type, &config_digest, config.len() as u64)?)
        .layers(
            layers
                .iter()
                .map(|l| descriptor(layer_type, &l.digest, l.size))
                .collect::<io::Result<Vec<_>>>()?,
        )
        .build()
        .map_err(invalid)?;
    let mut manifest = manifest;
    if !run.annotations.is_empty() {
        manifest.set_annotations(Some(run.annotations.iter().cloned().collect()));
    }
    let manifest = serde_json::to_vec(&manifest).map_err(invalid)?;
    let manifest_digest = Digest::of(&manifest);
    Ok(BuiltImage {
        platform: platform.clone(),
        manifest: (manifest, manifest_digest),
        config: (config, config_digest),
        layers,
        media_type: manifest_type,
    })
}

/// The index of several platforms' images (a multi-platform image).
pub fn build_index(images: &[BuiltImage]) -> io::Result<(Vec<u8>, Digest)> {
    let manifests = images
        .iter()
        .map(|image| {
            let mut d = descriptor(image.media_type, &image.manifest.1, image.manifest.0.len() as u64)?;
            let mut platform = oci_spec::image::PlatformBuilder::default()
                .os(image.platform.os.as_str())
                .architecture(image.platform.architecture.as_str());
            if let Some(v) = &image.platform.variant {
                platform = platform.variant(v.clone());
            }
            d.set_platform(Some(platform.build().map_err(invalid)?));
            Ok(d)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(OCI_INDEX))
        .manifests(manifests)
        .build()
        .map_err(invalid)?;
    let bytes = serde_json::to_vec(&index).map_err(invalid)?;
    let digest = Digest::of(&bytes);
    Ok((bytes, digest))
}

/// Writes `images` as one tarball: an OCI image layout whose `index.json`
/// names each manifest (with its platform), and a Docker `manifest.json`
/// naming each image's config and layers (tagged `name`, if given).
pub fn write_archive(out: impl Write, images: &[BuiltImage], blobs: &BlobStore, name: Option<&str>) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    let mut written = std::collections::HashSet::new();
    let add = |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        tar.append_data(&mut header, path, bytes)
    };
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut docker = Vec::new();
    for image in images {
        for (bytes, digest) in [&image.config, &image.manifest] {
            if written.insert(*digest) {
                add(&mut tar, &blob_path(digest), bytes)?;
            }
        }
        for layer in &image.layers {
            if written.insert(layer.digest) {
                let mut header = tar::Header::new_ustar();
                header.set_size(layer.size);
                header.set_mode(0o644);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mtime(0);
                let file = blobs.open_blob(&layer.digest).map_err(invalid)?;
                tar.append_data(&mut header, blob_path(&layer.digest), file)?;
            }
        }
        docker.push(serde_json::json!({
            "Config": blob_path(&image.config.1),
            "RepoTags": name.map(|n| vec![n.to_string()]).unwrap_or_default(),
            "Layers": image.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
        }));
    }
    let (index, _) = build_index(images)?;
    let mut index: serde_json::Value = serde_json::from_slice(&index).map_err(invalid)?;
    if let (Some(name), Some(manifests)) = (name, index["manifests"].as_array_mut()) {
        for m in manifests {
            m["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": name });
        }
    }
    add(&mut tar, "index.json", &serde_json::to_vec(&index).map_err(invalid)?)?;
    add(
        &mut tar,
        "manifest.json",
        &serde_json::to_vec(&docker).map_err(invalid)?,
    )?;
    tar.into_inner()?.flush()
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

//! kiln's image layer: image references and platforms, a registry client
//! that pulls manifests, configs and layers into the content-addressed
//! [`kiln_store::BlobStore`], importers for OCI layouts, OCI archives and
//! docker-archives, the safe extraction of layer tarballs into overlayfs
//! layer directories, and the reverse (an upper directory into a layer).
//!
//! This crate never runs processes: credential helpers configured in
//! `~/.docker/config.json` are ignored (only inline credentials are used).

pub mod archive;
pub mod config;
pub mod credentials;
pub mod error;
pub mod image;
pub mod import;
pub mod layer;
pub mod platform;
pub mod pull;
mod push;
pub mod reference;

pub use archive::{BuiltImage, Healthcheck, LayerBlob, MediaTypes, RunConfig, build_image, build_index, write_archive};
pub use config::RegistryConfig;
pub use credentials::Credentials;
pub use error::{Error, Failure, Result};
pub use image::{LayerDesc, ResolvedImage};
pub use import::{import_archive, import_oci_layout};
pub use layer::{
    ApplyStats, ArchiveCompression, Compression, DiffStats, ExtractLimits, Limit, apply_layer, archive_reader,
    diff_to_layer, tar_archive,
};
pub use platform::Platform;
pub use pull::{Registry, RegistryNotice};
pub use push::Pushed;
pub use reference::Reference;

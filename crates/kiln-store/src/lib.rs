//! kiln's storage layer: content-addressed blobs, immutable filesystem
//! snapshots stacked with overlayfs, and the metadata database that records
//! cache results.

pub mod blobs;
pub mod digest;

pub use blobs::{BlobError, BlobStore, BlobWriter};
pub use digest::Digest;

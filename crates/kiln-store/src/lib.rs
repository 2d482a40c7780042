//! kiln's storage layer: content-addressed blobs, immutable filesystem
//! snapshots stacked with overlayfs, the metadata database that records
//! cache results, host uploads with a stat cache, and garbage collection
//! under a disk budget. One process owns a state directory at a time (an
//! exclusive lock on `lock`).

pub mod blobs;
pub mod bytesize;
pub mod copy;
pub mod db;
pub mod digest;
pub mod duration;
pub mod filter;
pub mod gc;
pub mod host;
pub mod merged;
mod pins;
pub mod snapshots;
mod state_dir;
mod store;
pub mod tree_digest;
pub mod usage;
pub mod volumes;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use blobs::{BlobError, BlobStore, BlobWriter};
pub use bytesize::{format_size, parse_size};
pub use copy::{CopyError, CopyOptions, CopyStats, HostPolicy, Withheld, copy_tree, prepare_parents, whiteout};
pub use db::{CacheEntry, CacheRecord, Db, SnapshotRecord};
pub use digest::Digest;
pub use duration::{InvalidDuration, format_duration, parse_duration};
pub use filter::{FilterError, PathFilter};
pub use gc::{GcReport, GcTarget, KeepStorage, free_space};
pub use host::{HostError, HostTree};
pub use merged::MergedView;
pub use pins::PinGuard;
pub use snapshots::{SnapshotId, Staged};
pub use state_dir::{RUNTIME_STATE, prepare_root, volatile_dir};
pub use store::{FLUSH_INTERVAL, LOCK_WAIT, Store, try_lock};
pub use tree_digest::tree_digest;
pub use usage::Usage;
pub use volumes::{VolumeInfo, Volumes};

/// Chains deeper than this are flattened into one layer before mounting
/// (overlayfs limits the number of lower layers and the mount option size).
pub const MAX_MOUNT_DEPTH: u32 = 100;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "state directory {} stayed in use by another kiln process; stop it or use another --state-dir",
        .0.display()
    )]
    Locked(PathBuf),
    #[error("refusing to use {}: {reason}", path.display())]
    UnsafeStateDir { path: PathBuf, reason: String },
    #[error("metadata database ({op}): {message}")]
    Db { op: &'static str, message: String },
    #[error("metadata database holds a corrupt record ({0}); remove the state directory to start afresh")]
    Corrupt(String),
    #[error("snapshot {0} is not in the metadata database")]
    MissingSnapshot(SnapshotId),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Host(#[from] HostError),
}

impl StoreError {
    pub(crate) fn db(op: &'static str, e: impl Into<redb::Error>) -> Self {
        StoreError::Db {
            op,
            message: e.into().to_string(),
        }
    }

    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Microseconds since the epoch (last uses of cache records).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

//! Immutable filesystem snapshots. Each snapshot is one overlayfs layer (a
//! "diff" directory, whiteouts in overlayfs format) on top of an optional
//! parent; a tree is named by its top snapshot. New snapshots are staged under
//! `tmp/`, moved into `s/<id>` and only then recorded in the db, so a crash at
//! any point leaves at worst an orphan directory that the next open removes.

use std::fmt;
use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pins::PinGuard;

/// Identifies a snapshot; also its directory name under `s/` (short, so that
/// overlayfs mount options stay small).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnapshotId(pub u64);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot#{}", self.0)
    }
}

/// A snapshot being written: fill [`Staged::diff`], then commit it through
/// [`crate::Store::commit`]. Dropped uncommitted, it is deleted.
#[derive(Debug)]
pub struct Staged {
    pub(crate) id: SnapshotId,
    pub(crate) parent: Option<SnapshotId>,
    pub(crate) dir: PathBuf,
    /// Bytes the layer occupies, when the writer knows (else measured at commit).
    pub(crate) size: Option<u64>,
    /// Digest of the host selection the tree holds (host uploads).
    pub(crate) content: Option<[u8; 32]>,
    /// Keeps the parent from garbage collection until committed.
    pub(crate) _pin: Option<PinGuard>,
}

impl Staged {
    /// The id the snapshot will have.
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// The parent it is a diff on.
    pub fn parent(&self) -> Option<SnapshotId> {
        self.parent
    }

    /// The layer directory to fill (an overlayfs upper dir for execs).
    pub fn diff(&self) -> PathBuf {
        self.dir.join("diff")
    }

    /// A scratch directory on the same filesystem (an overlayfs work dir).
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

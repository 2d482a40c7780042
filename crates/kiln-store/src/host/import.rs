//! Importing a scanned host selection into a snapshot. The first upload of
//! a directory copies the whole selection; later uploads of the same
//! directory and filter write only the difference from the previous one
//! (new and changed entries, whiteouts for removed ones) as a layer on top
//! of the snapshot holding the previous selection, found by its digest.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::Path;

use super::access::EntryType;
use super::stat_cache::{Cached, StatCache};
use super::{HostEntry, HostError, HostKind, HostTree, changed, err, parallel};
use crate::copy::{prepare_parents, whiteout};
use crate::merged::MergedView;
use crate::snapshots::Staged;
use crate::{Store, StoreError};

/// Uploads stack at most this many layers before one is written whole
/// again (reads of deep stacks walk every layer).
pub const MAX_UPLOAD_DEPTH: u32 = 32;

/// Size of a filesystem block, for the size estimate of a full import.
const BLOCK: u64 = 4096;

impl Store {
    /// Writes a scanned selection into a new staged snapshot: a layer with
    /// only the difference when the selection of the previous scan of the
    /// same directory and filter is still stored, else the whole selection.
    pub fn import_host(&self, tree: &HostTree) -> Result<Staged, StoreError> {
        if let Some(staged) = self.import_difference(tree)? {
            return Ok(staged);
        }
        let mut staged = self.stage(None)?;
        staged.size = Some(import_all(tree, &staged.diff())?);
        staged.content = Some(tree.digest);
        Ok(staged)
    }

    /// The difference from the previous selection as a layer on top of its
    /// snapshot, when that snapshot is still stored and not too deep.
    fn import_difference(&self, tree: &HostTree) -> Result<Option<Staged>, StoreError> {
        // The very same selection may be stored already (its record was
        // evicted, or another directory holds the same files): an empty
        // layer on top of it is the whole import.
        if let Some(same) = self.db().host_content(&tree.digest)?
            && let Some(staged) = self.stage_on_upload(same)?
        {
            staged_content(staged, tree).map(Some)
        } else if let Some(prev) = &tree.previous
            && let Some(base) = self.db().host_content(&prev.selection)?
            && let Some(staged) = self.stage_on_upload(base)?
        {
            let view = self.view(Some(base))?;
            write_difference(tree, prev, &view, &staged.diff())?;
            staged_content(staged, tree).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Stages a layer on `base` unless it is gone or too deep.
    fn stage_on_upload(&self, base: crate::SnapshotId) -> Result<Option<Staged>, StoreError> {
        match self.stage(Some(base)) {
            Ok(staged) if self.record(base)?.depth < MAX_UPLOAD_DEPTH => Ok(Some(staged)),
            Ok(_) | Err(StoreError::MissingSnapshot(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn staged_content(mut staged: Staged, tree: &HostTree) -> Result<Staged, StoreError> {
    staged.content = Some(tree.digest);
    Ok(staged)
}

/// Copies the whole selection into `dest`; returns an estimate of the bytes
/// it occupies.
fn import_all(tree: &HostTree, dest: &Path) -> Result<u64, HostError> {
    let mut size = BLOCK;
    let mut files = Vec::new();
    // Directories stay writable until their contents are in.
    for e in &tree.entries {
        let to = dest.join(&e.rel);
        match &e.kind {
            HostKind::Dir => {
                fs::create_dir(&to).map_err(err(&to))?;
                size += BLOCK;
            }
            HostKind::File(len) => {
                files.push(e);
                size += len.div_ceil(BLOCK) * BLOCK;
            }
            HostKind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &to).map_err(err(&to))?;
                lchown(&to, Some(0), Some(0)).map_err(err(&to))?;
            }
        }
    }
    for result in parallel::map(&files, |e| copy_file(&tree.root, e, dest)) {
        result?;
    }
    for e in tree.entries.iter().rev().filter(|e| e.kind == HostKind::Dir) {
        set_owner_and_mode(&dest.join(&e.rel), e.mode)?;
    }
    Ok(size)
}

fn set_owner_and_mode(path: &Path, mode: u32) -> Result<(), HostError> {
    lchown(path, Some(0), Some(0)).map_err(err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err(path))
}

/// Copies one file, owned by root, and checks that it did not change since
/// the scan (else the snapshot would not hold what its digest says).
fn copy_file(root: &Path, e: &HostEntry, dest: &Path) -> Result<(), HostError> {
    let src = root.join(&e.rel);
    let to = dest.join(&e.rel);
    fs::copy(&src, &to).map_err(err(&src))?;
    set_owner_and_mode(&to, e.mode)?;
    let now = fs::symlink_metadata(&src).map_err(err(&src))?;
    if super::FileStat::from_metadata(&now) != e.stat {
        return Err(changed(&src));
    }
    Ok(())
}

/// Whether the previous scan's entry holds exactly what `e` holds.
fn unchanged(before: &Cached, e: &HostEntry) -> bool {
    before.stat.mode == e.mode
        && match &e.kind {
            HostKind::Dir => before.stat.kind == EntryType::Dir,
            HostKind::File(size) => {
                before.stat.kind == EntryType::File && before.stat.size == *size && before.digest == e.digest
            }
            HostKind::Symlink(t) => before.stat.kind == EntryType::Symlink && before.target.as_ref() == Some(t),
        }
}

/// Writes into `dest` (a layer over `view`, which holds the previous
/// selection `prev`) what turns it into the selection of `tree`.
fn write_difference(tree: &HostTree, prev: &StatCache, view: &MergedView, dest: &Path) -> Result<(), StoreError> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for e in &tree.entries {
        let before = prev.entries.get(&e.rel);
        if before.is_some_and(|b| unchanged(b, e)) {
            continue;
        }
        // Parents first: a changed parent is already in the layer.
        prepare_parents(view, dest, &e.rel)?;
        let to = dest.join(&e.rel);
        match &e.kind {
            HostKind::Dir => {
                // Not opaque: the entries below that did not change show
                // through from the layers underneath.
                fs::create_dir(&to).map_err(err(&to))?;
                dirs.push(e);
            }
            HostKind::File(_) => files.push(e),
            HostKind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &to).map_err(err(&to))?;
                lchown(&to, Some(0), Some(0)).map_err(err(&to))?;
            }
        }
    }
    for result in parallel::map(&files, |e| copy_file(&tree.root, e, dest)) {
        result?;
    }
    for e in dirs.iter().rev() {
        set_owner_and_mode(&dest.join(&e.rel), e.mode)?;
    }

    // Removed entries become whiteouts, except under a removed directory or
    // under what is no longer a directory (both hide everything below).
    let current: HashSet<&Path> = tree.entries.iter().map(|e| e.rel.as_path()).collect();
    let non_dirs: HashSet<&Path> = tree
        .entries
        .iter()
        .filter(|e| e.kind != HostKind::Dir)
        .map(|e| e.rel.as_path())
        .collect();
    let mut gone: Vec<&Path> = prev
        .entries
        .keys()
        .map(|p| p.as_path())
        .filter(|p| !current.contains(p))
        .collect();
    gone.sort_unstable();
    let mut removed: HashSet<&Path> = HashSet::new();
    for rel in gone {
        let hidden = rel
            .ancestors()
            .skip(1)
            .any(|a| removed.contains(a) || non_dirs.contains(a));
        if !hidden {
            whiteout(view, dest, rel)?;
            removed.insert(rel);
        }
    }
    Ok(())
}

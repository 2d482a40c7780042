//! Importing a scanned host selection into a snapshot. The first upload of
//! a directory copies the whole selection; later uploads of the same
//! directory and filter write only the difference from the previous one
//! (new and changed entries, whiteouts for removed ones) as a layer on top
//! of the snapshot holding the previous selection, found by its digest.

use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::Path;
use std::sync::LazyLock;

use rustix::fs::{Gid, Uid};

use super::access::{EntryType, FileStat};
use super::stat_cache::{Cached, Cursor, StatCache, path_cmp};
use super::{HostEntry, HostError, HostKind, HostTree, changed, err, parallel};
use crate::copy::{prepare_parents, whiteout};
use crate::merged::MergedView;
use crate::snapshots::Staged;
use crate::{Store, StoreError};

/// Uploads stack at most this many layers before one is written whole
/// again (reads of deep stacks walk every layer).
const MAX_UPLOAD_DEPTH: u32 = 32;

/// Size of a filesystem block, for the size estimate of a full import.
const BLOCK: u64 = 4096;

/// Where the contents of an import's files come from, when not from the
/// scanned directory on this machine (a client on another machine).
pub trait FileSource: Sync {
    /// Creates each of `files` (regular files of the selection) under
    /// `dest` with its content, which must be what its digest says.
    fn write(&self, files: &[&HostEntry], dest: &Path) -> Result<(), HostError>;
}

impl Store {
    /// Writes a scanned selection into a new staged snapshot: a layer with
    /// only the difference when the selection of the previous scan of the
    /// same directory and filter is still stored, else the whole selection.
    pub fn import_host(&self, tree: &HostTree) -> Result<Staged, StoreError> {
        self.import(tree, None)
    }

    /// [`Store::import_host`] for a selection reported from another
    /// machine, whose files' contents `source` writes. Nothing is asked of
    /// it when the same selection is stored already.
    pub fn import_host_from(&self, tree: &HostTree, source: &dyn FileSource) -> Result<Staged, StoreError> {
        self.import(tree, Some(source))
    }

    fn import(&self, tree: &HostTree, source: Option<&dyn FileSource>) -> Result<Staged, StoreError> {
        let started = std::time::Instant::now();
        if let Some(staged) = self.import_difference(tree)? {
            tracing::debug!(root = %tree.root.display(), took = ?started.elapsed(), "host import: the difference");
            return Ok(staged);
        }
        let mut staged = self.stage(None)?;
        staged.size = Some(import_all(tree, &staged.diff(), source)?);
        let staged = holding(staged, tree);
        tracing::debug!(root = %tree.root.display(), took = ?started.elapsed(), "host import: everything");
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
            Ok(Some(holding(staged, tree)))
        } else if let Some(prev) = &tree.previous
            && let Some(base) = self.db().host_content(&prev.selection)?
            && let Some(staged) = self.stage_on_upload(base)?
        {
            let view = self.view(Some(base))?;
            write_difference(tree, prev, &view, &staged.diff())?;
            Ok(Some(holding(staged, tree)))
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

/// Marks a staged snapshot as holding the selection of `tree`.
fn holding(mut staged: Staged, tree: &HostTree) -> Staged {
    staged.content = Some(tree.digest);
    staged
}

/// Copies the whole selection into `dest` (the files' contents from
/// `source`, else from the scanned directory); returns an estimate of the
/// bytes it occupies.
fn import_all(tree: &HostTree, dest: &Path, source: Option<&dyn FileSource>) -> Result<u64, HostError> {
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
    match source {
        Some(source) => {
            source.write(&files, dest)?;
            for e in &files {
                set_owner_and_mode(&dest.join(&e.rel), e.mode)?;
            }
        }
        None => copy_files(&tree.root, &files, dest)?,
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

/// Copies one file, owned by root, and checks that what was copied is the
/// file as scanned (else the snapshot would not hold what its digest says).
fn copy_file(root: &Path, e: &HostEntry, dest: &Path) -> Result<(), HostError> {
    use rustix::fs::{Mode, OFlags};
    let src = root.join(&e.rel);
    let to = dest.join(&e.rel);
    let from = rustix::fs::open(&src, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| err(&src)(e.into()))?;
    let into = rustix::fs::open(
        &to,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| err(&to)(e.into()))?;
    let (mut from, mut into) = (fs::File::from(from), fs::File::from(into));
    // In the kernel (copy_file_range) where the filesystem allows.
    std::io::copy(&mut from, &mut into).map_err(err(&src))?;
    if !*ROOT_OWNED {
        rustix::fs::fchown(&into, Some(Uid::ROOT), Some(Gid::ROOT)).map_err(|e| err(&to)(e.into()))?;
    }
    rustix::fs::fchmod(&into, Mode::from_raw_mode(e.mode)).map_err(|e| err(&to)(e.into()))?;
    let copied = rustix::fs::fstat(&from).map_err(|e| err(&src)(e.into()))?;
    if FileStat::from_stat(&copied) != e.stat {
        return Err(changed(&src));
    }
    Ok(())
}

/// Copies files, one directory per thread at a time: creating files in
/// the same directory from several threads only contends on its lock.
fn copy_files(root: &Path, files: &[&HostEntry], dest: &Path) -> Result<(), HostError> {
    let groups: Vec<&[&HostEntry]> = files.chunk_by(|a, b| a.rel.parent() == b.rel.parent()).collect();
    for result in parallel::map(&groups, |group| group.iter().try_for_each(|e| copy_file(root, e, dest))) {
        result?;
    }
    Ok(())
}

/// Whether files this process creates are owned by root already.
static ROOT_OWNED: LazyLock<bool> =
    LazyLock::new(|| rustix::process::geteuid().is_root() && rustix::process::getegid() == Gid::ROOT);

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
/// selection `prev`) what turns it into the selection of `tree`. Both
/// selections are in walk order: one merge finds what changed.
fn write_difference(tree: &HostTree, prev: &StatCache, view: &MergedView, dest: &Path) -> Result<(), StoreError> {
    let mut cursor = Cursor::new(Some(prev));
    let mut gone: Vec<&Path> = Vec::new();
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for e in &tree.entries {
        let (skipped, before) = cursor.seek(&e.rel);
        gone.extend(skipped.iter().map(|(p, _)| p.as_path()));
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
    gone.extend(cursor.rest().iter().map(|(p, _)| p.as_path()));
    copy_files(&tree.root, &files, dest)?;
    for e in dirs.iter().rev() {
        set_owner_and_mode(&dest.join(&e.rel), e.mode)?;
    }

    // Removed entries become whiteouts, except under a removed directory or
    // under what is no longer a directory (both hide everything below).
    let is_non_dir = |p: &Path| {
        tree.entries
            .binary_search_by(|e| path_cmp(&e.rel, p))
            .is_ok_and(|i| tree.entries[i].kind != HostKind::Dir)
    };
    let mut removed: Vec<&Path> = Vec::new();
    for rel in gone {
        let hidden = rel
            .ancestors()
            .skip(1)
            .any(|a| removed.binary_search_by(|r| path_cmp(r, a)).is_ok() || is_non_dir(a));
        if !hidden {
            whiteout(view, dest, rel)?;
            removed.push(rel);
        }
    }
    Ok(())
}

//! Copying trees out of a [`MergedView`]: into a new snapshot layer (files
//! hardlinked, since snapshots are immutable and overlayfs copies a file up
//! before any write) or onto the host (real copies). Never writes through a
//! symlink: an existing destination entry of the wrong kind is replaced.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, mknodat, utimensat};

use crate::filter::PathFilter;
use crate::merged::{Entry, MergedView};

/// How to copy (start from [`CopyOptions::new`]).
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions<'a> {
    /// Which paths (relative to the copied directory) to keep.
    pub filter: &'a PathFilter,
    /// Owner (uid, gid) for everything copied, instead of the original.
    pub owner: Option<(u32, u32)>,
    /// Permission bits for copied files, instead of the original.
    pub file_mode: Option<u32>,
    /// Hardlink regular files instead of copying their bytes (snapshot to
    /// snapshot on one filesystem). Ignored for files whose owner or mode
    /// changes.
    pub hardlink: bool,
    /// Copying onto the host, out of snapshots: what may grant privileges
    /// there is withheld unless allowed (see [`HostPolicy`]). `None` inside
    /// snapshots, where device nodes and setuid files are legitimate.
    pub to_host: Option<HostPolicy>,
}

impl<'a> CopyOptions<'a> {
    /// A plain copy of what `filter` keeps: original owners and modes, real
    /// copies, nothing withheld.
    pub fn new(filter: &'a PathFilter) -> Self {
        Self {
            filter,
            owner: None,
            file_mode: None,
            hardlink: false,
            to_host: None,
        }
    }
}

/// What a copy onto the host may create of what grants privileges there.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostPolicy {
    /// Keep setuid/setgid bits of regular files (else they are cleared).
    pub setid: bool,
    /// Create character and block devices (else they are skipped).
    pub devices: bool,
}

/// What a copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files written or linked.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Bytes of regular files.
    pub bytes: u64,
    /// What a copy onto the host withheld, by path relative to its source.
    pub withheld: Vec<Withheld>,
}

/// Something a copy onto the host did not create as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withheld {
    /// A device node, not created.
    Device(PathBuf),
    /// A setuid/setgid file, copied without those bits.
    SetId(PathBuf),
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Withheld::Device(p) => write!(f, "device node {} not created", p.display()),
            Withheld::SetId(p) => write!(f, "setuid/setgid bits of {} cleared", p.display()),
        }
    }
}

/// A copy that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct CopyError {
    /// What was being done.
    pub action: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The underlying error.
    pub source: io::Error,
}

fn ctx<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Copies `src` (a path in `view`; symlinks in it are resolved inside the
/// view) to the real path `dest`. A directory's contents are copied into
/// `dest`; a file becomes `dest`.
pub fn copy_tree(view: &MergedView, src: &Path, dest: &Path, opts: &CopyOptions<'_>) -> Result<CopyStats, CopyError> {
    let resolved = view.resolve(src, true).map_err(ctx("resolve", src))?;
    let entry = view
        .lookup(&resolved)
        .map_err(ctx("read", src))?
        .ok_or_else(|| ctx("read", src)(io::Error::new(io::ErrorKind::NotFound, "no such file or directory")))?;
    let mut stats = CopyStats::default();
    let name = Path::new(resolved.file_name().unwrap_or(resolved.as_os_str()));
    if !entry.is_dir() {
        copy_entry(&entry, dest, name, opts, &mut stats)?;
        return Ok(stats);
    }
    copy_entry(&entry, dest, name, opts, &mut stats)?;
    let mut dirs: Vec<(PathBuf, Entry)> = vec![(dest.to_path_buf(), entry)];
    view.walk(&resolved, &mut |rel, e| {
        if e.is_dir() && opts.filter.prunes(rel) {
            return Ok(false);
        }
        if !opts.filter.keeps(rel) {
            // Keep walking directories: an include may match deeper down.
            return Ok(e.is_dir() && !opts.filter.excluded(rel));
        }
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            ensure_dirs(dest, parent).map_err(io::Error::other)?;
        }
        copy_entry(e, &target, rel, opts, &mut stats).map_err(io::Error::other)?;
        if e.is_dir() {
            dirs.push((target, e.clone()));
        }
        Ok(true)
    })
    .map_err(ctx("copy from", src))?;
    // Directory times last, after their contents were written.
    for (path, e) in dirs.iter().rev() {
        set_times(path, &e.meta)?;
    }
    Ok(stats)
}

/// Creates the directories from `root` down to `dir` (which must be under
/// `root`), replacing anything in the way that is not a directory.
fn ensure_dirs(root: &Path, dir: &Path) -> Result<(), CopyError> {
    let Ok(rel) = dir.strip_prefix(root) else { return Ok(()) };
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => fs::remove_file(&cur).map_err(ctx("replace", &cur))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ctx("inspect", &cur)(e)),
        }
        fs::create_dir(&cur).map_err(ctx("create directory", &cur))?;
    }
    Ok(())
}

/// Removes whatever is at `path` unless it is a directory and `keep_dir`.
fn clear(path: &Path, keep_dir: bool) -> Result<bool, CopyError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(true),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map(|_| false).map_err(ctx("replace", path)),
        Ok(_) => fs::remove_file(path).map(|_| false).map_err(ctx("replace", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ctx("inspect", path)(e)),
    }
}

/// Copies one entry to `dest`; `rel` names it in what [`CopyStats`] says.
fn copy_entry(
    e: &Entry,
    dest: &Path,
    rel: &Path,
    opts: &CopyOptions<'_>,
    stats: &mut CopyStats,
) -> Result<(), CopyError> {
    let ft = e.meta.file_type();
    let meta = &e.meta;
    let (uid, gid) = opts.owner.unwrap_or((meta.uid(), meta.gid()));
    let mut mode = meta.mode() & 0o7777;
    if let Some(policy) = opts.to_host {
        if (ft.is_char_device() || ft.is_block_device()) && !policy.devices {
            stats.withheld.push(Withheld::Device(rel.to_path_buf()));
            return Ok(());
        }
        if ft.is_file() && mode & 0o6000 != 0 && !policy.setid {
            stats.withheld.push(Withheld::SetId(rel.to_path_buf()));
            mode &= !0o6000;
        }
    }
    if ft.is_dir() {
        if !clear(dest, true)? {
            fs::create_dir(dest).map_err(ctx("create directory", dest))?;
        }
        stats.dirs += 1;
    } else if ft.is_file() {
        clear(dest, false)?;
        let relabel = opts.owner.is_some_and(|o| o != (meta.uid(), meta.gid()))
            || opts.file_mode.is_some_and(|m| m != mode)
            || mode != meta.mode() & 0o7777;
        stats.files += 1;
        stats.bytes += meta.len();
        if opts.hardlink && !relabel {
            return fs::hard_link(&e.real, dest).map_err(ctx("link", dest));
        }
        fs::copy(&e.real, dest).map_err(ctx("copy", dest))?;
        mode = opts.file_mode.unwrap_or(mode);
    } else if ft.is_symlink() {
        clear(dest, false)?;
        let target = fs::read_link(&e.real).map_err(ctx("read link", &e.real))?;
        std::os::unix::fs::symlink(&target, dest).map_err(ctx("create symlink", dest))?;
        lchown(dest, Some(uid), Some(gid)).map_err(ctx("chown", dest))?;
        return set_times(dest, meta);
    } else {
        clear(dest, false)?;
        let kind = if ft.is_char_device() {
            FileType::CharacterDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else if ft.is_fifo() {
            FileType::Fifo
        } else {
            // Sockets are not copied (they cannot be recreated meaningfully).
            return Ok(());
        };
        mknodat(CWD, dest, kind, Mode::from_raw_mode(mode), meta.rdev())
            .map_err(|e| ctx("create device", dest)(e.into()))?;
    }
    lchown(dest, Some(uid), Some(gid)).map_err(ctx("chown", dest))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(ctx("chmod", dest))?;
    if !ft.is_dir() {
        set_times(dest, meta)?;
    }
    Ok(())
}

fn set_times(path: &Path, meta: &fs::Metadata) -> Result<(), CopyError> {
    let ts = |s: i64, ns: i64| Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    let times = Timestamps {
        last_access: ts(meta.atime(), meta.atime_nsec()),
        last_modification: ts(meta.mtime(), meta.mtime_nsec()),
    };
    utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| ctx("set times", path)(e.into()))
}

/// Creates, inside the new layer `diff`, the directories leading to `rel`
/// (exclusive) that do not exist there yet, copying their mode, owner and
/// times from the tree below (`view`) so that the layer does not change them.
pub fn prepare_parents(view: &MergedView, diff: &Path, rel: &Path) -> Result<(), CopyError> {
    let rel = crate::merged::clean(rel);
    let Some(parent) = rel.parent() else { return Ok(()) };
    let mut cur = PathBuf::new();
    for c in parent.components() {
        cur.push(c);
        let target = diff.join(&cur);
        if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        match view.lookup(&cur).map_err(ctx("inspect", &cur))? {
            Some(e) if e.is_dir() => {
                fs::create_dir(&target).map_err(ctx("create directory", &target))?;
                lchown(&target, Some(e.meta.uid()), Some(e.meta.gid())).map_err(ctx("chown", &target))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(e.meta.mode() & 0o7777))
                    .map_err(ctx("chmod", &target))?;
                set_times(&target, &e.meta)?;
            }
            _ => ensure_dirs(diff, &target)?,
        }
    }
    Ok(())
}

/// Marks `rel` as deleted in the layer `diff` (an overlayfs whiteout).
pub fn whiteout(view: &MergedView, diff: &Path, rel: &Path) -> Result<(), CopyError> {
    prepare_parents(view, diff, rel)?;
    let target = diff.join(crate::merged::clean(rel));
    clear(&target, false)?;
    mknodat(CWD, &target, FileType::CharacterDevice, Mode::empty(), 0)
        .map_err(|e| ctx("create whiteout", &target)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn copies_filtered_trees_and_never_writes_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("a/node_modules")).unwrap();
        fs::write(src.join("a/x.txt"), "x").unwrap();
        fs::write(src.join("a/node_modules/big"), "big").unwrap();
        symlink("x.txt", src.join("a/link")).unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        // The destination has a symlink where the copy puts a directory.
        let dest = t.path().join("dest");
        fs::create_dir(&dest).unwrap();
        symlink(&outside, dest.join("a")).unwrap();

        let view = MergedView::new(vec![src]);
        let filter = PathFilter::new(&[], &["a/node_modules".into()]).unwrap();
        let opts = CopyOptions::new(&filter);
        let stats = copy_tree(&view, Path::new("/"), &dest, &opts).unwrap();
        assert_eq!(stats.files, 1);
        assert_eq!(fs::read_to_string(dest.join("a/x.txt")).unwrap(), "x");
        assert_eq!(fs::read_link(dest.join("a/link")).unwrap(), Path::new("x.txt"));
        assert!(!dest.join("a/node_modules").exists());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote through a symlink");
    }

    #[test]
    fn hardlinks_unless_relabelled() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), "data").unwrap();
        let view = MergedView::new(vec![src.clone()]);
        let filter = PathFilter::default();
        let linked = t.path().join("linked");
        let opts = CopyOptions {
            hardlink: true,
            ..CopyOptions::new(&filter)
        };
        copy_tree(&view, Path::new("f"), &linked, &opts).unwrap();
        assert_eq!(
            fs::metadata(&linked).unwrap().ino(),
            fs::metadata(src.join("f")).unwrap().ino()
        );
        let copied = t.path().join("copied");
        let opts = CopyOptions {
            file_mode: Some(0o600),
            ..opts
        };
        copy_tree(&view, Path::new("f"), &copied, &opts).unwrap();
        let m = fs::metadata(&copied).unwrap();
        assert_ne!(m.ino(), fs::metadata(src.join("f")).unwrap().ino());
        assert_eq!(m.mode() & 0o777, 0o600);
    }
}

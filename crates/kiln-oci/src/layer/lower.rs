//! Lookups in the lower layers of an overlay stack (top-most first), with
//! overlayfs semantics and without ever following a symlink.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use kiln_store::merged::{is_opaque, is_whiteout};

/// Ownership, permissions and mtime of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
}

impl DirMeta {
    /// `0755 root:root`, mtime at the epoch: for parents no layer has.
    pub const DEFAULT: DirMeta = DirMeta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: (0, 0),
    };

    fn of(m: &Metadata) -> Self {
        DirMeta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

fn lstat(path: &std::path::Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The directory `comps` as the merged view of `lowers` shows it: `None`
/// when no lower has it, or it is whited out, hidden by an opaque parent,
/// or not a directory (a symlink there is never followed).
pub fn lower_dir(lowers: &[PathBuf], comps: &[Vec<u8>]) -> io::Result<Option<DirMeta>> {
    if comps.is_empty() {
        return Ok(None);
    }
    'layers: for lower in lowers {
        let mut path = lower.clone();
        let mut opaque_above = false;
        for (i, c) in comps.iter().enumerate() {
            path.push(OsStr::from_bytes(c));
            // Every prefix is checked before going deeper, so no symlink is
            // ever traversed.
            let Some(meta) = lstat(&path)? else {
                if opaque_above {
                    return Ok(None);
                }
                continue 'layers;
            };
            if is_whiteout(&meta) || !meta.is_dir() {
                return Ok(None);
            }
            if i + 1 == comps.len() {
                return Ok(Some(DirMeta::of(&meta)));
            }
            if is_opaque(&path) {
                opaque_above = true;
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn comps(s: &str) -> Vec<Vec<u8>> {
        s.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    #[test]
    fn finds_dirs_top_down_without_following_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        fs::create_dir_all(lower.join("a/b")).unwrap();
        fs::set_permissions(lower.join("a/b"), fs::Permissions::from_mode(0o710)).unwrap();
        fs::create_dir_all(upper.join("a")).unwrap();
        fs::set_permissions(upper.join("a"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir_all(t.path().join("elsewhere/x")).unwrap();
        symlink(t.path().join("elsewhere"), upper.join("evil")).unwrap();
        fs::create_dir_all(lower.join("evil/x")).unwrap();
        let lowers = [upper, lower];

        assert_eq!(lower_dir(&lowers, &comps("a")).unwrap().unwrap().mode, 0o700);
        assert_eq!(lower_dir(&lowers, &comps("a/b")).unwrap().unwrap().mode, 0o710);
        assert_eq!(lower_dir(&lowers, &comps("nope")).unwrap(), None);
        // The upper symlink shadows the lower dir and is not followed.
        assert_eq!(lower_dir(&lowers, &comps("evil")).unwrap(), None);
        assert_eq!(lower_dir(&lowers, &comps("evil/x")).unwrap(), None);
    }
}

//! Lookups in the lower layers of an overlay stack (top-most first), with
//! overlayfs semantics and without ever following a symlink.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// What the lowers show at one directory path, built one component at a
/// time from the root (see [`LowerView::child`]) so that each step costs
/// one lookup per lower still involved: the lowers (top-most first) that
/// have a directory there, up to the first one that hides the path.
#[derive(Debug, Clone, Default)]
pub struct LowerView {
    states: Vec<State>,
}

#[derive(Debug, Clone)]
enum State {
    /// Lower `index` has a directory here. `opaque`: it or a directory
    /// above it is opaque in that lower, so lowers below do not show what
    /// it lacks.
    Dir { index: usize, meta: DirMeta, opaque: bool },
    /// A lower hides the path (a whiteout, a non-directory, or nothing
    /// under an opaque directory): lowers below it do not count.
    Hidden,
}

impl LowerView {
    /// The roots of `lowers`.
    pub fn root(lowers: &[PathBuf]) -> Self {
        let states = (0..lowers.len())
            .map(|index| State::Dir {
                index,
                meta: DirMeta::DEFAULT,
                opaque: false,
            })
            .collect();
        Self { states }
    }

    /// What the lowers show at `rel` (relative to the lower roots), a child
    /// of this view's path. Only paths checked to be directories are
    /// extended, so no symlink is ever traversed.
    pub fn child(&self, lowers: &[PathBuf], rel: &Path) -> io::Result<Self> {
        let mut states = Vec::new();
        for state in &self.states {
            let State::Dir { index, opaque, .. } = *state else {
                states.push(State::Hidden);
                break;
            };
            let path = lowers[index].join(rel);
            match lstat(&path)? {
                None if opaque => {
                    states.push(State::Hidden);
                    break;
                }
                None => {}
                Some(m) if is_whiteout(&m) || !m.is_dir() => {
                    states.push(State::Hidden);
                    break;
                }
                Some(m) => states.push(State::Dir {
                    index,
                    meta: DirMeta::of(&m),
                    opaque: opaque || is_opaque(&path),
                }),
            }
        }
        Ok(Self { states })
    }

    /// The directory as the merged lowers show it: `None` when no lower
    /// has it, or it is whited out, hidden by an opaque parent, or not a
    /// directory.
    pub fn meta(&self) -> Option<DirMeta> {
        match self.states.first() {
            Some(State::Dir { meta, .. }) => Some(*meta),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn lower_dir(lowers: &[PathBuf], path: &str) -> Option<DirMeta> {
        let mut view = LowerView::root(lowers);
        let mut rel = PathBuf::new();
        for c in path.split('/') {
            rel.push(c);
            view = view.child(lowers, &rel).unwrap();
        }
        view.meta()
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

        assert_eq!(lower_dir(&lowers, "a").unwrap().mode, 0o700);
        assert_eq!(lower_dir(&lowers, "a/b").unwrap().mode, 0o710);
        assert_eq!(lower_dir(&lowers, "nope"), None);
        // The upper symlink shadows the lower dir and is not followed.
        assert_eq!(lower_dir(&lowers, "evil"), None);
        assert_eq!(lower_dir(&lowers, "evil/x"), None);
    }
}

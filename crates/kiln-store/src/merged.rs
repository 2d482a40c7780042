//! A read-only view of an overlayfs layer stack, computed in user space (no
//! mount needed): lookups, directory listings, walks and symlink resolution
//! confined to the root, with overlayfs whiteout and opaque-dir semantics.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// Name of the xattr overlayfs uses to mark an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// One visible entry of the merged tree.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index of the layer (0 = top) that provides the entry.
    pub layer: usize,
    /// Real path of the entry inside that layer's directory.
    pub real: PathBuf,
    /// Its metadata (not following symlinks).
    pub meta: Metadata,
}

impl Entry {
    /// The contents of a file entry.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.real)
    }

    /// Whether the entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }
}

/// Whether `meta` is an overlayfs whiteout (a 0:0 character device).
pub fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether the directory at `path` is marked opaque.
pub fn is_opaque(path: &Path) -> bool {
    matches!(xattr::get(path, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// The merged view of layer directories, top-most first.
#[derive(Debug, Clone)]
pub struct MergedView {
    layers: Vec<PathBuf>,
}

fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Splits a path into its normal components, ignoring `/` and `.`; `..` is
/// clamped at the root.
pub fn clean(path: impl AsRef<Path>) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.as_ref().components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

impl MergedView {
    /// A view of `layers` (top-most first). An empty list is an empty tree.
    pub fn new(layers: Vec<PathBuf>) -> Self {
        Self { layers }
    }

    /// The layer directories, top-most first.
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// The layers that contribute to directory `rel` (top-most first), or
    /// `None` when `rel` is not a directory of the merged tree.
    fn dir_layers(&self, rel: &Path) -> io::Result<Option<Vec<(usize, PathBuf)>>> {
        let mut current: Vec<(usize, PathBuf)> = self.layers.iter().cloned().enumerate().collect();
        if current.is_empty() {
            return Ok(if rel.as_os_str().is_empty() {
                Some(current)
            } else {
                None
            });
        }
        for comp in clean(rel).components() {
            let mut next = Vec::new();
            for (i, dir) in &current {
                let p = dir.join(comp);
                let Some(meta) = lstat(&p)? else { continue };
                if is_whiteout(&meta) {
                    break;
                }
                if !meta.is_dir() {
                    if next.is_empty() {
                        return Ok(None);
                    }
                    break;
                }
                let opaque = is_opaque(&p);
                next.push((*i, p));
                if opaque {
                    break;
                }
            }
            if next.is_empty() {
                return Ok(None);
            }
            current = next;
        }
        Ok(Some(current))
    }

    /// The entry at `rel` (symlinks not followed), if visible.
    pub fn lookup(&self, rel: impl AsRef<Path>) -> io::Result<Option<Entry>> {
        let rel = clean(rel);
        let Some(name) = rel.file_name() else {
            // The root: the top layer's directory.
            return match self.layers.first() {
                Some(top) => Ok(Some(Entry {
                    layer: 0,
                    real: top.clone(),
                    meta: fs::metadata(top)?,
                })),
                None => Ok(None),
            };
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let Some(dirs) = self.dir_layers(parent)? else {
            return Ok(None);
        };
        for (i, dir) in dirs {
            let p = dir.join(name);
            let Some(meta) = lstat(&p)? else { continue };
            if is_whiteout(&meta) {
                return Ok(None);
            }
            return Ok(Some(Entry {
                layer: i,
                real: p,
                meta,
            }));
        }
        Ok(None)
    }

    /// The visible entries of directory `rel`, by name. `None` when `rel` is
    /// not a directory.
    pub fn read_dir(&self, rel: impl AsRef<Path>) -> io::Result<Option<BTreeMap<OsString, Entry>>> {
        let Some(dirs) = self.dir_layers(rel.as_ref())? else {
            return Ok(None);
        };
        let mut seen: BTreeMap<OsString, Option<Entry>> = BTreeMap::new();
        for (i, dir) in dirs {
            for item in fs::read_dir(&dir)? {
                let item = item?;
                let name = item.file_name();
                if seen.contains_key(&name) {
                    continue;
                }
                let real = item.path();
                let meta = fs::symlink_metadata(&real)?;
                let entry = (!is_whiteout(&meta)).then_some(Entry { layer: i, real, meta });
                seen.insert(name, entry);
            }
        }
        Ok(Some(seen.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()))
    }

    /// Resolves `path` inside the tree as a chroot would: `..` and absolute
    /// symlink targets stay inside the root. With `follow_last` false, a
    /// final symlink is not followed. Returns the clean relative path.
    pub fn resolve(&self, path: impl AsRef<Path>, follow_last: bool) -> io::Result<PathBuf> {
        let mut pending: Vec<OsString> = clean_components(path.as_ref()).into_iter().rev().collect();
        let mut done = PathBuf::new();
        let mut hops = 0;
        while let Some(comp) = pending.pop() {
            if comp == ".." {
                done.pop();
                continue;
            }
            let candidate = done.join(&comp);
            let is_last = pending.is_empty();
            if is_last && !follow_last {
                done = candidate;
                break;
            }
            match self.lookup(&candidate)? {
                Some(e) if e.meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "too many levels of symbolic links resolving {}",
                                path.as_ref().display()
                            ),
                        ));
                    }
                    let target = fs::read_link(&e.real)?;
                    if target.is_absolute() {
                        done = PathBuf::new();
                    }
                    for c in clean_components(&target).into_iter().rev() {
                        pending.push(c);
                    }
                }
                _ => done = candidate,
            }
        }
        Ok(done)
    }

    /// Visits every entry under `rel` (pre-order, sorted by name), with its
    /// path relative to `rel`. The visitor returns false to skip a
    /// directory's contents.
    pub fn walk(
        &self,
        rel: impl AsRef<Path>,
        visit: &mut dyn FnMut(&Path, &Entry) -> io::Result<bool>,
    ) -> io::Result<()> {
        self.walk_inner(&clean(rel), Path::new(""), visit)
    }

    fn walk_inner(
        &self,
        base: &Path,
        sub: &Path,
        visit: &mut dyn FnMut(&Path, &Entry) -> io::Result<bool>,
    ) -> io::Result<()> {
        let Some(entries) = self.read_dir(base.join(sub))? else {
            return Ok(());
        };
        for (name, entry) in entries {
            let rel = sub.join(&name);
            if visit(&rel, &entry)? && entry.is_dir() {
                self.walk_inner(base, &rel, visit)?;
            }
        }
        Ok(())
    }
}

/// Like [`clean`] but keeps `..` so that symlink resolution can apply it
/// after following earlier components.
fn clean_components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }

    #[test]
    fn upper_layers_win_and_dirs_merge() {
        let t = tempfile::tempdir().unwrap();
        let (lo, up) = (t.path().join("lo"), t.path().join("up"));
        write(&lo.join("etc/a"), "lower a");
        write(&lo.join("etc/b"), "lower b");
        write(&up.join("etc/a"), "upper a");
        write(&up.join("etc/c"), "upper c");
        let v = MergedView::new(vec![up.clone(), lo.clone()]);
        let names: Vec<_> = v.read_dir("etc").unwrap().unwrap().into_keys().collect();
        assert_eq!(names, ["a", "b", "c"]);
        let a = v.lookup("/etc/a").unwrap().unwrap();
        assert_eq!(fs::read_to_string(a.real).unwrap(), "upper a");
        assert_eq!(v.lookup("etc/b").unwrap().unwrap().layer, 1);
        assert!(v.lookup("etc/zz").unwrap().is_none());
        assert!(v.read_dir("etc/a").unwrap().is_none());
    }

    #[test]
    fn a_file_hides_a_lower_directory() {
        let t = tempfile::tempdir().unwrap();
        let (lo, up) = (t.path().join("lo"), t.path().join("up"));
        write(&lo.join("x/inner"), "i");
        write(&up.join("x"), "now a file");
        let v = MergedView::new(vec![up, lo]);
        assert!(v.lookup("x/inner").unwrap().is_none());
        assert!(!v.lookup("x").unwrap().unwrap().is_dir());
    }

    #[test]
    fn resolve_confines_symlinks_to_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        write(&root.join("usr/lib/os-release"), "ID=x");
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        symlink("/../../../../usr", root.join("up")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        let v = MergedView::new(vec![root]);
        assert_eq!(
            v.resolve("/etc/os-release", true).unwrap(),
            Path::new("usr/lib/os-release")
        );
        assert_eq!(
            v.resolve("/etc/os-release", false).unwrap(),
            Path::new("etc/os-release")
        );
        assert_eq!(v.resolve("up/lib", true).unwrap(), Path::new("usr/lib"));
        assert_eq!(v.resolve("../../../etc", true).unwrap(), Path::new("etc"));
        assert!(v.resolve("loop1", true).is_err());
    }
}

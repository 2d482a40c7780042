//! Reading directories of the host: a filtered walk that never descends into
//! pruned subtrees, a content digest of what it selects (paths, kinds,
//! permission bits, file bytes, link targets; not owners or times), and the
//! import of the selection into a snapshot layer (owned by root, as inside
//! a container the host's uids mean nothing).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use crate::filter::PathFilter;

/// The kind of a selected host entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    /// A directory.
    Dir,
    /// A regular file with its size.
    File(u64),
    /// A symlink with its target.
    Symlink(PathBuf),
}

/// One selected entry of a host directory.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// Path relative to the scanned root.
    pub rel: PathBuf,
    /// What it is.
    pub kind: HostKind,
    /// Permission bits.
    pub mode: u32,
}

/// The result of scanning a host directory.
#[derive(Debug, Clone)]
pub struct HostTree {
    /// The scanned root.
    pub root: PathBuf,
    /// Selected entries in walk order (parents before children, sorted).
    pub entries: Vec<HostEntry>,
    /// Digest of the selected content.
    pub digest: [u8; 32],
    /// Total bytes of selected regular files.
    pub bytes: u64,
}

/// A host path that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("host path {}: {source}", path.display())]
pub struct HostError {
    /// The path.
    pub path: PathBuf,
    /// What went wrong.
    pub source: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> HostError + '_ {
    move |source| HostError {
        path: path.to_path_buf(),
        source,
    }
}

/// Walks and hashes the part of `root` that `filter` selects.
pub fn scan(root: &Path, filter: &PathFilter) -> Result<HostTree, HostError> {
    let meta = fs::metadata(root).map_err(err(root))?;
    if !meta.is_dir() {
        return Err(err(root)(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let mut entries = Vec::new();
    walk(root, Path::new(""), filter, &mut entries)?;
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0;
    for e in &entries {
        let rel = e.rel.as_os_str().as_encoded_bytes();
        hasher.update(&(rel.len() as u64).to_le_bytes()).update(rel);
        hasher.update(&e.mode.to_le_bytes());
        match &e.kind {
            HostKind::Dir => {
                hasher.update(b"d");
            }
            HostKind::File(size) => {
                bytes += size;
                let path = root.join(&e.rel);
                let mut file_hasher = blake3::Hasher::new();
                let mut f = File::open(&path).map_err(err(&path))?;
                let n = io::copy(&mut f, &mut file_hasher).map_err(err(&path))?;
                hasher
                    .update(b"f")
                    .update(&n.to_le_bytes())
                    .update(file_hasher.finalize().as_bytes());
            }
            HostKind::Symlink(target) => {
                let t = target.as_os_str().as_encoded_bytes();
                hasher.update(b"l").update(&(t.len() as u64).to_le_bytes()).update(t);
            }
        }
    }
    Ok(HostTree {
        root: root.to_path_buf(),
        entries,
        digest: *hasher.finalize().as_bytes(),
        bytes,
    })
}

/// Appends the selected entries under `rel`; returns whether any was added.
fn walk(root: &Path, rel: &Path, filter: &PathFilter, out: &mut Vec<HostEntry>) -> Result<bool, HostError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(err(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(err(&dir))?;
    names.sort();
    let mut added = false;
    for name in names {
        let child = rel.join(&name);
        let path = root.join(&child);
        let meta = fs::symlink_metadata(&path).map_err(err(&path))?;
        let mode = meta.mode() & 0o7777;
        if meta.is_dir() {
            if filter.prunes(&child) {
                continue;
            }
            let at = out.len();
            out.push(HostEntry {
                rel: child.clone(),
                kind: HostKind::Dir,
                mode,
            });
            let inner = walk(root, &child, filter, out)?;
            if inner || filter.keeps(&child) {
                added = true;
            } else {
                out.truncate(at);
            }
        } else if filter.keeps(&child) {
            let kind = if meta.file_type().is_symlink() {
                HostKind::Symlink(fs::read_link(&path).map_err(err(&path))?)
            } else if meta.is_file() {
                HostKind::File(meta.len())
            } else {
                continue; // sockets, fifos and devices are not uploaded
            };
            out.push(HostEntry { rel: child, kind, mode });
            added = true;
        }
    }
    Ok(added)
}

/// Copies a scanned selection into `dest` (an empty snapshot layer).
pub fn import(tree: &HostTree, dest: &Path) -> Result<(), HostError> {
    for e in &tree.entries {
        let src = tree.root.join(&e.rel);
        let to = dest.join(&e.rel);
        match &e.kind {
            HostKind::Dir => fs::create_dir(&to).map_err(err(&to))?,
            HostKind::File(_) => {
                fs::copy(&src, &to).map_err(err(&src))?;
            }
            HostKind::Symlink(target) => std::os::unix::fs::symlink(target, &to).map_err(err(&to))?,
        }
        lchown(&to, Some(0), Some(0)).map_err(err(&to))?;
        if !matches!(e.kind, HostKind::Symlink(_)) {
            fs::set_permissions(&to, fs::Permissions::from_mode(e.mode)).map_err(err(&to))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_follows_content_not_times_and_prunes_excludes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("src")).unwrap();
        fs::create_dir_all(root.join("node_modules/pkg")).unwrap();
        fs::write(root.join("src/a.py"), "print(1)").unwrap();
        fs::write(root.join("node_modules/pkg/x.js"), "x").unwrap();
        let filter = PathFilter::new(&[], &["node_modules".into()]).unwrap();
        let a = scan(root, &filter).unwrap();
        assert_eq!(a.entries.len(), 2);
        let f = File::options().write(true).open(root.join("src/a.py")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(scan(root, &filter).unwrap().digest, a.digest);
        fs::write(root.join("src/a.py"), "print(2)").unwrap();
        assert_ne!(scan(root, &filter).unwrap().digest, a.digest);
        assert!(
            scan(&root.join("missing"), &filter)
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }
}

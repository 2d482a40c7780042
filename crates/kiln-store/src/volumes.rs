//! Cache volumes: persistent directories shared by key between execs and
//! pipelines. They live outside the snapshot store (`volumes/<hash>/`, with
//! the key beside them), are mounted read-write, and never enter a snapshot
//! or a cache key by content.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One volume, as `kiln cache` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The key pipelines use.
    pub key: String,
    /// Bytes of regular files in all its instances.
    pub size: u64,
    /// Where it lives.
    pub path: PathBuf,
}

/// The cache volumes of a state dir.
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

impl Volumes {
    /// The volumes under `root` (created if needed).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    fn dir(&self, key: &str) -> PathBuf {
        let hash = blake3::hash(key.as_bytes()).to_hex();
        self.root.join(&hash[..32])
    }

    /// Directory of instance `n` of volume `key` (instance 0 is the one
    /// shared and locked mounts use; private mounts of a volume in use get
    /// further instances). Returns whether it was just created (and so is
    /// empty, to be seeded).
    pub fn instance(&self, key: &str, n: usize) -> io::Result<(PathBuf, bool)> {
        let dir = self.dir(key);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("key"), key)?;
        let path = if n == 0 {
            dir.join("data")
        } else {
            dir.join(format!("data-{n}"))
        };
        match fs::create_dir(&path) {
            Ok(()) => Ok((path, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((path, false)),
            Err(e) => Err(e),
        }
    }

    /// Every volume with its size.
    pub fn list(&self) -> io::Result<Vec<VolumeInfo>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root)?.flatten() {
            let Ok(key) = fs::read_to_string(e.path().join("key")) else {
                continue;
            };
            let size = fs::read_dir(e.path())?
                .flatten()
                .filter(|i| i.file_type().is_ok_and(|t| t.is_dir()))
                .map(|i| dir_size(&i.path()))
                .sum();
            out.push(VolumeInfo {
                key,
                size,
                path: e.path(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes a volume; returns whether it existed.
    pub fn remove(&self, key: &str) -> io::Result<bool> {
        let dir = self.dir(key);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_persist_by_key_and_can_be_listed_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let v = Volumes::open(t.path()).unwrap();
        let (a, created) = v.instance("pip cache", 0).unwrap();
        assert!(created);
        fs::write(a.join("f"), "12345").unwrap();
        let (again, created) = Volumes::open(t.path()).unwrap().instance("pip cache", 0).unwrap();
        assert_eq!((again.clone(), created), (a.clone(), false));
        let (private, _) = v.instance("pip cache", 1).unwrap();
        assert_ne!(private, a);
        v.instance("npm", 0).unwrap();
        let list = v.list().unwrap();
        assert_eq!(
            list.iter().map(|i| (i.key.as_str(), i.size)).collect::<Vec<_>>(),
            [("npm", 0), ("pip cache", 5)]
        );
        assert!(v.remove("pip cache").unwrap());
        assert!(!v.remove("pip cache").unwrap());
        assert_eq!(v.list().unwrap().len(), 1);
    }
}

//! How much disk the state directory's cache occupies: snapshot layers,
//! blobs, host stat caches and the database.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::digest::Digest;
use crate::{Store, StoreError};

/// What the cache of a state directory holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Snapshot layers.
    pub snapshots: u64,
    /// Bytes of the snapshot layers.
    pub snapshot_bytes: u64,
    /// Cache records.
    pub records: u64,
    /// Blobs (image layers, manifests, exec output).
    pub blobs: u64,
    /// Bytes of the blobs.
    pub blob_bytes: u64,
    /// Host stat caches (one per uploaded directory and filter).
    pub stat_caches: u64,
    /// Bytes of the host stat caches.
    pub stat_cache_bytes: u64,
    /// Bytes of the metadata database.
    pub database_bytes: u64,
}

impl Usage {
    /// What garbage collection holds to the budget: layers, blobs and stat
    /// caches (the database is not counted: it holds no bulk data).
    pub fn cache_bytes(&self) -> u64 {
        self.snapshot_bytes + self.blob_bytes + self.stat_cache_bytes
    }
}

/// Bytes a directory tree occupies on disk. A regular file linked from
/// several places counts for its share (size / link count), so that the
/// layers sharing hardlinked files add up to what the disk holds.
pub fn measure(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let meta = fs::symlink_metadata(&d)?;
        total += meta.blocks() * 512;
        if !meta.is_dir() {
            continue;
        }
        for item in fs::read_dir(&d)? {
            let item = item?;
            let ft = item.file_type()?;
            if ft.is_dir() {
                pending.push(item.path());
            } else {
                let m = item.metadata()?;
                let share = if ft.is_file() { m.nlink().max(1) } else { 1 };
                total += m.blocks() * 512 / share;
            }
        }
    }
    Ok(total)
}

/// A file of the cache with its size and last modification.
#[derive(Debug, Clone)]
pub(crate) struct CacheFile {
    pub path: PathBuf,
    pub bytes: u64,
    /// Microseconds since the epoch.
    pub modified: u64,
}

/// The regular files directly in `dir` (missing directory: none).
pub(crate) fn list_files(dir: &Path) -> io::Result<Vec<CacheFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for item in entries {
        let item = item?;
        let Ok(m) = item.metadata() else { continue };
        if !m.is_file() {
            continue;
        }
        let modified = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64);
        out.push(CacheFile {
            path: item.path(),
            bytes: m.blocks() * 512,
            modified,
        });
    }
    Ok(out)
}

/// The blobs of a blob directory by digest.
pub(crate) fn list_blobs(dir: &Path) -> io::Result<HashMap<Digest, CacheFile>> {
    Ok(list_files(dir)?
        .into_iter()
        .filter_map(|f| {
            let name = f.path.file_name()?.to_str()?;
            let digest: Digest = format!("sha256:{name}").parse().ok()?;
            Some((digest, f))
        })
        .collect())
}

impl Store {
    /// Measures the snapshots recorded without a size and stores their sizes.
    pub(crate) fn measure_unsized(&self) -> Result<(), StoreError> {
        let mut sizes = Vec::new();
        for (id, rec) in self.db().snapshots()? {
            if rec.size.is_none() {
                let dir = self.layer_dir(id);
                sizes.push((id, measure(&dir).map_err(StoreError::io(&dir))?));
            }
        }
        if !sizes.is_empty() {
            self.db().set_sizes(&sizes)?;
        }
        Ok(())
    }

    /// What the cache holds now.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        self.measure_unsized()?;
        let mut u = Usage::default();
        for (_, rec) in self.db().snapshots()? {
            u.snapshots += 1;
            u.snapshot_bytes += rec.size.unwrap_or(0);
        }
        u.records = self.db().cache_len()?;
        let blob_dir = self.blob_dir();
        for f in list_files(&blob_dir).map_err(StoreError::io(&blob_dir))? {
            u.blobs += 1;
            u.blob_bytes += f.bytes;
        }
        let stat_dir = self.stat_cache_dir();
        for f in list_files(&stat_dir).map_err(StoreError::io(&stat_dir))? {
            u.stat_caches += 1;
            u.stat_cache_bytes += f.bytes;
        }
        let db = self.root().join("db");
        u.database_bytes = fs::metadata(&db).map_err(StoreError::io(&db))?.len();
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardlinked_files_count_once_across_directories() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("f"), vec![1u8; 64 << 10]).unwrap();
        let alone = measure(&a).unwrap();
        fs::hard_link(a.join("f"), b.join("f")).unwrap();
        let (ma, mb) = (measure(&a).unwrap(), measure(&b).unwrap());
        assert!(alone >= 64 << 10);
        let dir = fs::metadata(&a).unwrap().blocks() * 512;
        assert_eq!(ma + mb, alone + fs::metadata(&b).unwrap().blocks() * 512);
        assert_eq!(ma - dir, (alone - dir) / 2);
    }
}

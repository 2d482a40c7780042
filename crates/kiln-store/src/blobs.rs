//! Content-addressed blob storage: every blob is stored once, by its sha256
//! digest, under `blobs/sha256/<hex>`, and is only ever visible once complete
//! and verified.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::Digest;

/// Errors from the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("blob content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The blob directory of a state dir.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Bytes committed since the last [`BlobStore::take_written`].
    written: Arc<AtomicU64>,
}

impl BlobStore {
    /// Opens (creating if needed) a blob store rooted at `root`; partial
    /// writes go to `tmp`, which must be on the same filesystem.
    pub fn open(root: impl Into<PathBuf>, tmp: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        let tmp = tmp.into();
        let dir = root.join("sha256");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Ok(Self {
            root,
            tmp,
            written: Arc::default(),
        })
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Reads a whole blob into memory (for manifests and configs).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let path = self.path(digest);
        fs::read(&path).map_err(io_err(&path))
    }

    /// Opens a blob for streaming reads.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, BlobError> {
        let path = self.path(digest);
        File::open(&path).map_err(io_err(&path))
    }

    /// Stores `bytes`, returning their digest. A blob stored already (exec
    /// output is often empty or repeated) is only marked as just written,
    /// which keeps garbage collection off it until a record refers to it.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        let digest = Digest::of(bytes);
        let fresh = File::open(self.path(&digest)).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        if fresh.is_ok() {
            return Ok(digest);
        }
        let mut w = self.writer()?;
        w.write_all(bytes).map_err(io_err(&w.path))?;
        w.commit(None)
    }

    /// Starts writing a new blob; nothing is visible until [`BlobWriter::commit`].
    pub fn writer(&self) -> Result<BlobWriter, BlobError> {
        let file = tempfile_in(&self.tmp)?;
        Ok(BlobWriter {
            store: self.clone(),
            path: file.1,
            file: file.0,
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Bytes of blobs committed since the last call (for the disk budget).
    pub fn take_written(&self) -> u64 {
        self.written.swap(0, Ordering::Relaxed)
    }

    /// Removes a blob (used by garbage collection).
    pub fn remove(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }
}

fn tempfile_in(dir: &Path) -> Result<(File, PathBuf), BlobError> {
    for attempt in 0u32..100 {
        let name = format!(
            "blob-{}-{}-{attempt}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let path = dir.join(name);
        match File::options().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Err(io_err(dir)(io::Error::other("could not create a unique temp file")))
}

/// An in-progress blob write that hashes as it goes.
pub struct BlobWriter {
    store: BlobStore,
    path: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Verifies the content against `expected` (if given) and makes the blob
    /// visible under its digest. A mismatch discards the data.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<Digest, BlobError> {
        // No fsync here: the store syncs the filesystem before it makes the
        // records that refer to blobs durable (Store::flush).
        self.file.flush().map_err(io_err(&self.path))?;
        let actual = Digest::from_bytes(self.hasher.clone().finalize().into());
        if let Some(expected) = expected
            && *expected != actual
        {
            let _ = fs::remove_file(&self.path);
            return Err(BlobError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        let dest = self.store.path(&actual);
        fs::rename(&self.path, &dest).map_err(io_err(&dest))?;
        self.store.written.fetch_add(self.len, Ordering::Relaxed);
        Ok(actual)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful commit the temp path no longer exists.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_once_by_digest_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs"), dir.path().join("tmp")).unwrap();
        let d = store.put(b"abc").unwrap();
        assert_eq!(d, Digest::of(b"abc"));
        assert_eq!(store.read(&d).unwrap(), b"abc");
        assert_eq!(store.put(b"abc").unwrap(), d);

        let mut w = store.writer().unwrap();
        w.write_all(b"xyz").unwrap();
        let wrong = Digest::of(b"other");
        assert!(matches!(w.commit(Some(&wrong)), Err(BlobError::DigestMismatch { .. })));
        assert!(!store.contains(&Digest::of(b"xyz")));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}

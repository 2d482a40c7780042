//! Reading directories of the host: a filtered walk that never looks inside
//! excluded subtrees, a persistent stat cache so that only new or changed
//! files are read, content hashing spread over the CPUs, a digest of what
//! the filter selects (paths, kinds, permission bits, file bytes, link
//! targets; not owners or times), and the import of the selection into a
//! snapshot layer (owned by root, as inside a container the host's uids
//! mean nothing): the whole tree the first time, then only what changed, as
//! a layer on top of the previous upload.

mod access;
mod import;
mod parallel;
mod stat_cache;
mod walk;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use access::{EntryType, FileStat, HostFs, RealFs, Timestamp};
pub use import::FileSource;

use crate::filter::PathFilter;
use stat_cache::StatCache;

/// The kind of a selected host entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Its metadata when scanned.
    pub stat: FileStat,
    /// Content digest (BLAKE3) of a regular file; zero otherwise.
    pub digest: [u8; 32],
    /// When the digest was taken (for the racy-entry rule of the stat cache).
    pub(crate) recorded: Timestamp,
}

impl HostEntry {
    /// An entry a scan on another machine found (its metadata there means
    /// nothing here; only what the digest covers is kept).
    pub fn reported(rel: PathBuf, kind: HostKind, mode: u32, digest: [u8; 32]) -> Self {
        let (entry_type, size) = match &kind {
            HostKind::Dir => (EntryType::Dir, 0),
            HostKind::File(size) => (EntryType::File, *size),
            HostKind::Symlink(_) => (EntryType::Symlink, 0),
        };
        let zero = Timestamp { secs: 0, nanos: 0 };
        let stat = FileStat {
            kind: entry_type,
            mode,
            size,
            mtime: zero,
            ctime: zero,
            ino: 0,
            dev: 0,
        };
        Self {
            rel,
            kind,
            mode,
            stat,
            digest,
            recorded: zero,
        }
    }

    /// The target of a symlink entry.
    pub(crate) fn target(&self) -> Option<&Path> {
        match &self.kind {
            HostKind::Symlink(t) => Some(t),
            _ => None,
        }
    }
}

/// What a scan had to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Entries selected.
    pub entries: u64,
    /// Files whose content was read (the others were known from the stat cache).
    pub files_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
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
    /// What the scan read.
    pub stats: ScanStats,
    /// The selection of the previous scan of the same directory and filter
    /// (from the stat cache): an import only writes the difference.
    pub(crate) previous: Option<Arc<StatCache>>,
}

impl HostTree {
    /// The selection a scan on another machine reported, for `root` there:
    /// its digest is computed here, as for a local scan, so equal content
    /// gets equal keys wherever it was scanned.
    pub fn reported(root: PathBuf, entries: Vec<HostEntry>) -> Self {
        let (digest, bytes) = tree_digest(&entries);
        let stats = ScanStats {
            entries: entries.len() as u64,
            ..ScanStats::default()
        };
        Self {
            root,
            entries,
            digest,
            bytes,
            stats,
            previous: None,
        }
    }
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

pub(crate) fn err(path: &Path) -> impl FnOnce(io::Error) -> HostError + '_ {
    move |source| HostError {
        path: path.to_path_buf(),
        source,
    }
}

/// The error for a file that changed while kiln read it.
pub(crate) fn changed(path: &Path) -> HostError {
    err(path)(io::Error::other("changed while kiln was reading it; run again"))
}

/// Walks and hashes the part of `root` that `filter` selects, reading every
/// file (no stat cache).
pub fn scan(root: &Path, filter: &PathFilter) -> Result<HostTree, HostError> {
    scan_with(root, filter, &RealFs, None)
}

/// Walks the part of `root` that `filter` selects through `fs` and hashes
/// it. With a stat cache directory, files whose metadata is unchanged since
/// the previous scan of the same root and filter are not read again, and
/// the cache is updated.
pub fn scan_with(
    root: &Path,
    filter: &PathFilter,
    fs: &dyn HostFs,
    cache_dir: Option<&Path>,
) -> Result<HostTree, HostError> {
    let meta = std::fs::metadata(root).map_err(err(root))?;
    if !meta.is_dir() {
        return Err(err(root)(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let started = std::time::Instant::now();
    let now = fs.now();
    let cache_file = cache_dir.map(|d| stat_cache::path(d, root, filter.fingerprint()));
    // The stat cache loads while the tree is walked.
    let (previous, found) = std::thread::scope(|s| {
        let loading = s.spawn(|| {
            let previous = cache_file
                .as_deref()
                .and_then(|f| stat_cache::load(f, root, filter.fingerprint()));
            (previous, started.elapsed())
        });
        let found = walk::list(fs, root, filter);
        let loaded = loading.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (loaded, found)
    });
    let (previous, loaded) = previous;
    let found = found?;
    let walked = started.elapsed();
    let mut cursor = stat_cache::Cursor::new(previous.as_ref());
    let mut entries = Vec::with_capacity(found.len());
    let mut to_hash = Vec::new();
    for walk::Found { rel, stat } in found {
        let known = cursor.seek(&rel).1.filter(|c| c.still_valid(&stat));
        let (kind, digest, recorded) = match stat.kind {
            EntryType::File => match known {
                Some(c) => (HostKind::File(stat.size), c.digest, c.recorded),
                None => {
                    to_hash.push(entries.len());
                    (HostKind::File(stat.size), [0; 32], now)
                }
            },
            EntryType::Symlink => match known.and_then(|c| c.target.clone()) {
                Some(target) => (HostKind::Symlink(target), [0; 32], known.map_or(now, |c| c.recorded)),
                None => {
                    let path = root.join(&rel);
                    (
                        HostKind::Symlink(fs.read_link(&path).map_err(err(&path))?),
                        [0; 32],
                        now,
                    )
                }
            },
            // The walk selects nothing else.
            EntryType::Dir | EntryType::Other => (HostKind::Dir, [0; 32], now),
        };
        entries.push(HostEntry {
            mode: stat.mode,
            rel,
            kind,
            stat,
            digest,
            recorded,
        });
    }

    let matched = started.elapsed();
    let hashed = parallel::map(&to_hash, |&i| hash_file(fs, &root.join(&entries[i].rel)));
    let mut stats = ScanStats {
        entries: entries.len() as u64,
        ..ScanStats::default()
    };
    for (&i, result) in to_hash.iter().zip(hashed) {
        let (digest, read) = result?;
        let e = &mut entries[i];
        e.digest = digest;
        if read != e.stat.size {
            // Changed while being read: the digest is of what was read, and
            // the next scan must read it again.
            e.kind = HostKind::File(read);
            e.recorded = Timestamp::default();
        }
        stats.files_read += 1;
        stats.bytes_read += read;
    }

    let read = started.elapsed();
    let (digest, bytes) = tree_digest(&entries);
    if let Some(file) = &cache_file {
        let unchanged = previous
            .as_ref()
            .is_some_and(|p| to_hash.is_empty() && p.selection == digest && p.entries.len() == entries.len());
        if unchanged {
            stat_cache::touch(file);
        } else if let Err(e) = stat_cache::save(file, root, filter.fingerprint(), &digest, &entries) {
            tracing::warn!(path = %file.display(), "could not write the host stat cache: {e}");
        }
    }
    tracing::debug!(
        root = %root.display(),
        ?stats,
        ?loaded,
        ?walked,
        ?matched,
        ?read,
        total = ?started.elapsed(),
        "host scan"
    );
    Ok(HostTree {
        root: root.to_path_buf(),
        entries,
        digest,
        bytes,
        stats,
        previous: previous.map(Arc::new),
    })
}

/// The BLAKE3 digest and size of a file's content.
fn hash_file(fs: &dyn HostFs, path: &Path) -> Result<([u8; 32], u64), HostError> {
    let mut reader = fs.open(path).map_err(err(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(path)(e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((*hasher.finalize().as_bytes(), total))
}

/// The digest of a selection and the bytes of its regular files (hashed
/// in one piece: many small updates cost more than the hashing).
fn tree_digest(entries: &[HostEntry]) -> ([u8; 32], u64) {
    let mut buf = Vec::with_capacity(entries.len() * 96);
    let mut bytes = 0;
    for e in entries {
        let rel = e.rel.as_os_str().as_encoded_bytes();
        buf.extend_from_slice(&(rel.len() as u64).to_le_bytes());
        buf.extend_from_slice(rel);
        buf.extend_from_slice(&e.mode.to_le_bytes());
        match &e.kind {
            HostKind::Dir => buf.push(b'd'),
            HostKind::File(size) => {
                bytes += size;
                buf.push(b'f');
                buf.extend_from_slice(&size.to_le_bytes());
                buf.extend_from_slice(&e.digest);
            }
            HostKind::Symlink(target) => {
                let t = target.as_os_str().as_encoded_bytes();
                buf.push(b'l');
                buf.extend_from_slice(&(t.len() as u64).to_le_bytes());
                buf.extend_from_slice(t);
            }
        }
    }
    (*blake3::hash(&buf).as_bytes(), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};

    #[test]
    fn a_reported_selection_has_the_digest_of_the_scanned_one() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("src/a.py"), "print(1)").unwrap();
        std::os::unix::fs::symlink("a.py", root.join("src/link")).unwrap();
        let scanned = scan(root, &PathFilter::default()).unwrap();
        let reported: Vec<HostEntry> = scanned
            .entries
            .iter()
            .map(|e| HostEntry::reported(e.rel.clone(), e.kind.clone(), e.mode, e.digest))
            .collect();
        let tree = HostTree::reported(PathBuf::from("/elsewhere"), reported);
        assert_eq!(tree.digest, scanned.digest);
        assert_eq!(tree.bytes, scanned.bytes);
    }

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

    #[test]
    fn gitignore_files_leave_out_what_they_ignore_nested_and_from_above() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path();
        let write = |p: &str, text: &str| {
            let path = repo.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write(".git/HEAD", "ref: refs/heads/main\n");
        write(".gitignore", "dist/\n");
        write("app/.gitignore", "*.log\nbuild/\n!keep.log\n");
        write("app/src/main.rs", "fn main() {}");
        write("app/src/debug.log", "noise");
        write("app/keep.log", "kept");
        write("app/build/out.bin", "built");
        write("app/dist/bundle.js", "bundled");
        write("app/sub/.gitignore", "secret.txt\n!*.log\n");
        write("app/sub/secret.txt", "s3cr3t");
        write("app/sub/trace.log", "re-included below");
        let names =
            |tree: &HostTree| -> Vec<String> { tree.entries.iter().map(|e| e.rel.display().to_string()).collect() };
        let filter = PathFilter::new(&[], &[]).unwrap().with_gitignore(true);
        let app = scan(&repo.join("app"), &filter).unwrap();
        assert_eq!(
            names(&app),
            [
                ".gitignore",
                "keep.log",
                "src",
                "src/main.rs",
                "sub",
                "sub/.gitignore",
                "sub/trace.log"
            ],
            "the repository's dist/ rule applies from above"
        );
        let whole = scan(repo, &filter).unwrap();
        assert!(
            !names(&whole).iter().any(|n| n.starts_with(".git/") || n == ".git"),
            "{:?}",
            names(&whole)
        );
        // Without the flag everything is there, and the two are cached apart.
        let plain = PathFilter::new(&[], &[]).unwrap();
        assert!(names(&scan(&repo.join("app"), &plain).unwrap()).contains(&"build/out.bin".to_string()));
        assert_ne!(plain.fingerprint(), filter.fingerprint());
    }

    #[test]
    fn the_digest_format_is_stable() {
        // Cache keys of host directories derive from this digest: changing
        // its format silently invalidates every cached upload.
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/f"), "x").unwrap();
        std::os::unix::fs::symlink("d/f", t.path().join("l")).unwrap();
        for p in ["d", "d/f"] {
            let mode = if p == "d" { 0o755 } else { 0o644 };
            fs::set_permissions(t.path().join(p), std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        }
        let tree = scan(t.path(), &PathFilter::default()).unwrap();
        let mut h = blake3::Hasher::new();
        for (rel, mode, tail) in [
            ("d", 0o755u32, b"d".to_vec()),
            (
                "d/f",
                0o644,
                [b"f".as_slice(), &1u64.to_le_bytes(), blake3::hash(b"x").as_bytes()].concat(),
            ),
            ("l", 0o777, [b"l".as_slice(), &3u64.to_le_bytes(), b"d/f"].concat()),
        ] {
            h.update(&(rel.len() as u64).to_le_bytes()).update(rel.as_bytes());
            h.update(&mode.to_le_bytes()).update(&tail);
        }
        assert_eq!(tree.digest, *h.finalize().as_bytes());
    }
}

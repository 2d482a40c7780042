//! The persistent stat cache of host uploads: for one host directory and
//! one filter, the selection of the last scan with each entry's metadata
//! (size, mtime, ctime, inode, device, mode) and content digest, so that an
//! unchanged file is recognised from its metadata alone.
//!
//! One file per (directory, filter) under `<state>/hoststat/`, read and
//! written whole (like git's index): a scan needs every entry anyway, and a
//! flat file loads in one read, costs the metadata database nothing, and
//! can be lost at any time (the next scan just hashes again). It is written
//! to a temporary name and renamed, and ends with a checksum; a file that
//! does not check out is ignored.
//!
//! Racy entries, as git handles them: a file can change again within the
//! timestamp granularity of its filesystem right after it was hashed, with
//! its metadata left identical. So an entry is trusted only when the file's
//! mtime and ctime lie in a whole second that ended before the digest was
//! taken (less a slack for kernels whose file clock lags the system clock);
//! anything newer is hashed again, and once it is old enough, trusted.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{self, AtomicU64};
use std::time::SystemTime;

use super::HostEntry;
use super::access::{EntryType, FileStat, Timestamp};

const MAGIC: &[u8] = b"kiln host stat cache v1\n";

/// How far a filesystem's clock may lag the system clock (coarse kernel
/// timestamps are a scheduler tick behind).
const CLOCK_SLACK_NANOS: u64 = 100_000_000;

/// What the cache remembers of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cached {
    /// Metadata when the digest was taken.
    pub stat: FileStat,
    /// When the digest was taken.
    pub recorded: Timestamp,
    /// Content digest (regular files; zero otherwise).
    pub digest: [u8; 32],
    /// Link target (symlinks).
    pub target: Option<PathBuf>,
}

impl Cached {
    /// Whether the file at `stat` is certainly unchanged since the digest
    /// was taken.
    pub fn still_valid(&self, stat: &FileStat) -> bool {
        let horizon = self.recorded.minus_nanos(CLOCK_SLACK_NANOS).secs;
        self.stat == *stat && stat.mtime.secs < horizon && stat.ctime.secs < horizon
    }
}

/// The selection of the last scan of one (directory, filter).
#[derive(Debug, Clone, Default)]
pub(crate) struct StatCache {
    /// Digest of the selection (the tree digest of that scan).
    pub selection: [u8; 32],
    /// Entries by path relative to the scanned root, in walk order (which
    /// is [`path_cmp`] order).
    pub entries: Vec<(PathBuf, Cached)>,
}

/// Compares paths component by component (the walk order: a directory
/// before its contents, siblings by name), as bytes with `/` first.
pub(crate) fn path_cmp(a: &Path, b: &Path) -> Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.as_os_str()
        .as_bytes()
        .iter()
        .map(key)
        .cmp(b.as_os_str().as_bytes().iter().map(key))
}

/// Looks up the entries of a cache in walk order: a merge with the walk of
/// a new scan, no hashing.
pub(crate) struct Cursor<'a> {
    entries: &'a [(PathBuf, Cached)],
    next: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `cache` (none: finds nothing).
    pub fn new(cache: Option<&'a StatCache>) -> Self {
        Self {
            entries: cache.map_or(&[], |c| &c.entries),
            next: 0,
        }
    }

    /// The entries before `rel` not yet passed, then the entry of `rel`.
    /// Calls must come in walk order.
    pub fn seek(&mut self, rel: &Path) -> (&'a [(PathBuf, Cached)], Option<&'a Cached>) {
        let start = self.next;
        while self.next < self.entries.len() && path_cmp(&self.entries[self.next].0, rel) == Ordering::Less {
            self.next += 1;
        }
        let skipped = &self.entries[start..self.next];
        match self.entries.get(self.next) {
            Some((p, c)) if p == rel => {
                self.next += 1;
                (skipped, Some(c))
            }
            _ => (skipped, None),
        }
    }

    /// The entries not passed yet.
    pub fn rest(&self) -> &'a [(PathBuf, Cached)] {
        &self.entries[self.next..]
    }
}

/// Where the cache of `root` scanned with the filter `fingerprint` lives.
pub(crate) fn path(dir: &Path, root: &Path, fingerprint: &[u8; 32]) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(root.as_os_str().as_bytes()).update(&[0]).update(fingerprint);
    dir.join(&h.finalize().to_hex()[..32])
}

/// Loads a cache file; `None` when it is missing or does not check out.
pub(crate) fn load(file: &Path, root: &Path, fingerprint: &[u8; 32]) -> Option<StatCache> {
    let bytes = match fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::debug!(path = %file.display(), "ignoring the host stat cache: {e}");
            }
            return None;
        }
    };
    let cache = decode(&bytes, root, fingerprint);
    if cache.is_none() {
        tracing::debug!(path = %file.display(), "ignoring a host stat cache that does not check out");
    }
    cache
}

/// Writes the cache of a scan (to a temporary file, renamed into place).
pub(crate) fn save(
    file: &Path,
    root: &Path,
    fingerprint: &[u8; 32],
    selection: &[u8; 32],
    entries: &[HostEntry],
) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir)?;
    }
    let bytes = encode(root, fingerprint, selection, entries);
    let tmp = file.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, atomic::Ordering::Relaxed)
    ));
    fs::write(&tmp, &bytes)?;
    fs::rename(&tmp, file).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Marks a cache file as used now (garbage collection evicts the least
/// recently used).
pub(crate) fn touch(file: &Path) {
    if let Err(e) = File::open(file).and_then(|f| f.set_modified(SystemTime::now())) {
        tracing::debug!(path = %file.display(), "touching the host stat cache: {e}");
    }
}

fn kind_byte(kind: EntryType) -> u8 {
    match kind {
        EntryType::Dir => 0,
        EntryType::File => 1,
        EntryType::Symlink => 2,
        EntryType::Other => 3,
    }
}

fn encode(root: &Path, fingerprint: &[u8; 32], selection: &[u8; 32], entries: &[HostEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + entries.len() * 128);
    out.extend_from_slice(MAGIC);
    let root = root.as_os_str().as_bytes();
    out.extend_from_slice(&(root.len() as u64).to_le_bytes());
    out.extend_from_slice(root);
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(selection);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        let rel = e.rel.as_os_str().as_bytes();
        out.extend_from_slice(&(rel.len() as u32).to_le_bytes());
        out.extend_from_slice(rel);
        let s = &e.stat;
        out.push(kind_byte(s.kind));
        out.extend_from_slice(&s.mode.to_le_bytes());
        out.extend_from_slice(&s.size.to_le_bytes());
        for t in [s.mtime, s.ctime, e.recorded] {
            out.extend_from_slice(&t.secs.to_le_bytes());
            out.extend_from_slice(&t.nanos.to_le_bytes());
        }
        out.extend_from_slice(&s.ino.to_le_bytes());
        out.extend_from_slice(&s.dev.to_le_bytes());
        out.extend_from_slice(&e.digest);
        match e.target() {
            Some(t) => {
                let t = t.as_os_str().as_bytes();
                out.extend_from_slice(&(t.len() as u32).to_le_bytes());
                out.extend_from_slice(t);
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// A cursor over the bytes of a cache file.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    fn time(&mut self) -> Option<Timestamp> {
        let secs = i64::from_le_bytes(self.array()?);
        let nanos = self.u32()?;
        Some(Timestamp { secs, nanos })
    }
}

fn decode(bytes: &[u8], root: &Path, fingerprint: &[u8; 32]) -> Option<StatCache> {
    let (body, sum) = bytes.split_at(bytes.len().checked_sub(32)?);
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut r = Reader(body);
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let root_len = r.u64()? as usize;
    if r.take(root_len)? != root.as_os_str().as_bytes() || &r.array::<32>()? != fingerprint {
        return None;
    }
    let selection = r.array()?;
    let count = r.u64()? as usize;
    let mut entries = Vec::with_capacity(count.min(body.len() / 64));
    for _ in 0..count {
        let rel_len = r.u32()? as usize;
        let rel = PathBuf::from(OsStr::from_bytes(r.take(rel_len)?));
        let kind = match r.take(1)?[0] {
            0 => EntryType::Dir,
            1 => EntryType::File,
            2 => EntryType::Symlink,
            3 => EntryType::Other,
            _ => return None,
        };
        let mode = r.u32()?;
        let size = r.u64()?;
        let (mtime, ctime, recorded) = (r.time()?, r.time()?, r.time()?);
        let (ino, dev) = (r.u64()?, r.u64()?);
        let digest = r.array()?;
        let target = match r.u32()? {
            u32::MAX => None,
            n => Some(PathBuf::from(OsStr::from_bytes(r.take(n as usize)?))),
        };
        let stat = FileStat {
            kind,
            mode,
            size,
            mtime,
            ctime,
            ino,
            dev,
        };
        entries.push((
            rel,
            Cached {
                stat,
                recorded,
                digest,
                target,
            },
        ));
    }
    r.0.is_empty().then_some(StatCache { selection, entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostKind;

    fn stat(secs: i64) -> FileStat {
        FileStat {
            kind: EntryType::File,
            mode: 0o644,
            size: 3,
            mtime: Timestamp { secs, nanos: 5 },
            ctime: Timestamp { secs, nanos: 7 },
            ino: 42,
            dev: 1,
        }
    }

    #[test]
    fn round_trips_and_rejects_other_roots_and_damage() {
        let t = tempfile::tempdir().unwrap();
        let entries = vec![
            HostEntry {
                rel: "a".into(),
                kind: HostKind::File(3),
                mode: 0o644,
                stat: stat(100),
                digest: [9; 32],
                recorded: Timestamp { secs: 200, nanos: 0 },
            },
            HostEntry {
                rel: "l".into(),
                kind: HostKind::Symlink("a".into()),
                mode: 0o777,
                stat: FileStat {
                    kind: EntryType::Symlink,
                    ..stat(100)
                },
                digest: [0; 32],
                recorded: Timestamp { secs: 200, nanos: 0 },
            },
        ];
        let file = path(t.path(), Path::new("/src"), &[1; 32]);
        save(&file, Path::new("/src"), &[1; 32], &[3; 32], &entries).unwrap();
        let loaded = load(&file, Path::new("/src"), &[1; 32]).unwrap();
        assert_eq!(loaded.selection, [3; 32]);
        assert_eq!(loaded.entries[0].0, Path::new("a"));
        assert_eq!(loaded.entries[0].1.digest, [9; 32]);
        assert_eq!(loaded.entries[1].1.target.as_deref(), Some(Path::new("a")));
        assert!(load(&file, Path::new("/other"), &[1; 32]).is_none());
        assert!(load(&file, Path::new("/src"), &[2; 32]).is_none());
        let mut bytes = fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&file, bytes).unwrap();
        assert!(load(&file, Path::new("/src"), &[1; 32]).is_none());
    }

    #[test]
    fn walk_order_puts_a_directory_before_its_contents_and_siblings_by_name() {
        let mut paths: Vec<PathBuf> = ["a.txt", "a/b", "a", "b", "a/b/c", "a-b"]
            .iter()
            .map(PathBuf::from)
            .collect();
        paths.sort_by(|x, y| path_cmp(x, y));
        let want: Vec<PathBuf> = ["a", "a/b", "a/b/c", "a-b", "a.txt", "b"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(paths, want);
        let cache = StatCache {
            selection: [0; 32],
            entries: want
                .iter()
                .map(|p| {
                    let c = Cached {
                        stat: stat(1),
                        recorded: Timestamp::default(),
                        digest: [0; 32],
                        target: None,
                    };
                    (p.clone(), c)
                })
                .collect(),
        };
        let mut cursor = Cursor::new(Some(&cache));
        assert!(cursor.seek(Path::new("a")).1.is_some());
        let (skipped, found) = cursor.seek(Path::new("a-b"));
        assert_eq!(
            skipped.iter().map(|e| e.0.as_path()).collect::<Vec<_>>(),
            [Path::new("a/b"), Path::new("a/b/c")]
        );
        assert!(found.is_some());
        assert!(cursor.seek(Path::new("a0")).1.is_none());
        assert_eq!(cursor.rest().len(), 1);
    }

    #[test]
    fn entries_from_the_second_of_hashing_are_not_trusted() {
        let cached = |recorded: Timestamp| Cached {
            stat: stat(100),
            recorded,
            digest: [0; 32],
            target: None,
        };
        // Hashed well after the file's last change: trusted while it matches.
        assert!(cached(Timestamp { secs: 105, nanos: 0 }).still_valid(&stat(100)));
        assert!(!cached(Timestamp { secs: 105, nanos: 0 }).still_valid(&FileStat { ino: 43, ..stat(100) }));
        // Hashed within the second of the change: the file may have changed
        // again with identical metadata.
        assert!(
            !cached(Timestamp {
                secs: 100,
                nanos: 900_000_000
            })
            .still_valid(&stat(100))
        );
        // Just after the second ended, but within the clock slack.
        assert!(
            !cached(Timestamp {
                secs: 101,
                nanos: 50_000_000
            })
            .still_valid(&stat(100))
        );
        assert!(
            cached(Timestamp {
                secs: 101,
                nanos: 500_000_000
            })
            .still_valid(&stat(100))
        );
    }
}

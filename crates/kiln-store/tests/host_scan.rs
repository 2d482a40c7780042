//! The host scanner's stat cache and pruning, observed through a probing
//! filesystem that records every path the scanner lists, stats, opens or
//! reads a link of, and can present times as a coarse filesystem would.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use kiln_store::PathFilter;
use kiln_store::host::{self, EntryType, FileStat, HostFs, RealFs, Timestamp};

/// What the scanner did to which path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    List,
    Stat,
    Open,
    ReadLink,
}

/// How the probe presents file times.
#[derive(Debug, Clone, Copy)]
enum Times {
    /// As they are, minus this many seconds (files written that long ago).
    Aged(i64),
    /// Every file changed at this whole second, and the clock reads
    /// `now` (a filesystem with one-second timestamps).
    Coarse { changed: i64, now: Timestamp },
}

struct Probe {
    times: Mutex<Times>,
    log: Mutex<Vec<(Op, PathBuf)>>,
}

impl Probe {
    fn new(times: Times) -> Self {
        Self {
            times: Mutex::new(times),
            log: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, op: Op, path: &Path) {
        self.log.lock().unwrap().push((op, path.to_path_buf()));
    }

    /// Paths the scanner did `op` on since the last call, and forgets them.
    fn take(&self, op: Op) -> Vec<PathBuf> {
        let mut log = self.log.lock().unwrap();
        let out = log.iter().filter(|(o, _)| *o == op).map(|(_, p)| p.clone()).collect();
        log.clear();
        out
    }

    fn set_times(&self, times: Times) {
        *self.times.lock().unwrap() = times;
    }
}

impl HostFs for Probe {
    fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, EntryType)>> {
        self.note(Op::List, dir);
        RealFs.list(dir)
    }

    fn lstat(&self, path: &Path) -> io::Result<FileStat> {
        self.note(Op::Stat, path);
        let mut s = RealFs.lstat(path)?;
        match *self.times.lock().unwrap() {
            Times::Aged(by) => {
                s.mtime.secs -= by;
                s.ctime.secs -= by;
            }
            Times::Coarse { changed, .. } => {
                s.mtime = Timestamp {
                    secs: changed,
                    nanos: 0,
                };
                s.ctime = s.mtime;
            }
        }
        Ok(s)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>> {
        self.note(Op::Open, path);
        RealFs.open(path)
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.note(Op::ReadLink, path);
        RealFs.read_link(path)
    }

    fn now(&self) -> Timestamp {
        match *self.times.lock().unwrap() {
            Times::Aged(_) => Timestamp::now(),
            Times::Coarse { now, .. } => now,
        }
    }
}

fn write(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// A source tree: 3 packages of 10 files, a symlink, a vendored dir.
fn source_tree(root: &Path) {
    for p in 0..3 {
        for f in 0..10 {
            write(
                &root.join(format!("pkg{p}/src/f{f}.rs")),
                &format!("fn f{p}_{f}() {{}}"),
            );
        }
    }
    std::os::unix::fs::symlink("pkg0/src/f0.rs", root.join("main.rs")).unwrap();
    write(&root.join("node_modules/dep/index.js"), "module.exports = 1");
    write(&root.join("pkg1/target/debug/big.bin"), "binary");
}

/// The digest a scan without any cache computes.
fn fresh_digest(root: &Path, filter: &PathFilter) -> [u8; 32] {
    host::scan(root, filter).unwrap().digest
}

#[test]
fn an_unchanged_rescan_reads_no_file_contents() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("src"), t.path().join("cache"));
    source_tree(&root);
    let filter = PathFilter::default();
    let probe = Probe::new(Times::Aged(3600));

    let first = host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();
    assert_eq!(probe.take(Op::Open).len(), 32);
    assert_eq!(first.stats.files_read, 32);

    let second = host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();
    assert_eq!(
        probe.take(Op::Open),
        Vec::<PathBuf>::new(),
        "an unchanged file was read"
    );
    assert_eq!(second.stats.files_read, 0);
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.digest, fresh_digest(&root, &filter));

    // One changed file: only it is read again.
    write(&root.join("pkg2/src/f3.rs"), "fn changed() {}");
    let third = host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();
    assert_eq!(probe.take(Op::Open), vec![root.join("pkg2/src/f3.rs")]);
    assert_ne!(third.digest, first.digest);
    assert_eq!(third.digest, fresh_digest(&root, &filter));
}

#[test]
fn a_rewrite_that_keeps_mtime_and_size_is_caught_by_inode_or_ctime() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("src"), t.path().join("cache"));
    write(&root.join("a.txt"), "1111");
    write(&root.join("b.txt"), "bbbb");
    let filter = PathFilter::default();
    let probe = Probe::new(Times::Aged(3600));
    let first = host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();
    let mtime = fs::metadata(root.join("a.txt")).unwrap().modified().unwrap();

    // Replaced by a rename (new inode), same size, mtime put back.
    write(&root.join("a.new"), "2222");
    File::options()
        .write(true)
        .open(root.join("a.new"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::rename(root.join("a.new"), root.join("a.txt")).unwrap();
    probe.take(Op::Open);
    let second = host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();
    assert_eq!(probe.take(Op::Open), vec![root.join("a.txt")]);
    assert_ne!(second.digest, first.digest);
    assert_eq!(second.digest, fresh_digest(&root, &filter));

    // Rewritten in place (same inode), same size, mtime put back: the ctime moved.
    let f = File::options().write(true).open(root.join("b.txt")).unwrap();
    let b_mtime = f.metadata().unwrap().modified().unwrap();
    io::Write::write_all(&mut &f, b"BBBB").unwrap();
    f.set_modified(b_mtime).unwrap();
    drop(f);
    let third = host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();
    assert_eq!(probe.take(Op::Open), vec![root.join("b.txt")]);
    assert_eq!(third.digest, fresh_digest(&root, &filter));
}

#[test]
fn excluded_subtrees_are_never_listed_statted_or_read() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    source_tree(&root);
    let probe = Probe::new(Times::Aged(3600));
    let touched = |probe: &Probe| -> Vec<PathBuf> { probe.log.lock().unwrap().drain(..).map(|(_, p)| p).collect() };

    let excluding = PathFilter::new(&[], &["node_modules".into(), "**/target".into()]).unwrap();
    let tree = host::scan_with(&root, &excluding, &probe, None).unwrap();
    assert_eq!(
        tree.entries
            .iter()
            .filter(|e| e.rel.starts_with("node_modules"))
            .count(),
        0
    );
    for path in touched(&probe) {
        assert!(
            !path.starts_with(root.join("node_modules")) && !path.starts_with(root.join("pkg1/target")),
            "the scan touched {} in an excluded subtree",
            path.display()
        );
    }

    // With includes, directories no pattern can match below are not listed.
    let including = PathFilter::new(&["pkg0/src/*.rs".into()], &[]).unwrap();
    let tree = host::scan_with(&root, &including, &probe, None).unwrap();
    assert_eq!(tree.entries.len(), 12, "pkg0, pkg0/src and its 10 files");
    for path in touched(&probe) {
        for other in ["pkg1", "pkg2", "node_modules", "main.rs"] {
            assert!(
                !path.starts_with(root.join(other)),
                "the scan touched {}",
                path.display()
            );
        }
    }

    // Without root's privileges, an unreadable excluded directory proves it
    // as well: opening it would fail the scan.
    if !is_root() {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("node_modules"), fs::Permissions::from_mode(0o000)).unwrap();
        host::scan(&root, &excluding).unwrap();
        fs::set_permissions(root.join("node_modules"), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn a_file_changed_within_the_second_it_was_hashed_is_read_again() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("src"), t.path().join("cache"));
    write(&root.join("a.txt"), "v1");
    let filter = PathFilter::default();
    // A filesystem with one-second timestamps: the file changed at second
    // 1000, and it is 1000.3 s when the scan hashes it.
    let within = Timestamp {
        secs: 1000,
        nanos: 300_000_000,
    };
    let probe = Probe::new(Times::Coarse {
        changed: 1000,
        now: within,
    });
    let first = host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();

    // Rewritten in the same second: same size, and the metadata the
    // filesystem shows is identical.
    let f = File::options().write(true).open(root.join("a.txt")).unwrap();
    io::Write::write_all(&mut &f, b"v2").unwrap();
    drop(f);
    probe.take(Op::Open);
    let second = host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();
    assert_eq!(
        probe.take(Op::Open),
        vec![root.join("a.txt")],
        "a racy entry was trusted"
    );
    assert_ne!(second.digest, first.digest);
    assert_eq!(second.digest, fresh_digest(&root, &filter));

    // Hashed again once its second is over, the entry is trusted from then on.
    let later = Times::Coarse {
        changed: 1000,
        now: Timestamp { secs: 1005, nanos: 0 },
    };
    probe.set_times(later);
    host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();
    assert_eq!(probe.take(Op::Open).len(), 1);
    let settled = host::scan_with(&root, &filter, &probe, Some(&cache)).unwrap();
    assert!(probe.take(Op::Open).is_empty());
    assert_eq!(settled.digest, second.digest);
}

#[test]
fn the_stat_cache_is_per_directory_and_filter_and_survives_damage() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("src"), t.path().join("cache"));
    source_tree(&root);
    let probe = Probe::new(Times::Aged(3600));
    let all = PathFilter::default();
    let some = PathFilter::new(&["pkg0".into()], &[]).unwrap();
    host::scan_with(&root, &all, &probe, Some(&cache)).unwrap();
    host::scan_with(&root, &some, &probe, Some(&cache)).unwrap();
    probe.take(Op::Open);
    host::scan_with(&root, &some, &probe, Some(&cache)).unwrap();
    host::scan_with(&root, &all, &probe, Some(&cache)).unwrap();
    assert!(probe.take(Op::Open).is_empty());

    // A damaged cache file is ignored: everything is read again, correctly.
    for f in fs::read_dir(&cache).unwrap() {
        fs::write(f.unwrap().path(), "garbage").unwrap();
    }
    let tree = host::scan_with(&root, &all, &probe, Some(&cache)).unwrap();
    assert_eq!(probe.take(Op::Open).len(), 32);
    assert_eq!(tree.digest, fresh_digest(&root, &all));
    // Touching a file's times without changing it keeps the digest.
    File::options()
        .write(true)
        .open(root.join("pkg0/src/f1.rs"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    assert_eq!(
        host::scan_with(&root, &all, &probe, Some(&cache)).unwrap().digest,
        tree.digest
    );
}

//! An upper directory turned into a layer and applied again gives the same
//! tree, with every compression, deterministically (no root needed).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use kiln_oci::{Compression, apply_layer, diff_to_layer};
use kiln_store::Digest;

/// path → (kind, mode, mtime, content or link target, hardlink group).
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>, inodes: &mut BTreeMap<u64, String>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(root, &p, out, inodes);
                format!("dir {:o} {}", m.mode() & 0o7777, m.mtime())
            } else if m.is_file() {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                format!(
                    "file {:o} {} {:?} same-as {first}",
                    m.mode() & 0o7777,
                    m.mtime(),
                    fs::read(&p).unwrap()
                )
            } else {
                format!("other {:o}", m.mode())
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out, &mut BTreeMap::new());
    out
}

fn set_mtime(p: &Path, secs: i64) {
    let ts = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn make_upper(root: &Path) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    symlink("tool", root.join("usr/bin/alias")).unwrap();
    symlink("/abs/target", root.join("abs")).unwrap();
    fs::create_dir(root.join("private")).unwrap();
    fs::write(root.join("private/key"), vec![0u8; 70_000]).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let long = "d".repeat(120);
    fs::create_dir(root.join(&long)).unwrap();
    fs::write(root.join(&long).join("f".repeat(150)), b"long names").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    for p in [
        "usr/bin/tool",
        "usr/bin/alias",
        "abs",
        "private/key",
        "fifo",
        "usr/bin",
        "usr",
        "private",
        &long,
    ] {
        set_mtime(&root.join(p), 1_650_000_000);
    }
}

#[test]
fn diff_then_apply_round_trips_with_every_compression() {
    let t = tempfile::tempdir().unwrap();
    let upper = t.path().join("upper");
    make_upper(&upper);
    let want = tree(&upper);
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut blob = Vec::new();
        let stats = diff_to_layer(&upper, c, &mut blob).unwrap();
        assert_eq!(stats.digest, Digest::of(&blob));
        assert_eq!(stats.size, blob.len() as u64);
        assert_eq!(stats.whiteouts, 0);
        assert_eq!(Compression::sniff(&blob).unwrap_or(Compression::None), c);

        let again = diff_to_layer(&upper, c, Vec::new()).unwrap();
        assert_eq!(again, stats, "{c:?}: diffing is deterministic");

        let out = t.path().join(format!("applied-{c:?}"));
        fs::create_dir(&out).unwrap();
        let applied = apply_layer(blob.as_slice(), "", &out, &[], kiln_oci::ExtractLimits::default()).unwrap();
        assert_eq!(applied.diff_id, Some(stats.diff_id), "{c:?}");
        assert_eq!(applied.hardlinks, 1);
        assert_eq!(tree(&out), want, "{c:?}");
    }
}

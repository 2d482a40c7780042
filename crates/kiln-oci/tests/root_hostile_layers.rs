//! Layers built to exhaust the host: sparse files claiming terabytes,
//! malformed sparse maps, oversized metadata, absurdly deep trees, and
//! layers over the size limits; and the device nodes and setuid files a
//! legitimate layer has, which must be created inside the layer directory.
//! Tarballs are built block by block so that nothing sanitizes them.

mod common;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{LayerTar, MTIME, require_root};
use kiln_oci::{Error, ExtractLimits, Limit, apply_layer};
use tar::{EntryType, GnuExtSparseHeader, Header};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TIB: u64 = 1 << 40;
const MIB: u64 = 1 << 20;

/// A tarball written block by block.
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn block(&mut self, block: &[u8; 512]) -> &mut Self {
        self.0.extend_from_slice(block);
        self
    }

    /// Data padded to a whole block.
    fn data(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    /// A PAX header for the next entry.
    fn pax(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let body: String = records.iter().map(|(k, v)| pax_record(k, v)).collect();
        let mut h = header(EntryType::XHeader, "PaxHeaders/entry", 0o644, body.len() as u64);
        h.set_cksum();
        self.block(h.as_bytes()).data(body.as_bytes())
    }

    /// An entry with its data.
    fn entry(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.block(h.as_bytes()).data(data)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.0);
        out.resize(out.len() + 1024, 0);
        out
    }
}

/// One PAX record: its length counts its own digits.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}")
}

/// A header with a raw (unvalidated) name.
fn header(kind: EntryType, name: &str, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

/// A sparse file: data segments at offsets in a file of `size` bytes.
struct Sparse {
    name: &'static str,
    size: u64,
    segments: Vec<(u64, Vec<u8>)>,
}

impl Sparse {
    fn stored(&self) -> u64 {
        self.segments.iter().map(|(_, d)| d.len() as u64).sum()
    }

    fn packed_data(&self) -> Vec<u8> {
        self.segments.iter().flat_map(|(_, d)| d.iter().copied()).collect()
    }

    /// Old GNU format: type `S`, four map slots in the header, 21 in each
    /// extension block after it.
    fn old_gnu(&self, tar: &mut RawTar) {
        let mut h = header(EntryType::GNUSparse, self.name, 0o644, self.stored());
        let (first, rest) = self.segments.split_at(self.segments.len().min(4));
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(self.size);
        for (slot, (offset, data)) in gnu.sparse.iter_mut().zip(first) {
            slot.set_offset(*offset);
            slot.set_length(data.len() as u64);
        }
        gnu.set_is_extended(!rest.is_empty());
        h.set_cksum();
        tar.block(h.as_bytes());
        let chunks: Vec<_> = rest.chunks(21).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut ext = GnuExtSparseHeader::new();
            for (slot, (offset, data)) in ext.sparse_mut().iter_mut().zip(*chunk) {
                slot.set_offset(*offset);
                slot.set_length(data.len() as u64);
            }
            ext.set_is_extended(i + 1 < chunks.len());
            tar.block(ext.as_bytes());
        }
        tar.data(&self.packed_data());
    }

    /// PAX 0.1: the map in `GNU.sparse.map`.
    fn pax_0_1(&self, tar: &mut RawTar) {
        let map: Vec<String> = self
            .segments
            .iter()
            .flat_map(|(o, d)| [o.to_string(), d.len().to_string()])
            .collect();
        let (size, count) = (self.size.to_string(), self.segments.len().to_string());
        tar.pax(&[
            ("GNU.sparse.major", "0"),
            ("GNU.sparse.minor", "1"),
            ("GNU.sparse.name", self.name),
            ("GNU.sparse.size", &size),
            ("GNU.sparse.numblocks", &count),
            ("GNU.sparse.map", &map.join(",")),
        ]);
        let h = header(EntryType::Regular, "GNUSparseFile.1/x", 0o644, 0);
        tar.entry(h, &self.packed_data());
    }

    /// PAX 1.0: the map opens the data, as decimal lines padded to a block.
    fn pax_1_0(&self, tar: &mut RawTar) {
        let size = self.size.to_string();
        tar.pax(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", self.name),
            ("GNU.sparse.realsize", &size),
        ]);
        let mut data = format!("{}\n", self.segments.len());
        for (offset, d) in &self.segments {
            data.push_str(&format!("{offset}\n{}\n", d.len()));
        }
        let mut data = data.into_bytes();
        data.resize(data.len().next_multiple_of(512), 0);
        data.extend(self.packed_data());
        tar.entry(header(EntryType::Regular, "GNUSparseFile.1/x", 0o644, 0), &data);
    }

    /// Checks the extracted file: its size, its data where the segments
    /// are and zeros around them, and that the holes take no disk.
    fn check(&self, path: &Path) {
        let meta = fs::metadata(path).unwrap();
        assert_eq!(meta.len(), self.size, "{}: apparent size", self.name);
        let allocated = meta.blocks() * 512;
        assert!(
            allocated < MIB,
            "{}: {allocated} bytes allocated on disk for {} bytes of data: holes were written",
            self.name,
            self.stored()
        );
        let mut f = File::open(path).unwrap();
        let read_at = |f: &mut File, offset: u64, len: usize| {
            let mut buf = vec![0u8; len];
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.read_exact(&mut buf).unwrap();
            buf
        };
        for (offset, data) in &self.segments {
            assert_eq!(&read_at(&mut f, *offset, data.len()), data, "{} at {offset}", self.name);
            // The bytes around the data are holes (or other segments).
            let before = offset.saturating_sub(16);
            let around = read_at(&mut f, before, (offset - before) as usize);
            assert!(
                around.iter().all(|b| *b == 0) || self.segments.iter().any(|(o, _)| o < offset),
                "{}: not zeros before {offset}",
                self.name
            );
        }
        let tail = self.size.min(4096);
        if self
            .segments
            .iter()
            .all(|(o, d)| o + d.len() as u64 <= self.size - tail)
        {
            assert!(read_at(&mut f, self.size - tail, tail as usize).iter().all(|b| *b == 0));
        }
    }
}

/// Writes a [`Sparse`] in one of the formats.
type Format = fn(&Sparse, &mut RawTar);

/// The 1 TiB claim of the issue: two 4-byte segments, the rest holes.
fn terabyte() -> Sparse {
    Sparse {
        name: "var/log/huge",
        size: TIB,
        segments: vec![(0, b"head".to_vec()), (TIB - 4, b"tail".to_vec())],
    }
}

fn no_entry_limit() -> ExtractLimits {
    ExtractLimits {
        max_entry_size: None,
        ..ExtractLimits::default()
    }
}

fn expect_limit(err: Error, entry: &str, limit: Limit, actual: u64, max: u64, layer: &Path) {
    let msg = err.to_string();
    match err {
        Error::LimitExceeded {
            entry: e,
            layer: l,
            limit: lim,
            actual: a,
            max: m,
        } => {
            assert_eq!((e.as_str(), lim, a, m), (entry, limit, actual, max), "{msg}");
            assert_eq!(l, layer.display().to_string());
        }
        other => panic!("expected {limit:?} over for {entry}, got {other:?}"),
    }
    assert!(msg.contains(limit.config_key()), "{msg}");
    assert!(msg.contains(&layer.display().to_string()), "{msg}");
}

#[test]
fn root_old_gnu_sparse_terabyte_claim_takes_no_disk() {
    if !require_root("root_old_gnu_sparse_terabyte_claim_takes_no_disk") {
        return;
    }
    let sparse = terabyte();
    let mut tar = RawTar::default();
    sparse.old_gnu(&mut tar);
    let layer = common::gzip(&tar.finish());
    assert!(layer.len() < 3000, "a {} byte layer", layer.len());

    // Over the default entry size limit: refused, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let err = apply_layer(layer.as_slice(), "", dir.path(), &[], ExtractLimits::default()).unwrap_err();
    let max = ExtractLimits::DEFAULT_MAX_ENTRY_SIZE;
    expect_limit(err, "var/log/huge", Limit::EntrySize, TIB, max, dir.path());
    assert!(!dir.path().join("var/log/huge").exists());

    // Allowed: extracted as a sparse file.
    let dir = tempfile::tempdir().unwrap();
    let stats = apply_layer(layer.as_slice(), "", dir.path(), &[], no_entry_limit()).unwrap();
    sparse.check(&dir.path().join("var/log/huge"));
    assert_eq!(stats.bytes, 8, "only the data counts as written");
}

#[test]
fn root_pax_sparse_terabyte_claim_takes_no_disk() {
    if !require_root("root_pax_sparse_terabyte_claim_takes_no_disk") {
        return;
    }
    let sparse = terabyte();
    for (format, write) in [("1.0", Sparse::pax_1_0 as Format), ("0.1", Sparse::pax_0_1)] {
        let mut tar = RawTar::default();
        write(&sparse, &mut tar);
        let layer = tar.finish();
        let dir = tempfile::tempdir().unwrap();
        let err = apply_layer(layer.as_slice(), TAR, dir.path(), &[], ExtractLimits::default()).unwrap_err();
        let max = ExtractLimits::DEFAULT_MAX_ENTRY_SIZE;
        expect_limit(err, "var/log/huge", Limit::EntrySize, TIB, max, dir.path());

        let dir = tempfile::tempdir().unwrap();
        let stats = apply_layer(layer.as_slice(), TAR, dir.path(), &[], no_entry_limit()).unwrap();
        sparse.check(&dir.path().join("var/log/huge"));
        assert_eq!(stats.bytes, 8, "PAX {format}");
        // The format's placeholder name is not extracted.
        assert!(!dir.path().join("GNUSparseFile.1").exists(), "PAX {format}");
    }
}

#[test]
fn root_sparse_files_round_trip_with_holes() {
    if !require_root("root_sparse_files_round_trip_with_holes") {
        return;
    }
    // Data, hole, data, hole, data, trailing hole (marked by an empty
    // segment, as GNU tar does); and a file with enough segments for three
    // old GNU extension blocks (and no end mark).
    let small = Sparse {
        name: "data/db",
        size: 24 * MIB,
        segments: vec![
            (0, vec![b'A'; 5120]),
            (8 * MIB, vec![b'B'; 3000]),
            (16 * MIB + 1, vec![b'C'; 100]),
            (24 * MIB, vec![]),
        ],
    };
    let many = Sparse {
        name: "data/many",
        size: 64 * MIB,
        segments: (0..50u8)
            .map(|i| (u64::from(i) * MIB, vec![b'a' + i % 26; 700]))
            .collect(),
    };
    let formats: [(&str, Format); 3] = [
        ("old GNU", Sparse::old_gnu),
        ("PAX 0.1", Sparse::pax_0_1),
        ("PAX 1.0", Sparse::pax_1_0),
    ];
    for (format, write) in formats {
        let mut tar = RawTar::default();
        tar.entry(header(EntryType::Directory, "data", 0o755, 0), b"");
        write(&small, &mut tar);
        write(&many, &mut tar);
        tar.entry(header(EntryType::Regular, "data/after", 0o644, 0), b"still in sync");
        let dir = tempfile::tempdir().unwrap();
        let stats = apply_layer(tar.finish().as_slice(), TAR, dir.path(), &[], ExtractLimits::default())
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        small.check(&dir.path().join("data/db"));
        many.check(&dir.path().join("data/many"));

        // Byte for byte what the map describes.
        let mut expected = vec![0u8; small.size as usize];
        for (offset, data) in &small.segments {
            expected[*offset as usize..][..data.len()].copy_from_slice(data);
        }
        assert!(
            fs::read(dir.path().join("data/db")).unwrap() == expected,
            "{format}: content"
        );
        assert_eq!(
            fs::read(dir.path().join("data/after")).unwrap(),
            b"still in sync",
            "{format}"
        );
        assert_eq!(stats.bytes, small.stored() + many.stored() + 13, "{format}");
        assert_eq!(stats.files, 3, "{format}");
    }
}

#[test]
fn root_malformed_sparse_maps_are_refused() {
    if !require_root("root_malformed_sparse_maps_are_refused") {
        return;
    }
    let seg = |offset: u64, len: usize| (offset, vec![b'x'; len]);
    let cases = [
        ("overlapping", 100, vec![seg(0, 10), seg(5, 10)], "overlaps"),
        ("out of order", 100, vec![seg(50, 10), seg(0, 10)], "out of order"),
        (
            "beyond the size",
            100,
            vec![seg(0, 10), seg(95, 10)],
            "beyond the file size",
        ),
    ];
    for (what, size, segments, why) in cases {
        let sparse = Sparse {
            name: "bad",
            size,
            segments,
        };
        let formats: [Format; 3] = [Sparse::old_gnu, Sparse::pax_0_1, Sparse::pax_1_0];
        for write in formats {
            let mut tar = RawTar::default();
            write(&sparse, &mut tar);
            expect_refused(&tar.finish(), "bad", why, what);
        }
    }

    // An old GNU map of endless extension blocks (the tar crate would
    // read them all into memory).
    let mut h = header(EntryType::GNUSparse, "endless", 0o644, 0);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(TIB);
    gnu.set_is_extended(true);
    h.set_cksum();
    let mut tar = RawTar::default();
    tar.block(h.as_bytes());
    let mut ext = GnuExtSparseHeader::new();
    ext.set_is_extended(true);
    for _ in 0..3000 {
        tar.block(ext.as_bytes());
    }
    expect_refused(&tar.finish(), "endless", "longer than 1048576 bytes", "endless map");

    // Counts that announce more segments than there are.
    let mut tar = RawTar::default();
    tar.pax(&[
        ("GNU.sparse.major", "0"),
        ("GNU.sparse.minor", "1"),
        ("GNU.sparse.name", "lying"),
        ("GNU.sparse.size", "100"),
        ("GNU.sparse.numblocks", "1000000000000"),
        ("GNU.sparse.map", "0,1"),
    ]);
    tar.entry(header(EntryType::Regular, "x", 0o644, 0), b"x");
    expect_refused(&tar.finish(), "lying", "announces 1000000000000", "PAX 0.1 count");
    let mut tar = RawTar::default();
    tar.pax(&[
        ("GNU.sparse.major", "1"),
        ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", "lying"),
        ("GNU.sparse.realsize", "100"),
    ]);
    tar.entry(header(EntryType::Regular, "x", 0o644, 0), b"1000000000\n0\n1\n");
    expect_refused(&tar.finish(), "lying", "runs past its data", "PAX 1.0 count");

    // Data that does not match the map.
    let mut h = header(EntryType::GNUSparse, "short", 0o644, 0);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(100);
    gnu.sparse[0].set_offset(0);
    gnu.sparse[0].set_length(10);
    let mut tar = RawTar::default();
    tar.entry(h, b"0123456789 and more");
    expect_refused(&tar.finish(), "short", "archive holds 19", "data mismatch");
}

/// Applies `layer` and expects `entry` refused as unsafe for `why`, with
/// nothing written for it.
fn expect_refused(layer: &[u8], entry: &str, why: &str, case: &str) {
    let dir = tempfile::tempdir().unwrap();
    let err = apply_layer(layer, TAR, dir.path(), &[], no_entry_limit()).unwrap_err();
    let msg = err.to_string();
    match &err {
        Error::UnsafeEntry {
            entry: e,
            layer,
            reason,
        } => {
            assert_eq!(e, entry, "{case}: {msg}");
            assert_eq!(layer, &dir.path().display().to_string(), "{case}");
            assert!(reason.contains(why), "{case}: {msg}");
        }
        other => panic!("{case}: expected UnsafeEntry, got {other:?}"),
    }
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "{case}: something was written"
    );
}

#[test]
fn root_oversized_metadata_is_refused() {
    if !require_root("root_oversized_metadata_is_refused") {
        return;
    }
    let huge = "x".repeat(2 * MIB as usize);
    let mut tar = RawTar::default();
    tar.pax(&[("comment", &huge)]);
    tar.entry(header(EntryType::Regular, "f", 0o644, 0), b"f");
    let dir = tempfile::tempdir().unwrap();
    let err = apply_layer(tar.finish().as_slice(), TAR, dir.path(), &[], ExtractLimits::default()).unwrap_err();
    assert!(matches!(err, Error::UnsafeEntry { .. }), "{err:?}");
    assert!(err.to_string().contains("more than the 1048576 allowed"), "{err}");
}

/// A layer of `depth` nested directories `name/name/...`, with GNU long
/// names.
fn nested_dirs(depth: usize, name: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut path = String::new();
    for _ in 0..depth {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(name);
        let mut h = header(EntryType::Directory, "d", 0o755, 0);
        b.append_data(&mut h, &path, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

/// How deep the chain of `name` directories under `root` goes, walked
/// relative to each directory (the paths can be longer than `PATH_MAX`).
fn depth_of(root: &Path, name: &str) -> usize {
    let mut fd = rustix::fs::open(root, rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty()).unwrap();
    let mut depth = 0;
    while let Ok(next) = rustix::fs::openat(&fd, name, rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty()) {
        fd = next;
        depth += 1;
    }
    depth
}

#[test]
fn root_ten_thousand_nested_directories_are_refused_by_depth() {
    if !require_root("root_ten_thousand_nested_directories_are_refused_by_depth") {
        return;
    }
    // The layer (309 KB gzipped): it took 15 minutes and 2.75 GB,
    // then failed with "File name too long".
    let layer = nested_dirs(10_000, "d");
    let dir = tempfile::tempdir().unwrap();
    let err = apply_layer(layer.as_slice(), TAR, dir.path(), &[], ExtractLimits::default()).unwrap_err();
    let max = ExtractLimits::DEFAULT_MAX_DEPTH;
    let entry = vec!["d"; max + 1].join("/");
    let msg = err.to_string();
    assert!(!msg.contains("File name too long"), "{msg}");
    assert!(msg.contains("/d/d/d\""), "the message shows the entry's end: {msg}");
    assert!(msg.len() < 1000, "the 513-byte name is shortened: {msg}");
    expect_limit(err, &entry, Limit::Depth, max as u64 + 1, max as u64, dir.path());
    assert_eq!(
        depth_of(dir.path(), "d"),
        max,
        "the directories within the limit were extracted"
    );
}

#[test]
fn root_deep_trees_within_a_raised_limit_are_extracted() {
    if !require_root("root_deep_trees_within_a_raised_limit_are_extracted") {
        return;
    }
    // 5000-byte paths: beyond PATH_MAX, so everything is relative to open
    // directories, including the metadata set at the end.
    let (depth, name) = (500, "directory");
    let lower = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let limits = ExtractLimits {
        max_depth: depth,
        ..ExtractLimits::default()
    };
    let lowers = [lower.path().to_path_buf()];
    let stats = apply_layer(nested_dirs(depth, name).as_slice(), TAR, dir.path(), &lowers, limits).unwrap();
    assert_eq!(stats.dirs, depth as u64);
    assert_eq!(depth_of(dir.path(), name), depth);
    let second = dir.path().join(name).join(name);
    assert_eq!(fs::metadata(second).unwrap().mtime() as u64, MTIME);

    // Files deep down whose parents come from no entry: created, with the
    // lowers looked up one level at a time.
    let in_lower = lower.path().join(name).join(name);
    fs::create_dir_all(&in_lower).unwrap();
    fs::set_permissions(&in_lower, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let deep = vec![name; depth - 1].join("/");
    let mut b = tar::Builder::new(Vec::new());
    for file in ["x", "y"] {
        let mut h = header(EntryType::Regular, "f", 0o644, 1);
        b.append_data(&mut h, format!("{deep}/{file}"), &b"f"[..]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let stats = apply_layer(b.into_inner().unwrap().as_slice(), TAR, dir.path(), &lowers, limits).unwrap();
    assert_eq!((stats.files, stats.implicit_dirs), (2, depth as u64 - 1));
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&dir.path().join(name).join(name)), 0o711, "from the lower");
    assert_eq!(mode(&dir.path().join(name).join(name).join(name)), 0o755, "the default");
    assert_eq!(depth_of(dir.path(), name), depth - 1);
}

#[test]
fn root_total_bytes_limit_names_the_entry() {
    if !require_root("root_total_bytes_limit_names_the_entry") {
        return;
    }
    let layer = LayerTar::new()
        .file("a", &[1; 100], 0o644)
        .file("b", &[2; 100], 0o644)
        .file("c", &[3; 100], 0o644)
        .finish();
    let limits = |max| ExtractLimits {
        max_total_bytes: Some(max),
        ..ExtractLimits::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = apply_layer(layer.as_slice(), TAR, dir.path(), &[], limits(250)).unwrap_err();
    expect_limit(err, "c", Limit::TotalBytes, 300, 250, dir.path());
    assert_eq!(fs::read(dir.path().join("b")).unwrap(), [2; 100]);
    assert!(!dir.path().join("c").exists(), "nothing written for the refused entry");

    let dir = tempfile::tempdir().unwrap();
    let stats = apply_layer(layer.as_slice(), TAR, dir.path(), &[], limits(300)).unwrap();
    assert_eq!(stats.bytes, 300);
}

#[test]
fn root_entry_size_limit_names_the_entry() {
    if !require_root("root_entry_size_limit_names_the_entry") {
        return;
    }
    let layer = LayerTar::new()
        .file("small", &[0; 999], 0o644)
        .file("big", &[0; 1000], 0o644)
        .finish();
    let limits = ExtractLimits {
        max_entry_size: Some(999),
        ..ExtractLimits::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = apply_layer(layer.as_slice(), TAR, dir.path(), &[], limits).unwrap_err();
    let msg = err.to_string();
    expect_limit(err, "big", Limit::EntrySize, 1000, 999, dir.path());
    assert!(msg.contains("\"big\""), "{msg}");
    assert_eq!(fs::metadata(dir.path().join("small")).unwrap().len(), 999);
    assert!(!dir.path().join("big").exists());
}

#[test]
fn root_device_nodes_and_setuid_files_stay_inside_the_layer() {
    if !require_root("root_device_nodes_and_setuid_files_stay_inside_the_layer") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("layer");
    fs::create_dir(&target).unwrap();
    let host_null = fs::metadata("/dev/null").unwrap();

    let device = |kind, name: &str, mode, (major, minor)| {
        let mut h = header(kind, name, mode, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h
    };
    let mut su = header(EntryType::Regular, "/usr/bin/su", 0o4755, 0);
    su.set_uid(0);
    let mut wall = header(EntryType::Regular, "usr/bin/wall", 0o2755, 0);
    wall.set_gid(5);
    let mut tar = RawTar::default();
    tar.entry(device(EntryType::Char, "/dev/null", 0o666, (1, 3)), b"")
        .entry(device(EntryType::Char, "dev/tty", 0o620, (5, 0)), b"")
        .entry(device(EntryType::Block, "dev/loop7", 0o660, (7, 7)), b"")
        .entry(header(EntryType::Fifo, "run/initctl", 0o600, 0), b"")
        .entry(su, b"#!/bin/false\n")
        .entry(wall, b"#!/bin/false\n")
        .entry(header(EntryType::Directory, "tmp", 0o1777, 0), b"");
    let stats = apply_layer(tar.finish().as_slice(), TAR, &target, &[], ExtractLimits::default()).unwrap();
    assert_eq!(stats.devices, 4);

    let m = |p: &str| fs::symlink_metadata(target.join(p)).unwrap();
    let dev = |major, minor| rustix::fs::makedev(major, minor);
    assert!(m("dev/null").file_type().is_char_device());
    assert_eq!(
        (m("dev/null").rdev(), m("dev/null").mode() & 0o7777),
        (dev(1, 3), 0o666)
    );
    assert_eq!((m("dev/tty").rdev(), m("dev/tty").mode() & 0o7777), (dev(5, 0), 0o620));
    assert!(m("dev/loop7").file_type().is_block_device());
    assert_eq!(
        (m("dev/loop7").rdev(), m("dev/loop7").mode() & 0o7777),
        (dev(7, 7), 0o660)
    );
    assert!(m("run/initctl").file_type().is_fifo());
    assert_eq!((m("usr/bin/su").mode() & 0o7777, m("usr/bin/su").uid()), (0o4755, 0));
    assert_eq!(
        (m("usr/bin/wall").mode() & 0o7777, m("usr/bin/wall").gid()),
        (0o2755, 5)
    );
    assert_eq!(m("tmp").mode() & 0o7777, 0o1777);

    // Nothing beside the layer directory, and the host's /dev/null is the
    // same node.
    let beside: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["layer"]);
    let now = fs::metadata("/dev/null").unwrap();
    assert_eq!(
        (now.ino(), now.rdev(), now.mode()),
        (host_null.ino(), host_null.rdev(), host_null.mode())
    );
}

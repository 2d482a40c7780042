//! Helpers shared by the integration tests: layer tarballs built entry by
//! entry (with raw names, so that malicious ones can be written), and the
//! root-test guard.
#![allow(dead_code)]

use std::io::Write;

use tar::{EntryType, Header};

/// Builds a layer tarball entry by entry.
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
}

pub const MTIME: u64 = 1_600_000_000;

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerTar {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends an entry with a raw (unvalidated) name and link name.
    pub fn raw(
        &mut self,
        kind: EntryType,
        name: &str,
        link: Option<&str>,
        data: &[u8],
        mode: u32,
        owner: (u64, u64),
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            assert!(name.len() < 100);
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                assert!(l.len() < 100);
                gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(MTIME);
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.raw(EntryType::Regular, name, None, data, mode, (0, 0))
    }

    pub fn file_owned(&mut self, name: &str, data: &[u8], mode: u32, owner: (u64, u64)) -> &mut Self {
        self.raw(EntryType::Regular, name, None, data, mode, owner)
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(EntryType::Directory, name, None, b"", mode, (0, 0))
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Symlink, name, Some(target), b"", 0o777, (0, 0))
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Link, name, Some(target), b"", 0o644, (0, 0))
    }

    /// PAX records for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Whether root tests should run: true as root; false (with a note) when
/// `KILN_SKIP_ROOT_TESTS=1`; otherwise the test fails loudly.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("KILN_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("{test}: skipped (not root and KILN_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!("{test} needs root: run the tests as root, or set KILN_SKIP_ROOT_TESTS=1 to skip it");
}

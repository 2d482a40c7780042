//! The reverse of [`super::apply_layer`]: an overlayfs upper directory
//! turned back into an OCI layer tarball, overlayfs whiteouts (0:0
//! character devices) becoming `.wh.NAME` entries and opaque directories a
//! `.wh..wh..opq` entry.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_store::Digest;
use kiln_store::merged::is_whiteout;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::Compression;
use super::extract::OPAQUE_XATTR;
use crate::error::{Error, Result};

/// What [`diff_to_layer`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffStats {
    /// sha256 of the uncompressed tar (the layer's diff id).
    pub diff_id: Digest,
    /// sha256 of the bytes written to the output (the layer blob digest).
    pub digest: Digest,
    /// Bytes written to the output.
    pub size: u64,
    /// Tar entries written (whiteout markers included).
    pub entries: u64,
    /// `.wh.` entries written (opaque markers included).
    pub whiteouts: u64,
}

/// Hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(c: Compression, w: W) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::Plain(w),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(w, flate2::Compression::default())),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

struct Differ<'a, W: Write> {
    upper: &'a Path,
    builder: tar::Builder<W>,
    /// First path of each multiply-linked inode, for hardlink entries.
    links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
    whiteouts: u64,
}

/// Writes the overlayfs upper directory `upper` as an OCI layer tarball to
/// `out`, compressed with `compression`. Entries are sorted by name, so the
/// same tree gives the same bytes. Owners are numeric, times are whole
/// seconds, hardlinks within the layer become link entries, and xattrs
/// other than `trusted.*` and `security.selinux` are kept as PAX
/// `SCHILY.xattr.*` records. Upper directories written with overlayfs'
/// `redirect_dir` or `metacopy` features are refused (mount without them).
pub fn diff_to_layer(upper: &Path, compression: Compression, out: impl Write) -> Result<DiffStats> {
    let layer = upper.display().to_string();
    let io_err = |op: &str| {
        let op = format!("diff layer {layer}: {op}");
        move |e: io::Error| Error::Io {
            op,
            path: upper.to_path_buf(),
            source: e,
        }
    };
    let counted = Hashing {
        inner: out,
        hasher: Sha256::new(),
        len: 0,
    };
    let encoder = Encoder::new(compression, counted).map_err(io_err("start compression"))?;
    let hashed = Hashing {
        inner: encoder,
        hasher: Sha256::new(),
        len: 0,
    };
    let mut builder = tar::Builder::new(hashed);
    builder.mode(tar::HeaderMode::Complete);
    builder.follow_symlinks(false);

    let mut differ = Differ {
        upper,
        builder,
        links: HashMap::new(),
        entries: 0,
        whiteouts: 0,
    };
    differ.walk(upper, Path::new(""))?;
    let (entries, whiteouts) = (differ.entries, differ.whiteouts);

    let hashed = differ.builder.into_inner().map_err(io_err("finish tar"))?;
    let diff_id = Digest::from_bytes(hashed.hasher.finalize().into());
    let mut counted = hashed.inner.finish().map_err(io_err("finish compression"))?;
    counted.flush().map_err(io_err("flush output"))?;
    Ok(DiffStats {
        diff_id,
        digest: Digest::from_bytes(counted.hasher.finalize().into()),
        size: counted.len,
        entries,
        whiteouts,
    })
}

impl<W: Write> Differ<'_, W> {
    fn fail(&self, rel: &Path, op: &str) -> impl FnOnce(io::Error) -> Error {
        let op = format!("diff layer {}: {op} {}", self.upper.display(), rel.display());
        let path = self.upper.join(rel);
        move |source| Error::Io { op, path, source }
    }

    fn unsupported(&self, rel: &Path, reason: &str) -> Error {
        Error::Io {
            op: format!("diff layer {}: entry {}", self.upper.display(), rel.display()),
            path: self.upper.join(rel),
            source: io::Error::other(reason.to_string()),
        }
    }

    /// Writes the children of `dir` (`rel` inside the layer), sorted.
    fn walk(&mut self, dir: &Path, rel: &Path) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(self.fail(rel, "list"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(self.fail(rel, "list"))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let child = rel.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(self.fail(&child, "inspect"))?;
            self.entry(&path, &child, &meta)?;
        }
        Ok(())
    }

    fn header(meta: &Metadata, kind: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(u64::from(meta.uid()));
        h.set_gid(u64::from(meta.gid()));
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        h
    }

    fn xattrs(&mut self, path: &Path, rel: &Path) -> Result<()> {
        let names = match xattr::list(path) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Unsupported => return Ok(()),
            Err(e) => return Err(self.fail(rel, "list xattrs of")(e)),
        };
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for name in names {
            let Some(name) = name.to_str().map(str::to_string) else {
                continue;
            };
            if name == "trusted.overlay.redirect" || name == "trusted.overlay.metacopy" {
                return Err(self.unsupported(
                    rel,
                    &format!("has {name}: mount overlayfs with redirect_dir=off,metacopy=off to diff it"),
                ));
            }
            if name.starts_with("trusted.") || name == "security.selinux" {
                continue;
            }
            if let Some(value) = xattr::get(path, &name).map_err(self.fail(rel, "read xattr of"))? {
                records.push((format!("SCHILY.xattr.{name}"), value));
            }
        }
        if !records.is_empty() {
            records.sort();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(self.fail(rel, "write xattrs of"))?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &Path, meta: &Metadata) -> Result<()> {
        let ft = meta.file_type();
        if is_whiteout(meta) {
            let name = rel.file_name().expect("a child has a name").as_bytes();
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(name);
            let wh_rel = rel.with_file_name(OsStr::from_bytes(&wh));
            let mut h = Self::header(meta, EntryType::Regular);
            h.set_mode(0o644);
            self.builder
                .append_data(&mut h, &wh_rel, io::empty())
                .map_err(self.fail(rel, "write whiteout for"))?;
            self.entries += 1;
            self.whiteouts += 1;
            return Ok(());
        }
        if ft.is_socket() {
            tracing::debug!(entry = %rel.display(), "sockets cannot be stored in a layer; skipped");
            return Ok(());
        }
        if ft.is_dir() {
            self.xattrs(path, rel)?;
            let mut h = Self::header(meta, EntryType::Directory);
            self.builder
                .append_data(&mut h, rel, io::empty())
                .map_err(self.fail(rel, "write directory"))?;
            self.entries += 1;
            if matches!(xattr::get(path, OPAQUE_XATTR), Ok(Some(v)) if v == b"y") {
                let mut h = Self::header(meta, EntryType::Regular);
                h.set_mode(0o644);
                self.builder
                    .append_data(&mut h, rel.join(".wh..wh..opq"), io::empty())
                    .map_err(self.fail(rel, "write opaque marker for"))?;
                self.entries += 1;
                self.whiteouts += 1;
            }
            return self.walk(path, rel);
        }
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut h = Self::header(meta, EntryType::Link);
                self.builder
                    .append_link(&mut h, rel, &first)
                    .map_err(self.fail(rel, "write hardlink"))?;
                self.entries += 1;
                return Ok(());
            }
            self.links.insert(key, rel.to_path_buf());
        }
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(self.fail(rel, "read symlink"))?;
            let mut h = Self::header(meta, EntryType::Symlink);
            self.builder
                .append_link(&mut h, rel, &target)
                .map_err(self.fail(rel, "write symlink"))?;
        } else if ft.is_file() {
            self.xattrs(path, rel)?;
            let file = File::open(path).map_err(self.fail(rel, "open"))?;
            let mut h = Self::header(meta, EntryType::Regular);
            h.set_size(meta.len());
            self.builder
                .append_data(&mut h, rel, file)
                .map_err(self.fail(rel, "write file"))?;
        } else {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else if ft.is_block_device() {
                EntryType::Block
            } else {
                EntryType::Fifo
            };
            let mut h = Self::header(meta, kind);
            if kind != EntryType::Fifo {
                let dev = meta.rdev();
                h.set_device_major(rustix::fs::major(dev))
                    .map_err(self.fail(rel, "encode device"))?;
                h.set_device_minor(rustix::fs::minor(dev))
                    .map_err(self.fail(rel, "encode device"))?;
            }
            self.builder
                .append_data(&mut h, rel, io::empty())
                .map_err(self.fail(rel, "write device"))?;
        }
        self.entries += 1;
        Ok(())
    }
}

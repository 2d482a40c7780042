//! Extraction of one layer tarball into an overlayfs layer directory: OCI
//! whiteouts become overlayfs whiteouts, and no entry can write outside the
//! directory or through a symlink (see [`apply_layer`]); and the reverse,
//! an overlayfs upper directory back into a layer ([`diff_to_layer`]).

mod compression;
mod diff;
mod extract;
mod lower;
mod paths;

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use kiln_store::Digest;
use sha2::{Digest as _, Sha256};

pub use compression::Compression;
pub use diff::{DiffStats, diff_to_layer};
pub use extract::OPAQUE_XATTR;

use crate::error::{Error, Result};

/// What applying a layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// How the blob was compressed.
    pub compression: Option<Compression>,
    /// sha256 of the uncompressed tar stream: compare it with the layer's
    /// diff id from the image config.
    pub diff_id: Option<Digest>,
    /// Tar entries read (extension headers not counted).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directory entries (including merges into existing ones).
    pub dirs: u64,
    /// Parent directories created without an entry of their own.
    pub implicit_dirs: u64,
    /// Symlinks written.
    pub symlinks: u64,
    /// Hardlinks written.
    pub hardlinks: u64,
    /// Character/block devices and fifos written.
    pub devices: u64,
    /// `.wh.NAME` whiteouts applied.
    pub whiteouts: u64,
    /// `.wh..wh..opq` markers applied.
    pub opaque_dirs: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Extended attributes not applied (`trusted.*`, or refused by the
    /// filesystem or for lack of privilege).
    pub xattrs_skipped: u64,
    /// Entries whose owner could not be set (not running as root).
    pub ownership_skipped: u64,
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Extracts one layer tarball from `reader` into the empty directory
/// `target`, which becomes an overlayfs layer ("diff dir") above `lowers`
/// (top-most first).
///
/// - Compression (gzip, zstd, none) is decided by `media_type`, with the
///   stream's magic bytes overriding it when they disagree and deciding when
///   it says nothing.
/// - `.wh.NAME` becomes a 0:0 character device `NAME`, `.wh..wh..opq` the
///   xattr `trusted.overlay.opaque=y` on its directory (both need root).
///   Whiteouts only hide lower layers, never entries of this layer.
/// - Names lose leading `/` and `./`. An entry is refused (nothing written
///   for it, and the extraction stops) if its path has a `..` component, if
///   a parent inside `target` is a symlink or not a directory, or if it is a
///   hardlink whose target is not an earlier entry of this layer. Symlinks
///   are created as they are (absolute targets included) but never
///   followed.
/// - Missing parent directories take mode and owner from the lowers (looked
///   up without following symlinks), else `0755 root:root`.
/// - Owner, mode (setuid/sticky included), mtime and PAX `SCHILY.xattr.*`
///   attributes are applied; `trusted.*` xattrs never are, and others the
///   filesystem refuses are skipped and counted. Without root, ownership is
///   kept as ours and counted in [`ApplyStats::ownership_skipped`].
/// - A later entry for a path replaces an earlier one; a directory over a
///   directory merges.
/// - Nothing is fsynced: callers that need durability sync the filesystem.
pub fn apply_layer(reader: impl Read, media_type: &str, target: &Path, lowers: &[PathBuf]) -> Result<ApplyStats> {
    let layer = target.display().to_string();
    let layer_err = |reason: String| Error::Layer {
        layer: layer.clone(),
        reason,
    };

    let mut buffered = BufReader::with_capacity(128 * 1024, reader);
    let prefix = buffered.fill_buf().map_err(|e| layer_err(format!("read: {e}")))?;
    let compression = Compression::detect(media_type, prefix);
    let decoder = compression
        .decoder(buffered)
        .map_err(|e| layer_err(format!("start {compression:?} decompression: {e}")))?;
    let hashing = HashingReader {
        inner: decoder,
        hasher: Sha256::new(),
    };

    let mut extractor = extract::Extractor::new(target, lowers, layer.clone())?;
    let mut archive = tar::Archive::new(hashing);
    let entries = archive.entries().map_err(|e| layer_err(format!("read tar: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| layer_err(format!("read tar ({compression:?}): {e}")))?;
        extractor.entry(entry)?;
    }
    // Read to the end so that the whole stream is hashed and decompressors
    // check their trailers.
    let mut hashing = archive.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| layer_err(format!("read past the end of the tar: {e}")))?;
    extractor.finish()?;

    let mut stats = std::mem::take(&mut extractor.stats);
    stats.compression = Some(compression);
    stats.diff_id = Some(Digest::from_bytes(hashing.hasher.finalize().into()));
    Ok(stats)
}

//! Extraction of one layer tarball into an overlayfs layer directory: OCI
//! whiteouts become overlayfs whiteouts, no entry can write outside the
//! directory or through a symlink, and a hostile layer cannot exhaust the
//! host (see [`apply_layer`]); and the reverse, an overlayfs upper
//! directory back into a layer ([`diff_to_layer`]).

mod archives;
mod compression;
mod diff;
mod dirs;
mod extract;
mod limits;
mod lower;
mod paths;
mod sparse;
mod stream;

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use kiln_store::Digest;
use sha2::{Digest as _, Sha256};

pub use archives::{ArchiveCompression, archive_reader, tar_archive};
pub use compression::Compression;
pub use diff::{DiffStats, diff_to_layer};
pub use extract::OPAQUE_XATTR;
pub use limits::{ExtractLimits, Limit};

use crate::error::{Error, Result};
use stream::{StreamError, TarStream};

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
    /// Bytes of regular file content written (the data of sparse files,
    /// not their holes).
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
///   kept as ours and counted in [`ApplyStats::ownership_skipped`]. Device
///   nodes and setuid files are created inside `target` like any entry.
/// - A later entry for a path replaces an earlier one; a directory over a
///   directory merges.
/// - Sparse files (old GNU type `S` entries, PAX `GNU.sparse` formats 0.0,
///   0.1 and 1.0) are written as sparse files: their data at its offsets,
///   holes left unwritten, so a claimed terabyte of zeros takes no disk. A
///   sparse map out of order, overlapping, beyond the file's size, not
///   matching the data, or over 1 MiB is refused with the entry named, as
///   are GNU long names and PAX records over 1 MiB.
/// - `limits` bound the file content written in total, each file's size
///   (holes included) and each path's depth; an entry over one is refused
///   before anything is written for it, with [`Error::LimitExceeded`]
///   naming the layer, the entry and the configuration key that raises the
///   limit.
/// - Time and memory are linear in the number of entries (each entry's
///   work is bounded by what its path adds to the previous entry's, within
///   the depth limit), and at most a few dozen directories are kept open.
/// - Nothing is fsynced: callers that need durability sync the filesystem.
pub fn apply_layer(
    reader: impl Read,
    media_type: &str,
    target: &Path,
    lowers: &[PathBuf],
    limits: ExtractLimits,
) -> Result<ApplyStats> {
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

    let mut extractor = extract::Extractor::new(target, lowers, layer.clone(), limits)?;
    let mut tar = TarStream::new(hashing);
    loop {
        let entry = tar.next().map_err(|e| match e {
            StreamError::Stream(reason) => layer_err(format!("read tar ({compression:?}): {reason}")),
            StreamError::Entry { entry, reason } => Error::UnsafeEntry {
                entry,
                layer: layer.clone(),
                reason,
            },
        })?;
        let Some(entry) = entry else { break };
        extractor.entry(entry)?;
    }
    // Read to the end so that the whole stream is hashed and decompressors
    // check their trailers.
    let mut hashing = tar.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| layer_err(format!("read past the end of the tar: {e}")))?;
    let mut stats = extractor.finish()?;
    stats.compression = Some(compression);
    stats.diff_id = Some(Digest::from_bytes(hashing.hasher.finalize().into()));
    Ok(stats)
}

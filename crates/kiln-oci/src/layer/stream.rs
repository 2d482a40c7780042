//! Reading a layer tarball entry by entry, with the metadata of each entry
//! (GNU long names, PAX records, sparse maps) bounded in size and the data
//! of sparse files handed over as stored, never expanded.
//!
//! The `tar` crate parses headers here, but not archives: its reader reads
//! whole metadata entries into memory whatever their size, and expands the
//! holes of sparse files into zeros (a 3 KB layer can claim a terabyte).

use std::io::{self, Read};

use tar::{EntryType, GnuExtSparseHeader, GnuHeader, Header};

use super::sparse::{self, MAX_MAP_BYTES, Pax1Map, SparseMap};

const BLOCK: u64 = 512;

/// Most bytes a GNU long name or link, or the PAX records of an entry, may
/// take (as Go's `archive/tar`).
const MAX_METADATA: u64 = 1 << 20;

/// Why the next entry could not be read.
#[derive(Debug)]
pub(super) enum StreamError {
    /// The stream is unreadable or is not a tar.
    Stream(String),
    /// The entry named is malformed.
    Entry { entry: String, reason: String },
}

/// A reader that counts what it reads.
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The entries of a tar stream.
pub(super) struct TarStream<R> {
    src: Counted<R>,
    /// Where the next header starts.
    next: u64,
    done: bool,
}

/// One entry: its header, its full names, its PAX records and its data.
pub(super) struct Entry<'a, R> {
    pub header: Header,
    pub kind: EntryType,
    /// The name, from a GNU long name, a PAX `path` (or `GNU.sparse.name`)
    /// record, or the header.
    pub path: Vec<u8>,
    /// The link target, from a GNU long link, a PAX `linkpath` record, or
    /// the header.
    pub link: Option<Vec<u8>>,
    /// PAX records (keys that are not UTF-8 dropped).
    pub pax: Vec<(String, Vec<u8>)>,
    /// Where the data goes, for a sparse file.
    pub sparse: Option<SparseMap>,
    /// The data as stored: for a sparse file, its segments one after
    /// another.
    pub data: Data<'a, R>,
}

/// The data of an entry. Reading past the end of the stream before the
/// end of the data is an error, not a short read.
pub(super) struct Data<'a, R> {
    src: &'a mut Counted<R>,
    remaining: u64,
}

impl<R> Data<'_, R> {
    /// Bytes not read yet.
    pub(super) fn len(&self) -> u64 {
        self.remaining
    }
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.src.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar stream ends inside an entry's data",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Metadata entries seen before the entry they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

fn entry_err(header: &Header, path: Option<&[u8]>, reason: String) -> StreamError {
    StreamError::Entry {
        entry: String::from_utf8_lossy(path.unwrap_or(&header.path_bytes())).into_owned(),
        reason,
    }
}

fn stream_err(what: &str) -> impl FnOnce(io::Error) -> StreamError + '_ {
    move |e| StreamError::Stream(format!("{what}: {e}"))
}

/// A GNU long name or link without its terminating NUL.
fn strip_nul(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&0) {
        v.pop();
    }
    v
}

impl<R: Read> TarStream<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            src: Counted { inner, pos: 0 },
            next: 0,
            done: false,
        }
    }

    /// The underlying reader, positioned after the end-of-archive block (or
    /// wherever reading stopped).
    pub(super) fn into_inner(self) -> R {
        self.src.inner
    }

    /// Where data of `size` bytes starting here ends, padding included.
    fn end_of(&self, size: u64) -> Result<u64, String> {
        size.checked_next_multiple_of(BLOCK)
            .and_then(|padded| self.src.pos.checked_add(padded))
            .ok_or_else(|| format!("entry size {size} overflows"))
    }

    /// Reads one block; `None` at the end of the stream.
    fn block(&mut self) -> Result<Option<Header>, StreamError> {
        let mut header = Header::new_old();
        let buf = header.as_mut_bytes();
        let mut got = 0;
        while got < buf.len() {
            match self.src.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(StreamError::Stream("the tar stream ends inside a header".into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StreamError::Stream(format!("read a header: {e}"))),
            }
        }
        Ok(Some(header))
    }

    /// Reads the data of a metadata entry into memory.
    fn metadata(&mut self, header: &Header, size: u64) -> Result<Vec<u8>, StreamError> {
        if size > MAX_METADATA {
            return Err(entry_err(
                header,
                None,
                format!(
                    "its {:?} metadata is {size} bytes long, more than the {MAX_METADATA} allowed",
                    header.entry_type()
                ),
            ));
        }
        let mut v = Vec::with_capacity(size as usize);
        Data {
            src: &mut self.src,
            remaining: size,
        }
        .read_to_end(&mut v)
        .map_err(stream_err("read metadata entry"))?;
        Ok(v)
    }

    /// The next entry, after any metadata entries for it; `None` at the end
    /// of the archive (a zero block, or the end of the stream).
    pub(super) fn next(&mut self) -> Result<Option<Entry<'_, R>>, StreamError> {
        if self.done {
            return Ok(None);
        }
        let mut pending = Pending::default();
        let (header, size) = loop {
            let skip = self.next - self.src.pos;
            let skipped = io::copy(&mut (&mut self.src).take(skip), &mut io::sink())
                .map_err(stream_err("skip to the next header"))?;
            if skipped != skip {
                return Err(StreamError::Stream("the tar stream ends inside an entry's data".into()));
            }
            let header = match self.block()? {
                Some(h) if h.as_bytes().iter().any(|b| *b != 0) => h,
                _ => {
                    self.done = true;
                    if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
                        return Err(StreamError::Stream(
                            "the archive ends after metadata for an entry that is not there".into(),
                        ));
                    }
                    return Ok(None);
                }
            };
            let computed = header.as_bytes()[..148]
                .iter()
                .chain(&header.as_bytes()[156..])
                .map(|b| u32::from(*b))
                .sum::<u32>()
                + 8 * u32::from(b' ');
            if header.cksum().ok() != Some(computed) {
                return Err(StreamError::Stream(format!(
                    "header checksum mismatch at offset {}",
                    self.src.pos - BLOCK
                )));
            }
            let size = header
                .entry_size()
                .map_err(|e| entry_err(&header, None, format!("unreadable size in its header: {e}")))?;
            let slot = match header.entry_type() {
                EntryType::GNULongName => &mut pending.long_name,
                EntryType::GNULongLink => &mut pending.long_link,
                EntryType::XHeader => &mut pending.pax,
                EntryType::XGlobalHeader => {
                    // Global records are not applied (nor were they by
                    // the tools that build layers): skipped unread, with
                    // the metadata before them, which described them (as
                    // for Go's archive/tar and the tar crate).
                    pending = Pending::default();
                    self.next = self.end_of(size).map_err(StreamError::Stream)?;
                    continue;
                }
                _ => break (header, size),
            };
            if slot.is_some() {
                return Err(StreamError::Stream(format!(
                    "two {:?} entries for one entry",
                    header.entry_type()
                )));
            }
            self.next = self.end_of(size).map_err(StreamError::Stream)?;
            *slot = Some(self.metadata(&header, size)?);
        };
        self.entry(header, size, pending)
    }

    /// Builds the entry whose header was just read.
    fn entry(&mut self, header: Header, mut size: u64, pending: Pending) -> Result<Option<Entry<'_, R>>, StreamError> {
        let long_name = pending.long_name.map(strip_nul);
        let mut pax_path = None;
        let mut link = pending.long_link.map(strip_nul);
        let mut pax = Vec::new();
        for record in tar::PaxExtensions::new(pending.pax.as_deref().unwrap_or_default()) {
            let record =
                record.map_err(|e| entry_err(&header, long_name.as_deref(), format!("unreadable PAX record: {e}")))?;
            let Ok(key) = record.key() else { continue };
            let value = record.value_bytes();
            match key {
                "path" => pax_path = Some(value.to_vec()),
                "linkpath" if link.is_none() => link = Some(value.to_vec()),
                "size" => {
                    size = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| entry_err(&header, long_name.as_deref(), "unreadable PAX size record".into()))?;
                }
                _ => {}
            }
            pax.push((key.to_string(), value.to_vec()));
        }
        // As the tar crate: a GNU long name wins over a PAX path; the real
        // name of a PAX sparse file wins over both.
        let mut path = long_name
            .or(pax_path)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let pax_sparse = pax_sparse_format(&pax).map_err(|r| entry_err(&header, Some(&path), r))?;
        if pax_sparse.is_some()
            && let Some((_, name)) = pax.iter().find(|(k, _)| k == "GNU.sparse.name")
        {
            path = name.clone();
        }
        let sparse = self
            .sparse_map(&header, pax_sparse, &pax, &mut size)
            .map_err(|reason| entry_err(&header, Some(&path), reason))?;
        Ok(Some(Entry {
            link: link.or_else(|| header.link_name_bytes().map(|l| l.into_owned())),
            kind: header.entry_type(),
            header,
            path,
            pax,
            sparse,
            data: Data {
                src: &mut self.src,
                remaining: size,
            },
        }))
    }

    /// Reads the sparse map of an entry, if it is sparse (old GNU, or in
    /// the PAX `format`), and sets where the next header is. `size` is the
    /// data stored, on return without the map of a PAX 1.0 entry.
    fn sparse_map(
        &mut self,
        header: &Header,
        format: Option<PaxSparse>,
        pax: &[(String, Vec<u8>)],
        size: &mut u64,
    ) -> Result<Option<SparseMap>, String> {
        if header.entry_type() == EntryType::GNUSparse {
            let gnu = header.as_gnu().ok_or("sparse entry without a GNU header")?;
            let segments = self.old_gnu_map(gnu)?;
            // The extension blocks came before the data.
            self.next = self.end_of(*size)?;
            let real = gnu
                .real_size()
                .map_err(|e| format!("unreadable sparse file size: {e}"))?;
            return SparseMap::new(segments, real, *size).map(Some);
        }
        self.next = self.end_of(*size)?;
        let Some(format) = format else {
            return Ok(None);
        };
        let real = pax
            .iter()
            .find(|(k, _)| k == "GNU.sparse.realsize" || k == "GNU.sparse.size")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
            .ok_or("PAX sparse file without a readable GNU.sparse.realsize")?;
        let segments = match format {
            PaxSparse::V0 => sparse::pax_0_segments(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?,
            PaxSparse::V1 => {
                let (segments, used) = self.pax_1_map(*size)?;
                *size -= used;
                segments
            }
        };
        SparseMap::new(segments, real, *size).map(Some)
    }

    /// The map of an old GNU sparse entry: the slots in its header, then
    /// those of the extension blocks that follow it.
    fn old_gnu_map(&mut self, gnu: &GnuHeader) -> Result<Vec<sparse::Segment>, String> {
        let mut segments = Vec::new();
        sparse::old_gnu_segments(&gnu.sparse, &mut segments)?;
        let mut extended = gnu.is_extended();
        let mut read = 0;
        while extended {
            read += BLOCK as usize;
            if read > MAX_MAP_BYTES {
                return Err(format!("sparse map longer than {MAX_MAP_BYTES} bytes"));
            }
            let mut ext = GnuExtSparseHeader::new();
            self.src
                .read_exact(ext.as_mut_bytes())
                .map_err(|e| format!("read sparse map extension: {e}"))?;
            sparse::old_gnu_segments(ext.sparse(), &mut segments)?;
            extended = ext.is_extended();
        }
        Ok(segments)
    }

    /// Reads the map that opens the data of a PAX 1.0 sparse entry of
    /// `size` bytes: the segments and the bytes the map took.
    fn pax_1_map(&mut self, size: u64) -> Result<(Vec<sparse::Segment>, u64), String> {
        let mut map = Pax1Map::default();
        let mut block = [0u8; BLOCK as usize];
        let mut used = 0;
        loop {
            if used + BLOCK > size {
                return Err("its sparse map runs past its data".into());
            }
            self.src
                .read_exact(&mut block)
                .map_err(|e| format!("read its sparse map: {e}"))?;
            used += BLOCK;
            if let Some(segments) = map.push(&block)? {
                return Ok((segments, used));
            }
        }
    }
}

/// The PAX sparse formats.
enum PaxSparse {
    /// 0.0 and 0.1: the map is in the records.
    V0,
    /// 1.0: the map opens the data.
    V1,
}

/// Which PAX sparse format `pax` describes, if any (as Go's `archive/tar`
/// decides; versions 0.0 and 0.1 have no version records).
fn pax_sparse_format(pax: &[(String, Vec<u8>)]) -> Result<Option<PaxSparse>, String> {
    let get = |key: &str| pax.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice());
    match (get("GNU.sparse.major"), get("GNU.sparse.minor")) {
        (Some(b"0"), Some(b"0" | b"1")) => Ok(Some(PaxSparse::V0)),
        (Some(b"1"), Some(b"0")) => Ok(Some(PaxSparse::V1)),
        (None, None) if get("GNU.sparse.map").is_some() || get("GNU.sparse.offset").is_some() => {
            Ok(Some(PaxSparse::V0))
        }
        (None, None) => Ok(None),
        (major, minor) => Err(format!(
            "unknown PAX sparse format {}.{}",
            String::from_utf8_lossy(major.unwrap_or_default()),
            String::from_utf8_lossy(minor.unwrap_or_default())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }

    /// Names and contents of all entries, or the first error.
    fn read_all(tar: &[u8]) -> Result<Vec<(String, Vec<u8>)>, StreamError> {
        let mut stream = TarStream::new(tar);
        let mut out = Vec::new();
        while let Some(mut entry) = stream.next()? {
            let mut data = Vec::new();
            entry
                .data
                .read_to_end(&mut data)
                .map_err(|e| StreamError::Stream(e.to_string()))?;
            out.push((String::from_utf8(entry.path).unwrap(), data));
        }
        Ok(out)
    }

    #[test]
    fn reads_long_names_and_pax_paths_and_skips_global_headers() {
        let long = format!("{}/f", "d".repeat(300));
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", &b"ignored"[..])]).unwrap();
        let mut g = Header::new_ustar();
        g.set_entry_type(EntryType::XGlobalHeader);
        let records = b"21 path=global-name\n";
        g.set_size(records.len() as u64);
        g.set_cksum();
        b.append(&g, &records[..]).unwrap();
        file(&mut b, "short", b"1");
        file(&mut b, &long, b"22");
        b.append_pax_extensions([("path", &b"from/pax"[..]), ("GNU.sparse.name", b"not/sparse")])
            .unwrap();
        file(&mut b, "header-name", b"333");
        let got = read_all(&b.into_inner().unwrap()).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        // The PAX header before the global one described the global one;
        // the real name of a sparse file only counts for sparse files.
        assert_eq!(names, ["short", long.as_str(), "from/pax"]);
        assert_eq!(got[2].1, b"333");
    }

    #[test]
    fn refuses_truncated_and_corrupt_streams() {
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "f", &[7; 2000]);
        let tar = b.into_inner().unwrap();
        for cut in [100, 512 + 1000, 512 + 1536] {
            let err = read_all(&tar[..cut]).unwrap_err();
            assert!(matches!(err, StreamError::Stream(_)), "cut at {cut}: {err:?}");
        }
        let mut bad = tar.clone();
        bad[0] ^= 1;
        let StreamError::Stream(msg) = read_all(&bad).unwrap_err() else {
            panic!("a stream error")
        };
        assert!(msg.contains("checksum mismatch at offset 0"), "{msg}");
        // Metadata with no entry after it.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", &b"x"[..])]).unwrap();
        assert!(read_all(&b.into_inner().unwrap()).is_err());
    }
}

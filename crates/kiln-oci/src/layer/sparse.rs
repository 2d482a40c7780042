//! Sparse files in layer tarballs. The archive holds only the data segments
//! of such a file, one after another, and a map of where they go: in the
//! old GNU format (type `S`) the map is in the header and in extension
//! blocks after it; in the PAX formats it is in `GNU.sparse.*` records
//! (0.0 and 0.1) or opens the entry's data (1.0). Whatever the format, the
//! segments are written at their offsets and the holes are left unwritten,
//! so a file that claims a terabyte of zeros takes no disk.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use tar::GnuSparseHeader;

/// Most bytes a sparse map may take in the archive (extension blocks or
/// text), as for other entry metadata: bounds the memory a map can claim.
pub(super) const MAX_MAP_BYTES: usize = 1 << 20;

/// `len` bytes of data at `offset` in a sparse file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// The data segments of a sparse file, checked: in order, not
/// overlapping, within the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SparseMap {
    segments: Vec<Segment>,
    size: u64,
}

impl SparseMap {
    /// Checks `segments` for a file of `size` bytes whose data in the
    /// archive is `stored` bytes long. The error says what is wrong.
    pub(super) fn new(segments: Vec<Segment>, size: u64, stored: u64) -> Result<Self, String> {
        if i64::try_from(size).is_err() {
            return Err(format!("sparse file size {size} is beyond what a file can hold"));
        }
        let mut end = 0u64;
        let mut total = 0u64;
        for s in &segments {
            let seg_end = s
                .offset
                .checked_add(s.len)
                .ok_or_else(|| format!("sparse segment at {} of {} bytes overflows", s.offset, s.len))?;
            if s.offset < end {
                return Err(format!(
                    "sparse segment at {} overlaps the previous one or is out of order",
                    s.offset
                ));
            }
            if seg_end > size {
                return Err(format!(
                    "sparse segment at {} of {} bytes ends beyond the file size {size}",
                    s.offset, s.len
                ));
            }
            end = seg_end;
            total += s.len;
        }
        if total != stored {
            return Err(format!(
                "sparse map describes {total} bytes of data but the archive holds {stored}"
            ));
        }
        Ok(Self { segments, size })
    }

    /// The file's size, holes included.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Copies `data` (the segments one after another) into `file` at the
    /// segments' offsets, leaving the holes unwritten, and gives the file
    /// its full size.
    pub(super) fn write(&self, data: &mut impl Read, file: &mut File) -> io::Result<()> {
        for s in self.segments.iter().filter(|s| s.len > 0) {
            file.seek(SeekFrom::Start(s.offset))?;
            let n = io::copy(&mut data.take(s.len), file)?;
            if n != s.len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tar stream ends inside the data of a sparse file",
                ));
            }
        }
        file.set_len(self.size)
    }
}

/// Appends the segments of old GNU map slots (in the header or an
/// extension block) to `out`; unused slots are skipped.
pub(super) fn old_gnu_segments<'a>(
    slots: impl IntoIterator<Item = &'a GnuSparseHeader>,
    out: &mut Vec<Segment>,
) -> Result<(), String> {
    for slot in slots.into_iter().filter(|s| !s.is_empty()) {
        let offset = slot.offset().map_err(|e| format!("unreadable sparse map: {e}"))?;
        let len = slot.length().map_err(|e| format!("unreadable sparse map: {e}"))?;
        out.push(Segment { offset, len });
    }
    Ok(())
}

fn number(v: &[u8], what: &str) -> Result<u64, String> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("sparse map {what} {:?} is not a number", String::from_utf8_lossy(v)))
}

/// Pairs up offsets and lengths, checking that there are `count` pairs.
fn pairs(numbers: Vec<u64>, count: Option<u64>) -> Result<Vec<Segment>, String> {
    if !numbers.len().is_multiple_of(2) {
        return Err("sparse map has an offset without a length".into());
    }
    let segments: Vec<Segment> = numbers
        .chunks_exact(2)
        .map(|p| Segment {
            offset: p[0],
            len: p[1],
        })
        .collect();
    match count {
        Some(n) if n != segments.len() as u64 => Err(format!(
            "sparse map announces {n} segments but lists {}",
            segments.len()
        )),
        _ => Ok(segments),
    }
}

/// The map of a PAX 0.0 or 0.1 sparse entry, from its records:
/// `GNU.sparse.map` (`offset,length,...`, 0.1) or repeated
/// `GNU.sparse.offset` and `GNU.sparse.numbytes` (0.0), and
/// `GNU.sparse.numblocks`.
pub(super) fn pax_0_segments<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<Segment>, String> {
    let mut numbers = Vec::new();
    let mut count = None;
    for (key, value) in records {
        match key {
            "GNU.sparse.map" => {
                for n in value.split(|b| *b == b',').filter(|n| !n.is_empty()) {
                    numbers.push(number(n, "entry")?);
                }
            }
            "GNU.sparse.offset" | "GNU.sparse.numbytes" => numbers.push(number(value, "entry")?),
            "GNU.sparse.numblocks" => count = Some(number(value, "count")?),
            _ => {}
        }
    }
    pairs(numbers, count)
}

/// The map that opens the data of a PAX 1.0 sparse entry: decimal numbers,
/// one a line (the count, then offset and length of each segment), padded
/// to a 512-byte block. Fed block by block.
#[derive(Default)]
pub(super) struct Pax1Map {
    text: Vec<u8>,
    lines: usize,
    /// Lines the map has (known once its first line is in).
    needed: Option<usize>,
}

impl Pax1Map {
    /// Adds the next block of the entry's data: the segments once the map
    /// is complete.
    pub(super) fn push(&mut self, block: &[u8]) -> Result<Option<Vec<Segment>>, String> {
        if self.text.len() + block.len() > MAX_MAP_BYTES {
            return Err(format!("sparse map longer than {MAX_MAP_BYTES} bytes"));
        }
        self.text.extend_from_slice(block);
        self.lines += block.iter().filter(|b| **b == b'\n').count();
        if self.needed.is_none() && self.lines > 0 {
            let first = self.text.split(|b| *b == b'\n').next().unwrap_or_default();
            let count = number(first, "count")?;
            // Anything more than the bound allows fails with "longer than"
            // before it is reached.
            let count = usize::try_from(count).unwrap_or(usize::MAX / 2).min(MAX_MAP_BYTES);
            self.needed = Some(1 + 2 * count);
        }
        match self.needed {
            Some(needed) if self.lines >= needed => {
                let numbers = self
                    .text
                    .split(|b| *b == b'\n')
                    .skip(1)
                    .take(needed - 1)
                    .map(|n| number(n, "entry"))
                    .collect::<Result<Vec<u64>, String>>()?;
                pairs(numbers, None).map(Some)
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    #[test]
    fn maps_are_checked() {
        let ok = SparseMap::new(vec![seg(0, 10), seg(100, 5), seg(200, 0)], 200, 15).unwrap();
        assert_eq!(ok.size(), 200);
        for (segments, size, stored, why) in [
            (vec![seg(100, 5), seg(0, 10)], 200, 15, "out of order"),
            (vec![seg(0, 10), seg(5, 10)], 200, 20, "overlaps"),
            (vec![seg(0, 10), seg(195, 10)], 200, 20, "beyond the file size"),
            (vec![seg(0, 10)], 200, 11, "archive holds 11"),
            (vec![seg(u64::MAX, 2)], u64::MAX, 2, "beyond what a file can hold"),
            (vec![seg(u64::MAX - 1, 2)], i64::MAX as u64, 2, "overflows"),
        ] {
            let err = SparseMap::new(segments, size, stored).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn pax_0_maps() {
        let v1 = [("GNU.sparse.numblocks", &b"2"[..]), ("GNU.sparse.map", b"0,5,100,3")];
        assert_eq!(pax_0_segments(v1).unwrap(), [seg(0, 5), seg(100, 3)]);
        let v0 = [
            ("GNU.sparse.numblocks", &b"2"[..]),
            ("GNU.sparse.offset", b"0"),
            ("GNU.sparse.numbytes", b"5"),
            ("GNU.sparse.offset", b"100"),
            ("GNU.sparse.numbytes", b"3"),
        ];
        assert_eq!(pax_0_segments(v0).unwrap(), [seg(0, 5), seg(100, 3)]);
        let lying = [("GNU.sparse.numblocks", &b"1000000"[..]), ("GNU.sparse.map", b"0,5")];
        assert!(pax_0_segments(lying).unwrap_err().contains("announces 1000000"));
        let odd = [("GNU.sparse.map", &b"0,5,7"[..])];
        assert!(pax_0_segments(odd).unwrap_err().contains("without a length"));
        let junk = [("GNU.sparse.map", &b"0,x"[..])];
        assert!(pax_0_segments(junk).unwrap_err().contains("not a number"));
    }

    fn block(text: &str) -> Vec<u8> {
        let mut b = text.as_bytes().to_vec();
        b.resize(b.len().div_ceil(512).max(1) * 512, 0);
        b
    }

    #[test]
    fn pax_1_maps() {
        let mut m = Pax1Map::default();
        assert_eq!(
            m.push(&block("2\n0\n5\n100\n3\n")).unwrap(),
            Some(vec![seg(0, 5), seg(100, 3)])
        );

        // A map over several blocks.
        let mut text = String::from("100\n");
        for i in 0..100 {
            text.push_str(&format!("{}\n1\n", i * 1000));
        }
        let data = block(&text);
        assert!(data.len() > 512);
        let mut m = Pax1Map::default();
        let mut got = None;
        for b in data.chunks(512) {
            assert!(got.is_none(), "complete before its last block");
            got = m.push(b).unwrap();
        }
        assert_eq!(got.unwrap().len(), 100);

        // An absurd count runs into the size bound instead of allocating.
        let mut m = Pax1Map::default();
        let err = (0..)
            .map(|i| m.push(&block(if i == 0 { "99999999999999999999\n" } else { "0\n0\n" })))
            .find_map(Result::err)
            .unwrap();
        assert!(err.contains("not a number") || err.contains("longer than"), "{err}");
        let mut m = Pax1Map::default();
        let err = (0..)
            .map(|i| m.push(&block(if i == 0 { "9999999999\n" } else { "0\n0\n" })))
            .find_map(Result::err)
            .unwrap();
        assert!(err.contains("longer than"), "{err}");
    }

    #[test]
    fn writes_holes_not_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        let size = 1 << 40;
        let map = SparseMap::new(vec![seg(0, 4), seg(size / 2, 3), seg(size, 0)], size, 7).unwrap();
        map.write(&mut &b"headmid"[..], &mut file).unwrap();
        drop(file);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20);
        let mut f = File::open(&path).unwrap();
        let mut buf = [0u8; 4];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"head");
        f.seek(SeekFrom::Start(size / 2 - 1)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"\0mid");

        let mut short = File::create(dir.path().join("g")).unwrap();
        let err = map.write(&mut &b"head"[..], &mut short).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}

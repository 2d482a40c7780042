//! Archives as Docker's `ADD` sees them: a file is a tar archive to
//! extract when its content (not its name) says so, plain or compressed
//! with gzip, zstd, bzip2 or xz; anything else is copied as it is.

use std::io::{self, BufRead, BufReader, Read};

use super::compression::{GZIP_MAGIC, ZSTD_MAGIC};

const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];

/// The most memory an xz stream may ask for (its dictionary): a hostile
/// archive cannot exhaust the host.
const XZ_MEMORY_LIMIT_KIB: u32 = 256 * 1024;

/// How an archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveCompression {
    /// A plain tar.
    None,
    /// gzip (`.tar.gz`, `.tgz`).
    Gzip,
    /// zstd (`.tar.zst`).
    Zstd,
    /// bzip2 (`.tar.bz2`).
    Bzip2,
    /// xz (`.tar.xz`).
    Xz,
}

impl ArchiveCompression {
    fn sniff(prefix: &[u8]) -> Self {
        [
            (GZIP_MAGIC, Self::Gzip),
            (ZSTD_MAGIC, Self::Zstd),
            (BZIP2_MAGIC, Self::Bzip2),
            (XZ_MAGIC, Self::Xz),
        ]
        .into_iter()
        .find(|(magic, _)| prefix.starts_with(magic))
        .map_or(Self::None, |(_, c)| c)
    }
}

/// The tar stream of an archive (decompressed as its first bytes say).
pub fn archive_reader<'a>(reader: impl Read + 'a) -> io::Result<(ArchiveCompression, Box<dyn Read + 'a>)> {
    let mut reader = BufReader::new(reader);
    let compression = ArchiveCompression::sniff(reader.fill_buf()?);
    let decoded: Box<dyn Read + 'a> = match compression {
        ArchiveCompression::None => Box::new(reader),
        ArchiveCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        ArchiveCompression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        ArchiveCompression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(reader)),
        ArchiveCompression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(reader, true, XZ_MEMORY_LIMIT_KIB)),
    };
    Ok((compression, decoded))
}

/// Whether the file read by `reader` is a tar archive (its first header
/// decodes), and how it is compressed.
pub fn tar_archive(reader: impl Read) -> io::Result<Option<ArchiveCompression>> {
    let (compression, decoded) = archive_reader(reader)?;
    let mut header = Vec::with_capacity(512);
    // A stream that does not decompress is no archive: a file to copy.
    if decoded.take(512).read_to_end(&mut header).is_err() {
        return Ok(None);
    }
    Ok(is_tar_header(&header).then_some(compression))
}

/// Whether `block` is a tar header: the `ustar` magic, or (old tars) a
/// checksum that adds up.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 || block.iter().all(|b| *b == 0) {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = String::from_utf8_lossy(&block[148..156]);
    let Ok(expected) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8) else {
        return false;
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == expected
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn tar_of(name: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, &b"abc"[..]).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn archives_are_told_by_content_not_name() {
        let tar = tar_of("a.txt");
        assert_eq!(tar_archive(&tar[..]).unwrap(), Some(ArchiveCompression::None));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        assert_eq!(
            tar_archive(&gz.finish().unwrap()[..]).unwrap(),
            Some(ArchiveCompression::Gzip)
        );
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        assert_eq!(tar_archive(&zst[..]).unwrap(), Some(ArchiveCompression::Zstd));
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&tar).unwrap();
        let bz = bz.finish().unwrap();
        assert_eq!(tar_archive(&bz[..]).unwrap(), Some(ArchiveCompression::Bzip2));
        let mut read_back = Vec::new();
        archive_reader(&bz[..]).unwrap().1.read_to_end(&mut read_back).unwrap();
        assert_eq!(read_back, tar);
        assert_eq!(tar_archive(&b"just some text, not an archive"[..]).unwrap(), None);
        assert_eq!(
            tar_archive(&[0x1f, 0x8b, 0, 1, 2][..]).unwrap(),
            None,
            "a broken gzip stream is a file"
        );
    }
}

//! Layer compression: decided from the media type, with the stream's magic
//! bytes overriding a media type that says otherwise and deciding when the
//! media type does not tell.

use std::io::{BufRead, Read};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// Compressions Docker's `ADD` extracts and kiln does not (yet).
const OTHER_MAGICS: [(&[u8], &str); 2] = [(b"BZh", "bzip2"), (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz")];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`+gzip`, Docker's `.tar.gzip`).
    Gzip,
    /// zstd (`+zstd`).
    Zstd,
}

impl Compression {
    /// What a media type says, if it says anything.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        let mt = media_type.trim().to_ascii_lowercase();
        if mt.ends_with("+gzip") || mt.ends_with(".gzip") || mt.ends_with("tar.gz") || mt == "application/gzip" {
            Some(Compression::Gzip)
        } else if mt.ends_with("+zstd") || mt.ends_with(".zstd") || mt == "application/zstd" {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") || mt.ends_with("+tar") || mt == "application/x-tar" {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// What the first bytes of a stream say, if they are a known magic.
    pub fn sniff(prefix: &[u8]) -> Option<Self> {
        if prefix.starts_with(ZSTD_MAGIC) {
            Some(Compression::Zstd)
        } else if prefix.starts_with(GZIP_MAGIC) {
            Some(Compression::Gzip)
        } else {
            None
        }
    }

    /// Decides for a stream starting with `prefix` labelled `media_type`:
    /// a compression magic wins (mislabelled layers exist), then the media
    /// type, then "uncompressed".
    pub fn detect(media_type: &str, prefix: &[u8]) -> Self {
        let sniffed = Self::sniff(prefix);
        let declared = Self::from_media_type(media_type);
        if let (Some(s), Some(d)) = (sniffed, declared)
            && s != d
        {
            tracing::warn!(media_type, detected = ?s, "layer media type disagrees with its content; using the content");
        }
        sniffed.or(declared).unwrap_or(Compression::None)
    }

    /// Wraps `reader` (positioned at the start of the blob) in a decoder.
    pub fn decoder<'a, R: BufRead + 'a>(self, reader: R) -> std::io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_and_magic() {
        use Compression::*;
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some(Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar"),
            Some(None)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar"),
            Some(None)
        );
        assert_eq!(Compression::from_media_type("application/octet-stream"), Option::None);

        assert_eq!(
            Compression::detect("application/octet-stream", &[0x1f, 0x8b, 8, 0]),
            Gzip
        );
        assert_eq!(Compression::detect("", &[0x28, 0xb5, 0x2f, 0xfd, 0]), Zstd);
        assert_eq!(Compression::detect("", b"etc/passwd\0"), None);
        // A mislabelled layer: the content decides.
        assert_eq!(
            Compression::detect("application/vnd.oci.image.layer.v1.tar", &[0x1f, 0x8b, 8]),
            Gzip
        );
        assert_eq!(
            Compression::detect("application/vnd.oci.image.layer.v1.tar+gzip", b"plain"),
            Gzip
        );
    }
}

/// What a file is to Docker's `ADD`, by its content: a tar archive
/// (plain, gzip or zstd) to extract, or anything else, to copy as it is.
/// An archive in a compression kiln does not read (bzip2, xz) is an error.
pub fn tar_archive(file: impl Read) -> Result<Option<Compression>, String> {
    let mut reader = std::io::BufReader::new(file);
    let prefix = reader.fill_buf().map_err(|e| e.to_string())?;
    if let Some((_, name)) = OTHER_MAGICS.iter().find(|(magic, _)| prefix.starts_with(magic)) {
        return Err(format!(
            "{name}-compressed archives are not extracted by kiln yet: use gzip or zstd"
        ));
    }
    let compression = Compression::sniff(prefix).unwrap_or(Compression::None);
    let mut header = Vec::with_capacity(512);
    let decoder = compression.decoder(reader).map_err(|e| e.to_string())?;
    // A stream that does not decompress is no archive of ours.
    if decoder.take(512).read_to_end(&mut header).is_err() {
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
mod tar_archive_tests {
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
        assert_eq!(tar_archive(&tar[..]), Ok(Some(Compression::None)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        assert_eq!(tar_archive(&gz.finish().unwrap()[..]), Ok(Some(Compression::Gzip)));
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        assert_eq!(tar_archive(&zst[..]), Ok(Some(Compression::Zstd)));
        assert_eq!(tar_archive(&b"just some text, not an archive"[..]), Ok(None));
        assert_eq!(
            tar_archive(&[0x1f, 0x8b, 0, 1, 2][..]),
            Ok(None),
            "a broken gzip stream is a file"
        );
        let err = tar_archive(&b"BZh91AY&SY"[..]).unwrap_err();
        assert!(err.contains("bzip2-compressed archives are not extracted"), "{err}");
    }
}

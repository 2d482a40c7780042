//! Layer compression: decided from the media type, with the stream's magic
//! bytes overriding a media type that says otherwise and deciding when the
//! media type does not tell.

use std::io::{BufRead, Read};

pub(super) const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
pub(super) const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

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

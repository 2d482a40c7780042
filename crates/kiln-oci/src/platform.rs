//! Platforms (`os/architecture[/variant]`) in OCI terms, and the choice of a
//! manifest for one from an image index.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An OCI platform, e.g. `linux/amd64` or `linux/arm64/v8`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture in GOARCH terms, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// Architecture variant, e.g. `v8` for arm64, `v7` for arm.
    pub variant: Option<String>,
}

impl Platform {
    /// Builds a platform, normalising architecture aliases (`x86_64` is
    /// `amd64`, `aarch64` is `arm64`).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, implied) = normalize_arch(architecture);
        Self {
            os: os.to_ascii_lowercase(),
            architecture: architecture.to_string(),
            variant: variant.map(|v| v.to_ascii_lowercase()).or(implied.map(str::to_string)),
        }
    }

    /// The platform of the machine this code runs on.
    pub fn host() -> Self {
        let os = std::env::consts::OS;
        match std::env::consts::ARCH {
            "x86_64" => Self::new(os, "amd64", None),
            "aarch64" => Self::new(os, "arm64", Some("v8")),
            "arm" => Self::new(os, "arm", Some("v7")),
            "x86" => Self::new(os, "386", None),
            "powerpc64" if cfg!(target_endian = "little") => Self::new(os, "ppc64le", None),
            "loongarch64" => Self::new(os, "loong64", None),
            other => Self::new(os, other, None),
        }
    }

    /// Parses `os/arch` or `os/arch/variant`.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidPlatform {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = input.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid("empty component"));
        }
        if parts
            .iter()
            .any(|p| !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(invalid("components may only hold letters, digits, '_' and '-'"));
        }
        match parts.as_slice() {
            [os, arch] => Ok(Self::new(os, arch, None)),
            [os, arch, variant] => Ok(Self::new(os, arch, Some(variant))),
            _ => Err(invalid("expected 2 or 3 '/'-separated components")),
        }
    }

    /// Whether an image for `candidate` runs on this platform. A missing
    /// variant on either side matches any variant; `arm64` without a variant
    /// is `arm64/v8`.
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.match_score(candidate).is_some()
    }

    /// How well `candidate` matches: `None` for no match, higher is better
    /// (an exact variant beats an unspecified one).
    pub(crate) fn match_score(&self, candidate: &Platform) -> Option<u8> {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return None;
        }
        let want = canonical_variant(&self.architecture, self.variant.as_deref());
        let have = canonical_variant(&candidate.architecture, candidate.variant.as_deref());
        match (want, have) {
            (Some(w), Some(h)) if w == h => Some(2),
            (Some(_), Some(_)) => None,
            _ => Some(1),
        }
    }

    /// Picks the best match for this platform among `candidates` (their
    /// index), preferring exact variants and the first among equals.
    pub fn select<'a>(&self, candidates: impl IntoIterator<Item = &'a Platform>) -> Option<usize> {
        let mut best: Option<(u8, usize)> = None;
        for (i, c) in candidates.into_iter().enumerate() {
            if let Some(score) = self.match_score(c)
                && best.is_none_or(|(s, _)| score > s)
            {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Converts from the oci-spec platform of an index entry.
    pub fn from_oci(p: &oci_spec::image::Platform) -> Self {
        Self::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref(),
        )
    }
}

/// Maps architecture aliases to GOARCH names, with the variant they imply.
fn normalize_arch(arch: &str) -> (String, Option<&'static str>) {
    match arch.to_ascii_lowercase().as_str() {
        "x86_64" | "x86-64" | "amd64" => ("amd64".to_string(), None),
        "aarch64" => ("arm64".to_string(), Some("v8")),
        "armhf" => ("arm".to_string(), Some("v7")),
        "armel" => ("arm".to_string(), Some("v6")),
        "i386" | "i686" | "x86" => ("386".to_string(), None),
        other => (other.to_string(), None),
    }
}

/// The variant to compare: arm64 is v8 unless said otherwise; `amd64/v1`
/// is plain amd64.
fn canonical_variant<'a>(arch: &str, variant: Option<&'a str>) -> Option<&'a str> {
    match (arch, variant) {
        ("arm64", None) => Some("v8"),
        ("amd64", Some("v1")) => None,
        (_, v) => v,
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Platform({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            p("linux/amd64"),
            Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None
            }
        );
        assert_eq!(p("linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("linux/aarch64"), p("linux/arm64/v8"));
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/arm/v7").variant.as_deref(), Some("v7"));
        for bad in ["", "linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux/am d64"] {
            let e = Platform::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid platform"), "{e}");
        }
    }

    #[test]
    fn host_is_normalised() {
        let h = Platform::host();
        assert_eq!(h.os, std::env::consts::OS);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.to_string(), "linux/amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(h.to_string(), "linux/arm64/v8");
        }
        assert!(h.matches(&h));
    }

    #[test]
    fn matching_and_selection() {
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").matches(&Platform::new("linux", "arm64", None)));
        assert!(!p("linux/arm/v7").matches(&p("linux/arm/v6")));
        assert!(p("linux/arm/v7").matches(&Platform::new("linux", "arm", None)));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));

        let candidates = [
            Platform::new("unknown", "unknown", None),
            p("linux/arm/v6"),
            Platform::new("linux", "arm", None),
            p("linux/arm/v7"),
            p("linux/amd64"),
        ];
        assert_eq!(p("linux/arm/v7").select(&candidates), Some(3));
        assert_eq!(p("linux/arm/v5").select(&candidates), Some(2));
        assert_eq!(p("linux/amd64").select(&candidates), Some(4));
        assert_eq!(p("linux/s390x").select(&candidates), None);
    }
}

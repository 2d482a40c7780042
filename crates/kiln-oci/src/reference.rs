//! Image references, parsed and normalised the way Docker does:
//! `busybox` is `docker.io/library/busybox:latest`.

use std::fmt;
use std::str::FromStr;

use kiln_store::Digest;
use oci_client::ParseError;

use crate::error::{Error, Result};

/// The registry host Docker Hub images live under.
pub const DOCKER_HUB: &str = "docker.io";

/// A normalised image reference: registry host, repository, and a tag
/// and/or a sha256 digest (a reference always has at least one of them;
/// `latest` is the default tag).
/// (De)serialises as its string form.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses `input` Docker-style: `name`, `name:tag`, `host[:port]/ns/name:tag`,
    /// `name@sha256:<hex>`, `name:tag@sha256:<hex>`.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidReference {
            input: input.to_string(),
            reason,
        };
        if input.trim().is_empty() {
            return Err(invalid(
                "it is empty (expected e.g. busybox or registry:5000/ns/name:tag)".into(),
            ));
        }
        if input != input.trim() {
            return Err(invalid("it has leading or trailing whitespace".into()));
        }
        if let Some((host, _)) = split_host(input) {
            check_port(host).map_err(|reason| invalid(format!("registry {host}: {reason}")))?;
        }
        if let Some(plain) = parse_plain(input) {
            return Ok(plain);
        }
        let parsed = oci_client::Reference::try_from(input).map_err(|e| invalid(explain(input, &e)))?;
        let digest = match parsed.digest() {
            None => None,
            Some(d) => Some(d.parse::<Digest>().map_err(|_| {
                invalid(format!(
                    "digest {d:?} is not supported: only sha256:<64 lowercase hex> digests are"
                ))
            })?),
        };
        Ok(Self {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
            digest,
        })
    }

    /// The registry host (with port, if any), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned manifest digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository and tag/digest on another registry host (a mirror).
    pub fn on_host(&self, host: &str) -> Self {
        Self {
            registry: host.to_string(),
            ..self.clone()
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The reference as `oci-client` wants it, addressed at `host`.
    pub(crate) fn to_client(&self, host: &str) -> oci_client::Reference {
        let repo = self.repository.clone();
        match (&self.tag, &self.digest) {
            (Some(tag), Some(d)) => {
                oci_client::Reference::with_tag_and_digest(host.to_string(), repo, tag.clone(), d.to_string())
            }
            (None, Some(d)) => oci_client::Reference::with_digest(host.to_string(), repo, d.to_string()),
            (tag, None) => oci_client::Reference::with_tag(
                host.to_string(),
                repo,
                tag.clone().unwrap_or_else(|| "latest".to_string()),
            ),
        }
    }
}

/// Parses the common, plainly valid forms without oci-spec's grammar, a
/// Unicode regex whose first use costs tens of milliseconds to compile
/// (most of a cached `kiln query`): `[host[:port]/]path[:tag][@sha256:<hex>]`
/// with ASCII tags and lowercase paths, normalised as oci-spec does.
/// Anything else (and every error) is left to oci-spec.
fn parse_plain(input: &str) -> Option<Reference> {
    let alnum_lower = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let (rest, digest) = match input.split_once('@') {
        Some((rest, d)) => {
            let hex = d.strip_prefix("sha256:")?;
            (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())).then_some(())?;
            (rest, Some(d.parse::<Digest>().ok()?))
        }
        None => (input, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-';
        let first = t.chars().next()?;
        (t.len() <= 128 && (first.is_ascii_alphanumeric() || first == '_') && t.chars().all(ok)).then_some(())?;
    }
    let (registry, path) = split_host(name).unwrap_or((DOCKER_HUB, name));
    if registry != DOCKER_HUB {
        let (hostname, port) = match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        };
        let label = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        (hostname.split('.').all(label) && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())))
            .then_some(())?;
    }
    // Path components: [a-z0-9]+ joined by `.`, `_`, `__` or runs of `-`.
    for component in path.split('/') {
        let mut chars = component.chars().peekable();
        if !chars.peek().copied().is_some_and(alnum_lower) || !component.ends_with(alnum_lower) {
            return None;
        }
        let mut separator = String::new();
        for c in chars {
            if alnum_lower(c) {
                let valid = separator.is_empty()
                    || separator == "."
                    || separator == "_"
                    || separator == "__"
                    || separator.chars().all(|s| s == '-');
                if !valid {
                    return None;
                }
                separator.clear();
            } else {
                separator.push(c);
            }
        }
    }
    let registry = if registry == "index.docker.io" {
        DOCKER_HUB
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    if repository.len() > 255 {
        return None;
    }
    let tag = match (tag, &digest) {
        (None, None) => Some("latest".to_string()),
        (t, _) => t.map(str::to_string),
    };
    Some(Reference {
        registry: registry.to_string(),
        repository,
        tag,
        digest,
    })
}

/// Splits `host/rest` when its first component names a registry host, as
/// Docker decides: it has a `.` or a `:`, or is `localhost`.
fn split_host(name: &str) -> Option<(&str, &str)> {
    name.split_once('/')
        .filter(|(host, _)| host.contains('.') || host.contains(':') || *host == "localhost")
}

/// Checks the port of a registry address (`host:port` or `[v6]:port`, or
/// none): a number from 1 to 65535. The reason names the port.
pub(crate) fn check_port(host: &str) -> std::result::Result<(), String> {
    let port = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').and_then(|(_, after)| after.strip_prefix(':')),
        // More than one `:` is a bare IPv6 address, not a port.
        None if host.matches(':').count() == 1 => host.split_once(':').map(|(_, port)| port),
        None => None,
    };
    match port {
        None => Ok(()),
        Some("") => Err("the port after ':' is empty".into()),
        Some(p) if !p.chars().all(|c| c.is_ascii_digit()) => Err(format!("port {p:?} is not a number")),
        Some(p) if p.parse::<u16>().is_ok_and(|n| n > 0) => Ok(()),
        Some(p) => Err(format!("port {p} is out of range (ports are 1 to 65535)")),
    }
}

/// Turns oci-spec's terse parse errors into an explanation with a hint.
fn explain(input: &str, e: &ParseError) -> String {
    let name_part = input.split('@').next().unwrap_or(input);
    // The repository part is everything after the host; a tag may follow the last ':'
    // that comes after the last '/'.
    let last_slash = name_part.rfind('/').map_or(0, |i| i + 1);
    let repo_end = name_part[last_slash..]
        .find(':')
        .map_or(name_part.len(), |i| last_slash + i);
    let host_end = split_host(name_part).map_or(0, |(h, _)| h.len() + 1);
    let repo = &name_part[host_end.min(repo_end)..repo_end];
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return format!(
            "repository name must be lowercase (did you mean {:?}?)",
            input.replacen(repo, &repo.to_lowercase(), 1)
        );
    }
    match e {
        ParseError::DigestInvalidFormat | ParseError::DigestInvalidLength | ParseError::DigestUnsupported => {
            format!("{e}: expected @sha256:<64 lowercase hex characters>")
        }
        ParseError::TagInvalidFormat => {
            format!("{e}: tags are up to 128 of [A-Za-z0-9_.-], not starting with . or -")
        }
        ParseError::ReferenceInvalidFormat if input.contains('@') => {
            "invalid reference format: expected name[:tag]@sha256:<64 lowercase hex characters>".to_string()
        }
        _ => format!(
            "{e}: expected [host[:port]/]path[:tag][@sha256:<hex>] with a lowercase path of [a-z0-9._-] components"
        ),
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Reference {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<Reference> for String {
    fn from(r: Reference) -> String {
        r.to_string()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_and_normalises_like_docker() {
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("busybox", "docker.io", "library/busybox", Some("latest"), false),
            ("busybox:1.36", "docker.io", "library/busybox", Some("1.36"), false),
            ("library/busybox", "docker.io", "library/busybox", Some("latest"), false),
            (
                "docker.io/library/busybox:latest",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            ("index.docker.io/foo/bar", "docker.io", "foo/bar", Some("latest"), false),
            ("ghcr.io/owner/app:v1", "ghcr.io", "owner/app", Some("v1"), false),
            (
                "127.0.0.1:5000/ns/name:tag",
                "127.0.0.1:5000",
                "ns/name",
                Some("tag"),
                false,
            ),
            ("localhost/img", "localhost", "img", Some("latest"), false),
            ("localhost:5000/a/b/c", "localhost:5000", "a/b/c", Some("latest"), false),
            ("foo/bar", "docker.io", "foo/bar", Some("latest"), false),
        ];
        for (input, registry, repo, tag, _) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), *registry, "{input}");
            assert_eq!(r.repository(), *repo, "{input}");
            assert_eq!(r.tag(), *tag, "{input}");
            assert!(r.digest().is_none());
        }
        assert_eq!(
            Reference::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn parses_digests() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));

        let r = Reference::parse(&format!("127.0.0.1:5000/x/y:1.0@{D}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.tag(), Some("1.0"));
        assert_eq!(r.digest().unwrap().to_string(), D);
        let c = r.to_client("mirror:1");
        assert_eq!(c.resolve_registry(), "mirror:1");
        assert_eq!(c.digest(), Some(D));
    }

    #[test]
    fn rejects_malformed_with_a_clear_reason() {
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("Busybox", "lowercase"),
            ("ghcr.io/Owner/app:v1", "lowercase"),
            ("busybox@sha256:abc", "sha256"),
            ("busybox@md5:2cf24dba5fb0a30e26e83b2ac5b9e29e", "sha256"),
            ("busybox@sha256:", "sha256"),
            (
                "busybox@sha512:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "only sha256",
            ),
            (":tag", "invalid reference format"),
            ("busy box", "invalid reference format"),
            ("busybox:", "invalid reference format"),
            ("a/../b", "invalid reference format"),
            (
                "127.0.0.1:99999/x",
                "registry 127.0.0.1:99999: port 99999 is out of range (ports are 1 to 65535)",
            ),
            ("localhost:0/x:1", "registry localhost:0: port 0 is out of range"),
            ("reg.io:http/x", "registry reg.io:http: port \"http\" is not a number"),
            ("reg.io:/x", "registry reg.io:: the port after ':' is empty"),
        ];
        for (input, needle) in bad {
            let e = Reference::parse(input).expect_err(input);
            let msg = e.to_string();
            assert!(msg.contains(needle), "{input:?}: {msg}");
            assert!(msg.starts_with("invalid image reference"), "{msg}");
        }
        let e = Reference::parse("Busybox").unwrap_err().to_string();
        assert!(e.contains("\"busybox\""), "{e}");
    }

    #[test]
    fn the_plain_fast_path_agrees_with_the_full_grammar() {
        let inputs = [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "docker.io/library/busybox",
            "index.docker.io/busybox",
            "ghcr.io/owner/repo-name/sub_part:v1.2.3-rc_1",
            "127.0.0.1:5000/ns/name:tag",
            "localhost/a.b__c---d:x",
            "registry.internal:5000/a/b/c",
            "my-registry.example.com/team/app",
            "a.b/c",
            "UPPER.io/x",
        ];
        for input in inputs {
            let fast = parse_plain(input).unwrap_or_else(|| panic!("{input} takes the fast path"));
            let full = oci_client::Reference::try_from(input).unwrap();
            assert_eq!(fast.registry(), full.registry(), "{input}");
            assert_eq!(fast.repository(), full.repository(), "{input}");
            assert_eq!(fast.tag(), full.tag(), "{input}");
            let with_digest = format!("{input}@{D}");
            let fast = parse_plain(&with_digest).unwrap();
            let full = oci_client::Reference::try_from(with_digest.as_str()).unwrap();
            assert_eq!(
                fast.digest().map(|d| d.to_string()).as_deref(),
                full.digest(),
                "{with_digest}"
            );
            assert_eq!(fast.tag(), full.tag(), "{with_digest}");
        }
        for unusual in [
            "Busybox",
            "a..b",
            "a/-b",
            "-host.io/x",
            "x:",
            "x@sha256:abc",
            "a___b",
            "a/B",
        ] {
            assert!(parse_plain(unusual).is_none(), "{unusual} is left to the full grammar");
        }
    }

    #[test]
    fn serialises_as_a_string() {
        let r = Reference::parse("busybox").unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"docker.io/library/busybox:latest\"");
        assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), r);
        assert!(serde_json::from_str::<Reference>("\"Bad\"").is_err());
    }

    #[test]
    fn mirrors_keep_repository_and_pin() {
        let r = Reference::parse("busybox:1").unwrap();
        let m = r.on_host("127.0.0.1:5000");
        assert_eq!(m.to_string(), "127.0.0.1:5000/library/busybox:1");
        let d: Digest = D.parse().unwrap();
        assert_eq!(r.with_digest(d).digest(), Some(&d));
    }
}

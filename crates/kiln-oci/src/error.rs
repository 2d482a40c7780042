//! Typed errors of the crate. Each message says which operation failed, on
//! which input, and (where there is one) what to do about it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use kiln_store::BlobError;

use crate::layer::Limit;
use kiln_store::format_duration;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A string that is not a valid image reference.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    /// A string that is not a valid platform.
    #[error("invalid platform {input:?}: {reason} (expected os/arch[/variant], e.g. linux/arm64/v8)")]
    InvalidPlatform { input: String, reason: String },

    /// Pulling from a registry failed. `earlier` lists the failures of
    /// mirrors that were tried before `host`.
    #[error("pull {reference} from {host}: {failure}{}", earlier_suffix(.earlier))]
    Pull {
        reference: String,
        host: String,
        failure: Box<Failure>,
        earlier: Vec<String>,
    },

    /// Pushing an image to a registry failed.
    #[error("push {reference} to {host}: {failure}")]
    Push {
        reference: String,
        host: String,
        failure: Box<Failure>,
    },

    /// Importing an image from an OCI layout or an archive failed.
    #[error("import {} from {}: {failure}", .what, .path.display())]
    Import {
        what: String,
        path: PathBuf,
        failure: Box<Failure>,
    },

    /// The docker credentials file could not be used.
    #[error("read registry credentials from {}: {reason} (fix or remove the file, or point DOCKER_CONFIG elsewhere)", .path.display())]
    Credentials { path: PathBuf, reason: String },

    /// A filesystem operation failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: String,
        path: PathBuf,
        source: io::Error,
    },

    /// The blob store failed.
    #[error("{op}: {source}")]
    Store { op: String, source: BlobError },

    /// A layer entry that would write outside the layer directory, through
    /// a symlink, or is otherwise unsafe or malformed.
    #[error("unsafe entry {} in layer {layer}: {reason}; refusing to extract", entry_name(.entry))]
    UnsafeEntry {
        entry: String,
        layer: String,
        reason: String,
    },

    /// Writing one entry of a layer failed.
    #[error("extract entry {} of layer {layer}: {op}: {source}", entry_name(.entry))]
    Extract {
        entry: String,
        layer: String,
        op: &'static str,
        source: io::Error,
    },

    /// A layer entry goes over one of the
    /// [`ExtractLimits`](crate::layer::ExtractLimits); nothing was written
    /// for it.
    #[error(
        "entry {} of layer {layer}: {}; refusing to extract (if the image is trusted, raise `{}` in [limits])",
        entry_name(.entry),
        .limit.describe(*.actual, *.max),
        .limit.config_key()
    )]
    LimitExceeded {
        entry: String,
        layer: String,
        limit: Limit,
        /// The size or depth the entry has or would bring the layer to.
        actual: u64,
        /// The limit.
        max: u64,
    },

    /// The layer stream itself is unreadable (bad compression, bad tar).
    #[error("read layer {layer}: {reason}")]
    Layer { layer: String, reason: String },
}

/// An entry name for messages: quoted, and shortened to its start and end
/// when it is very long (hostile layers have names of megabytes).
fn entry_name(name: &str) -> String {
    const KEEP: usize = 100;
    if name.len() <= 3 * KEEP {
        return format!("{name:?}");
    }
    let head = &name[..name.floor_char_boundary(KEEP)];
    let tail = &name[name.ceil_char_boundary(name.len() - KEEP)..];
    format!("{head:?}...{tail:?} ({} bytes)", name.len())
}

fn earlier_suffix(earlier: &[String]) -> String {
    if earlier.is_empty() {
        String::new()
    } else {
        format!(" (mirrors tried first: {})", earlier.join("; "))
    }
}

/// Why a pull or an import failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The tag or digest is not in the repository.
    #[error("manifest unknown (check the tag or digest)")]
    ManifestUnknown,
    /// The repository does not exist.
    #[error("repository unknown (check the image name)")]
    RepositoryUnknown,
    /// A blob referenced by the manifest is missing.
    #[error("blob {0} unknown (the image is incomplete; push it again)")]
    BlobUnknown(String),
    /// Credentials are missing or rejected.
    #[error(
        "unauthorized: {0} (check the credentials for this registry in $DOCKER_CONFIG/config.json or ~/.docker/config.json)"
    )]
    Unauthorized(String),
    /// The registry rate-limits us.
    #[error("rate limited: {0} (retry later, log in, or configure a mirror)")]
    RateLimited(String),
    /// Content does not hash to the digest that names it.
    #[error(
        "content digest mismatch: expected {expected}, got {actual} (the content is not what the digest names; check the digest)"
    )]
    DigestMismatch { expected: String, actual: String },
    /// Content is larger or smaller than its descriptor says.
    #[error("size mismatch for {digest}: descriptor says {expected} bytes, got {actual}")]
    SizeMismatch { digest: String, expected: u64, actual: u64 },
    /// An image index has no manifest for the wanted platform.
    #[error(
        "no manifest for platform {wanted} in the image index (available: {available}); choose one of those platforms"
    )]
    NoMatchingPlatform { wanted: String, available: String },
    /// A single-platform image of another platform than the wanted one.
    #[error("the image is for {actual} only, not {wanted}: ask for {actual}, or use an image built for {wanted}")]
    PlatformMismatch { wanted: String, actual: String },
    /// An OCI layout or archive has no image with the wanted tag.
    #[error("tag {tag:?} not found (available: {available})")]
    TagNotFound { tag: String, available: String },
    /// Several images and no tag to choose between them.
    #[error("it holds {count} images ({available}); name one with a tag")]
    Ambiguous { count: usize, available: String },
    /// A manifest or media type this crate does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Malformed manifest, index or config.
    #[error("invalid content: {0}")]
    Invalid(String),
    /// No connection to the registry could be made (refused, unreachable,
    /// no answer within `connect_timeout`, TLS failure).
    #[error("cannot connect to {host} ({reason}): {}", connect_hint(*.plain_http))]
    Connect {
        /// The registry host (`host[:port]`).
        host: String,
        /// Why, e.g. `connection refused`.
        reason: String,
        /// Whether the registry is spoken to over plain HTTP.
        plain_http: bool,
    },
    /// The registry accepted the connection but sent nothing for
    /// `read_timeout`.
    #[error(
        "timed out waiting for a response from {host}: nothing received for {} (the registry, or a proxy in front of it, accepted the connection but does not answer; `read_timeout` under [registry] sets how long to wait)",
        format_duration(*.after)
    )]
    Timeout {
        /// The registry host.
        host: String,
        /// How long nothing was received.
        after: Duration,
    },
    /// An established connection failed (reset, closed mid-response).
    #[error("the connection to {host} failed: {reason}")]
    Network {
        /// The registry host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The registry address does not make a valid URL (e.g. a mirror
    /// `host:99999` in the config).
    #[error("invalid registry address {host}: {reason}; check the mirrors under [registry] in the config")]
    BadAddress {
        /// The address as configured.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry answered with a server error (5xx).
    #[error("the registry failed with HTTP {status}: {message}")]
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// The body of the answer.
        message: String,
    },
    /// Any other error reported by the registry.
    #[error("registry error {code}: {message}")]
    Registry { code: String, message: String },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn connect_hint(plain_http: bool) -> &'static str {
    if plain_http {
        "is the registry running and listening there? it is spoken to over plain HTTP"
    } else {
        "is the registry running and reachable? for a plain-HTTP registry add it to `insecure` under [registry]"
    }
}

impl Failure {
    /// Whether trying again may succeed: connection failures, timeouts,
    /// server errors and rate limits, not answers such as "unknown" or
    /// "unauthorized", nor wrong content.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Failure::Connect { .. }
                | Failure::Timeout { .. }
                | Failure::Network { .. }
                | Failure::Unavailable { .. }
                | Failure::RateLimited(_)
        )
    }
}

impl Error {
    /// The [`Failure`] of a pull, push or import error, if it is one.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Error::Pull { failure, .. } | Error::Push { failure, .. } | Error::Import { failure, .. } => Some(failure),
            _ => None,
        }
    }

    pub(crate) fn io(op: impl Into<String>, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let op = op.into();
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn store(op: impl Into<String>) -> impl FnOnce(BlobError) -> Error {
        let op = op.into();
        move |source| Error::Store { op, source }
    }
}

/// Converts a blob-store commit error into a digest mismatch failure when it
/// is one.
pub(crate) fn blob_failure(e: BlobError) -> Result<Failure, BlobError> {
    match e {
        BlobError::DigestMismatch { expected, actual } => Ok(Failure::DigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        }),
        other => Err(other),
    }
}

/// Internal: a [`Failure`] (the source could not serve the image; another
/// source may) or a local [`Error`] that ends the operation.
pub(crate) enum Fault {
    Failure(Failure),
    Fatal(Error),
}

impl From<Failure> for Fault {
    fn from(f: Failure) -> Self {
        Fault::Failure(f)
    }
}

impl From<Error> for Fault {
    fn from(e: Error) -> Self {
        Fault::Fatal(e)
    }
}

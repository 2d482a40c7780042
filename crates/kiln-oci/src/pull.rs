//! The registry client: resolves a reference to one platform's manifest and
//! config (stored as verified blobs), then downloads its layers in parallel,
//! trying configured mirrors before the registry itself.
//!
//! Every request is bounded: connecting by `connect_timeout`, and silence
//! (no response, or no new bytes of a download) by `read_timeout`; a large
//! download that keeps making progress is never cut short. A request that
//! fails transiently (see [`Failure::is_transient`]) is tried again, up to
//! `retries` times with exponential backoff, before the next source is
//! tried; a download tried again starts over, and a failed one leaves
//! nothing in the store. The caller learns about slow and retried requests
//! through an observer ([`Registry::with_observer`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kiln_store::{BlobStore, Digest};
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use crate::config::RegistryConfig;
use crate::credentials::Credentials;
use crate::error::{Error, Failure, Fault, Result, blob_failure};
use crate::image::{
    DOCKER_LIST, DOCKER_MANIFEST, MAX_CONFIG_BYTES, MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES, Manifest, OCI_INDEX,
    OCI_MANIFEST, ResolvedImage, assemble, parse_manifest, select_platform, to_digest,
};
use crate::platform::Platform;
use crate::reference::{Reference, check_port};
use kiln_store::format_duration;

const ACCEPT: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// The wait before the first retry of a request; each further retry waits
/// twice as long, up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);

/// The longest wait between two tries of a request.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);

/// What the registry client reports to its observer while a pull is slow.
/// The client knows nothing of progress displays: the caller turns these
/// into whatever it shows (their `Display` is a short English sentence).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryNotice {
    /// A request has had no response, or a download no new bytes, for
    /// `after` (`waiting_notice_after` in the config). It goes on waiting
    /// until `read_timeout`; sent once per stalled wait.
    Waiting {
        /// The registry host (`host[:port]`) waited for.
        host: String,
        /// What is being fetched, e.g. `manifest library/busybox:latest`,
        /// `config sha256:…` or `layer sha256:…`.
        what: String,
        /// How long it has waited so far.
        after: Duration,
    },
    /// A request failed transiently and will be tried again after `delay`.
    Retrying {
        /// The registry host.
        host: String,
        /// What is being fetched.
        what: String,
        /// The number of the coming try (2 for the first retry).
        attempt: u32,
        /// How many tries are allowed in all (`retries` + 1).
        attempts: u32,
        /// Why the previous try failed.
        error: String,
        /// The wait before the coming try.
        delay: Duration,
    },
}

impl fmt::Display for RegistryNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryNotice::Waiting { host, what, after } => {
                write!(
                    f,
                    "waiting for {host}: no response to {what} for {}",
                    format_duration(*after)
                )
            }
            RegistryNotice::Retrying {
                host,
                what,
                attempt,
                attempts,
                error,
                delay,
            } => write!(
                f,
                "retrying {what} from {host} in {} (try {attempt} of {attempts}): {error}",
                format_duration(*delay)
            ),
        }
    }
}

/// Receives the [`RegistryNotice`]s of a [`Registry`].
type Observer = Arc<dyn Fn(RegistryNotice) + Send + Sync>;

/// Where the credentials for a registry host come from.
type CredentialSource = Arc<dyn Fn(&str) -> Result<Credentials> + Send + Sync>;

/// A registry client for pulls, built from a [`RegistryConfig`]. Cheap to
/// share and to clone; clones share one HTTP client (and its tokens) per
/// registry host and credentials, so that a token fetched with one
/// client's credentials never serves another's requests.
#[derive(Clone)]
pub struct Registry {
    config: Arc<RegistryConfig>,
    clients: Arc<Mutex<HashMap<(String, Credentials), Client>>>,
    observer: Option<Observer>,
    credentials: Option<CredentialSource>,
}

impl Registry {
    /// A client with the given settings.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config: Arc::new(config),
            clients: Arc::new(Mutex::new(HashMap::new())),
            observer: None,
            credentials: None,
        }
    }

    /// A handle on this client that asks `source` for the credentials of a
    /// registry host (a client's own, read on its host) instead of reading
    /// the docker config of this process.
    pub fn with_credentials(&self, source: impl Fn(&str) -> Result<Credentials> + Send + Sync + 'static) -> Self {
        Self {
            credentials: Some(Arc::new(source)),
            ..self.clone()
        }
    }

    /// A handle on this client (same settings, connections and tokens)
    /// that reports slow and retried requests to `observer`. Take one per
    /// operation, so that each notice is attributed to its operation.
    /// `observer` is called on the task doing the request: it must return
    /// quickly and never wait for something the pull's caller holds (send
    /// on a channel, record a progress event):
    ///
    /// ```no_run
    /// # async fn f(registry: &kiln_oci::Registry, r: &kiln_oci::Reference, store: &kiln_store::BlobStore) {
    /// let image = registry
    ///     .with_observer(|notice| eprintln!("{notice}"))
    ///     .resolve(r, &kiln_oci::Platform::host(), store)
    ///     .await;
    /// # }
    /// ```
    pub fn with_observer(&self, observer: impl Fn(RegistryNotice) + Send + Sync + 'static) -> Self {
        Self {
            observer: Some(Arc::new(observer)),
            ..self.clone()
        }
    }

    /// The settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn client(&self, host: &str, credentials: &Credentials) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry((host.to_string(), credentials.clone()))
            .or_insert_with(|| {
                let protocol = if self.config.is_insecure(host) {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                };
                Client::new(ClientConfig {
                    protocol,
                    connect_timeout: Some(self.config.connect_timeout()),
                    // Per read, reset by every byte received (reqwest).
                    read_timeout: Some(self.config.read_timeout()),
                    user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")),
                    platform_resolver: None,
                    // A blob goes up in one streamed PUT (its size is
                    // known), not one PATCH request per piece read.
                    use_monolithic_push: true,
                    ..Default::default()
                })
            })
            .clone()
    }

    /// The registry `host` as a source to pull from.
    pub(crate) fn source<'a>(&'a self, host: &'a str) -> Result<Source<'a>, Fault> {
        check_port(host).map_err(|reason| Failure::BadAddress {
            host: host.to_string(),
            reason,
        })?;
        let credentials = match &self.credentials {
            Some(source) => source(host)?,
            None => Credentials::lookup(self.config.docker_config_dir().as_deref(), host)?,
        };
        Ok(Source {
            registry: self,
            host,
            client: self.client(host, &credentials),
            auth: credentials.to_auth(),
        })
    }

    /// Runs `op` against each of `sources` in order until one succeeds. A
    /// local error ends it at once; when every source failed, the error
    /// names `subject` and the last source, and lists the earlier failures.
    async fn try_sources<'a, T, F, Fut>(&'a self, subject: String, sources: &'a [String], mut op: F) -> Result<T>
    where
        F: FnMut(Source<'a>) -> Fut,
        Fut: Future<Output = Result<T, Fault>>,
    {
        let mut earlier = Vec::new();
        for (i, host) in sources.iter().enumerate() {
            let outcome = match self.source(host) {
                Ok(source) => op(source).await,
                Err(fault) => Err(fault),
            };
            match outcome {
                Ok(out) => return Ok(out),
                Err(Fault::Fatal(e)) => return Err(e),
                Err(Fault::Failure(failure)) if i + 1 == sources.len() => {
                    return Err(Error::Pull {
                        reference: subject,
                        host: host.clone(),
                        failure: Box::new(failure),
                        earlier,
                    });
                }
                Err(Fault::Failure(failure)) => {
                    tracing::info!(%subject, mirror = %host, %failure, "mirror failed; trying the next source");
                    earlier.push(format!("{host}: {failure}"));
                }
            }
        }
        unreachable!("there is always at least one source")
    }

    /// Resolves `reference` for `platform`: fetches the manifest (choosing
    /// from an index if needed), verifies and stores manifest and config in
    /// `store`, and returns the image. A reference pinned by digest must
    /// match the content served. Mirrors of the registry are tried first,
    /// in order; the registry itself only if they all fail.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &BlobStore,
    ) -> Result<ResolvedImage> {
        let sources = self.config.sources(reference.registry());
        self.try_sources(reference.to_string(), &sources, |source| async move {
            source.resolve(reference, platform, store).await
        })
        .await
    }

    /// Downloads the layers of `image` that `store` lacks, several at once,
    /// each streamed into the store and verified against its digest and
    /// size. Tries the source that served the manifest first, then the
    /// other mirrors and the registry.
    pub async fn fetch_layers(&self, image: &ResolvedImage, store: &BlobStore) -> Result<()> {
        // Owned descriptors: borrowed ones make the future not provably Send.
        let missing: Vec<crate::LayerDesc> = {
            let mut seen = std::collections::HashSet::new();
            image
                .layers
                .iter()
                .filter(|l| !store.contains(&l.digest) && seen.insert(l.digest))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let reference = image.reference.as_ref().ok_or_else(|| Error::Pull {
            reference: image.manifest_digest.to_string(),
            host: image.source.clone(),
            failure: Box::new(Failure::Other(
                "the image was not pulled from a registry and its layers are missing".into(),
            )),
            earlier: Vec::new(),
        })?;
        let mut sources = vec![image.source.clone()];
        sources.extend(
            self.config
                .sources(reference.registry())
                .into_iter()
                .filter(|s| *s != image.source),
        );
        let pinned = reference.with_digest(image.manifest_digest);

        futures::stream::iter(missing)
            .map(|layer: crate::LayerDesc| {
                let (sources, pinned) = (&sources, &pinned);
                async move {
                    let subject = format!("{pinned} layer {}", layer.digest);
                    self.try_sources(subject, sources, |source| {
                        let layer = &layer;
                        async move {
                            let cref = pinned.to_client(source.host);
                            source.download_blob(&cref, &layer.digest, layer.size, store).await
                        }
                    })
                    .await
                }
            })
            .buffer_unordered(self.config.concurrent_downloads())
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// [`Registry::resolve`] then [`Registry::fetch_layers`].
    pub async fn pull(&self, reference: &Reference, platform: &Platform, store: &BlobStore) -> Result<ResolvedImage> {
        let image = self.resolve(reference, platform, store).await?;
        self.fetch_layers(&image, store).await?;
        Ok(image)
    }
}

/// One registry host (the registry or a mirror) pulled from: its HTTP
/// client, credentials, and the settings that bound its requests.
pub(crate) struct Source<'a> {
    registry: &'a Registry,
    pub(crate) host: &'a str,
    pub(crate) client: Client,
    pub(crate) auth: RegistryAuth,
}

enum Chunk {
    Data(bytes::Bytes),
    Done,
}

impl Source<'_> {
    /// [`Registry::resolve`] from this source.
    async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &BlobStore,
    ) -> Result<ResolvedImage, Fault> {
        let cref = reference.to_client(self.host);
        let (mut bytes, mut digest) = self.fetch_manifest(&cref, reference.digest()).await?;
        let mut index_digest = None;
        for _ in 0..MAX_INDEX_DEPTH {
            match parse_manifest(&bytes)? {
                Manifest::Image(manifest) => {
                    put_blob(store, &bytes, &digest, reference, "manifest")?;
                    let config_digest = to_digest(manifest.config().digest())?;
                    let config_size = manifest.config().size();
                    if config_size > MAX_CONFIG_BYTES {
                        return Err(Failure::Invalid(format!(
                            "config is {config_size} bytes, more than the {MAX_CONFIG_BYTES} accepted"
                        ))
                        .into());
                    }
                    let config = if store.contains(&config_digest) {
                        store
                            .read(&config_digest)
                            .map_err(|e| Fault::Fatal(Error::store("read config")(e)))?
                    } else {
                        let config = self.fetch_small_blob(&cref, &config_digest, config_size).await?;
                        put_blob(store, &config, &config_digest, reference, "config")?;
                        config
                    };
                    let image = assemble(
                        Some(reference.clone()),
                        self.host.to_string(),
                        index_digest,
                        digest,
                        *manifest,
                        &config,
                    )?;
                    image.check_platform(platform)?;
                    return Ok(image);
                }
                Manifest::Index(index) => {
                    put_blob(store, &bytes, &digest, reference, "index")?;
                    index_digest.get_or_insert(digest);
                    let entry = select_platform(&index, platform)?;
                    let entry_digest = to_digest(entry.digest())?;
                    let (b, d) = self
                        .fetch_manifest(&cref.clone_with_digest(entry_digest.to_string()), Some(&entry_digest))
                        .await?;
                    if b.len() as u64 != entry.size() {
                        return Err(size_mismatch(&entry_digest, entry.size(), b.len() as u64));
                    }
                    (bytes, digest) = (b, d);
                }
            }
        }
        Err(Failure::Unsupported(format!("image indexes nested more than {MAX_INDEX_DEPTH} deep")).into())
    }

    /// Fetches a manifest or index, checks its size and (when pinned) digest.
    async fn fetch_manifest(
        &self,
        cref: &oci_client::Reference,
        pinned: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest), Fault> {
        let what = match (cref.digest(), cref.tag()) {
            (Some(d), _) => format!("manifest {}@{d}", cref.repository()),
            (None, tag) => format!("manifest {}:{}", cref.repository(), tag.unwrap_or("latest")),
        };
        let (bytes, _) = self
            .request(&what, || self.client.pull_manifest_raw(cref, &self.auth, ACCEPT))
            .await?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Failure::Invalid(format!(
                "manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} accepted",
                bytes.len()
            ))
            .into());
        }
        let actual = Digest::of(&bytes);
        if let Some(expected) = pinned
            && *expected != actual
        {
            return Err(Failure::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            }
            .into());
        }
        Ok((bytes.to_vec(), actual))
    }

    /// Fetches a small blob (a config) into memory, bounded by its size.
    async fn fetch_small_blob(
        &self,
        cref: &oci_client::Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, Fault> {
        let what = format!("config {digest}");
        let out = self
            .retrying(&what, || async {
                let mut stream = self.open_blob(&what, cref, digest).await?;
                let mut out = Vec::with_capacity(size as usize);
                while let Some(chunk) = self.patiently(&what, stream.next()).await {
                    out.extend_from_slice(&chunk.map_err(|e| self.stream_failure(e))?);
                    if out.len() as u64 > size {
                        return Err(size_mismatch(digest, size, out.len() as u64));
                    }
                }
                Ok(out)
            })
            .await?;
        if out.len() as u64 != size {
            return Err(size_mismatch(digest, size, out.len() as u64));
        }
        let actual = Digest::of(&out);
        if actual != *digest {
            return Err(Failure::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            }
            .into());
        }
        Ok(out)
    }

    /// Downloads a layer into the store, trying again (from the start) on
    /// transient failures.
    async fn download_blob(
        &self,
        cref: &oci_client::Reference,
        digest: &Digest,
        size: u64,
        store: &BlobStore,
    ) -> Result<(), Fault> {
        let what = format!("layer {digest}");
        self.retrying(&what, || self.download_blob_once(&what, cref, digest, size, store))
            .await
    }

    /// Streams a blob into the store: the network side stays async, the
    /// file side runs on a blocking thread; the blob only becomes visible
    /// when complete and verified, and a failed download leaves nothing.
    async fn download_blob_once(
        &self,
        what: &str,
        cref: &oci_client::Reference,
        digest: &Digest,
        size: u64,
        store: &BlobStore,
    ) -> Result<(), Fault> {
        let mut stream = self.open_blob(what, cref, digest).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(16);
        let writer_store = store.clone();
        let expected = *digest;
        let writer = tokio::task::spawn_blocking(move || -> Result<Option<Result<(), Fault>>, Error> {
            let mut w = writer_store.writer().map_err(Error::store("start a blob"))?;
            loop {
                match rx.blocking_recv() {
                    Some(Chunk::Data(b)) => w.write_all(&b).map_err(|e| Error::Io {
                        op: "write blob".into(),
                        path: "blob store".into(),
                        source: e,
                    })?,
                    Some(Chunk::Done) => break,
                    None => return Ok(None), // aborted: dropping `w` discards the data
                }
            }
            match w.commit(Some(&expected)) {
                Ok(_) => Ok(Some(Ok(()))),
                Err(e) => match blob_failure(e) {
                    Ok(f) => Ok(Some(Err(Fault::Failure(f)))),
                    Err(e) => Err(Error::store(format!("store blob {expected}"))(e)),
                },
            }
        });
        let mut total = 0u64;
        let received: Result<(), Fault> = async {
            while let Some(chunk) = self.patiently(what, stream.next()).await {
                let chunk = chunk.map_err(|e| self.stream_failure(e))?;
                total += chunk.len() as u64;
                if total > size {
                    return Err(size_mismatch(digest, size, total));
                }
                if tx.send(Chunk::Data(chunk)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            if total != size {
                return Err(size_mismatch(digest, size, total));
            }
            let _ = tx.send(Chunk::Done).await;
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer
            .await
            .map_err(|e| {
                Fault::Fatal(Error::Io {
                    op: "write blob".into(),
                    path: digest.to_string().into(),
                    source: std::io::Error::other(e),
                })
            })?
            .map_err(Fault::Fatal)?;
        received?;
        written.unwrap_or_else(|| Err(Failure::Other(format!("download of {digest} was interrupted")).into()))
    }

    /// Starts the download of a blob.
    async fn open_blob(&self, what: &str, cref: &oci_client::Reference, digest: &Digest) -> Result<SizedStream, Fault> {
        self.client
            .store_auth_if_needed(cref.resolve_registry(), &self.auth)
            .await;
        let d = digest.to_string();
        self.patiently(what, self.client.pull_blob_stream(cref, d.as_str()))
            .await
            .map_err(|e| self.failure(e))
    }

    /// Runs `request` until it succeeds, fails for good, or has been tried
    /// `retries + 1` times, waiting with exponential backoff between tries
    /// (and telling the observer).
    pub(crate) async fn retrying<T, F, Fut>(&self, what: &str, mut request: F) -> Result<T, Fault>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Fault>>,
    {
        let attempts = self.registry.config.retries().saturating_add(1);
        let mut attempt = 1;
        loop {
            match request().await {
                Err(Fault::Failure(failure)) if failure.is_transient() && attempt < attempts => {
                    let delay = FIRST_RETRY_DELAY
                        .saturating_mul(1 << (attempt - 1).min(16))
                        .min(MAX_RETRY_DELAY);
                    attempt += 1;
                    tracing::info!(host = %self.host, what, %failure, ?delay, attempt, "retrying a registry request");
                    self.notify(RegistryNotice::Retrying {
                        host: self.host.to_string(),
                        what: what.to_string(),
                        attempt,
                        attempts,
                        error: failure.to_string(),
                        delay,
                    });
                    tokio::time::sleep(delay).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Awaits `request`, telling the observer if it has not completed after
    /// `waiting_notice_after`.
    /// One registry request (`what`, for notices), made by `request`:
    /// [`Source::retrying`] it, [`Source::patiently`] each try.
    pub(crate) async fn request<T, F, Fut>(&self, what: &str, mut request: F) -> Result<T, Fault>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        self.retrying(what, || {
            let attempt = request();
            async move { self.patiently(what, attempt).await.map_err(|e| self.failure(e)) }
        })
        .await
    }

    pub(crate) async fn patiently<T>(&self, what: &str, request: impl Future<Output = T>) -> T {
        if self.registry.observer.is_none() {
            return request.await;
        }
        let after = self.registry.config.waiting_notice_after();
        let mut request = std::pin::pin!(request);
        match tokio::time::timeout(after, &mut request).await {
            Ok(out) => out,
            Err(_) => {
                self.notify(RegistryNotice::Waiting {
                    host: self.host.to_string(),
                    what: what.to_string(),
                    after,
                });
                request.await
            }
        }
    }

    fn notify(&self, notice: RegistryNotice) {
        if let Some(observer) = &self.registry.observer {
            observer(notice);
        }
    }

    /// Maps an oci-client error to a failure with an actionable message.
    pub(crate) fn failure(&self, e: OciDistributionError) -> Fault {
        let f = match e {
            OciDistributionError::RegistryError { envelope, .. } => {
                let first = envelope.errors.first();
                let message = first.map(|e| e.message.clone()).unwrap_or_default();
                match first.map(|e| &e.code) {
                    Some(OciErrorCode::ManifestUnknown) => Failure::ManifestUnknown,
                    Some(OciErrorCode::NameUnknown) => Failure::RepositoryUnknown,
                    Some(OciErrorCode::BlobUnknown) => Failure::BlobUnknown(message),
                    Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => Failure::Unauthorized(message),
                    Some(OciErrorCode::Toomanyrequests) => Failure::RateLimited(message),
                    Some(code) => Failure::Registry {
                        code: format!("{code:?}"),
                        message,
                    },
                    None => Failure::Registry {
                        code: "unknown".into(),
                        message,
                    },
                }
            }
            OciDistributionError::UnauthorizedError { url } => Failure::Unauthorized(format!("401 from {url}")),
            OciDistributionError::AuthenticationFailure(reason) => Failure::Unauthorized(reason.trim().to_string()),
            OciDistributionError::ServerError {
                code: 401 | 403,
                message,
                ..
            } => Failure::Unauthorized(message),
            OciDistributionError::ServerError { code: 404, url, .. } => Failure::Registry {
                code: "404".into(),
                message: format!("not found: {url}"),
            },
            OciDistributionError::ServerError { code: 429, message, .. } => Failure::RateLimited(message),
            OciDistributionError::ServerError { code, message, .. } if code >= 500 => Failure::Unavailable {
                status: code,
                message: message.trim().to_string(),
            },
            OciDistributionError::ServerError { code, message, .. } => Failure::Registry {
                code: code.to_string(),
                message: message.trim().to_string(),
            },
            OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
                Failure::DigestMismatch { expected, actual }
            }
            OciDistributionError::RequestError(e) => self.request_failure(&e),
            OciDistributionError::IoError(e) => return self.stream_failure(e),
            // oci-client's words for a request it could not build: with a
            // valid port, an address that makes no valid URL.
            OciDistributionError::GenericError(Some(m)) if m == "could not clone request builder" => {
                Failure::BadAddress {
                    host: self.host.to_string(),
                    reason: "it does not make a valid URL".into(),
                }
            }
            OciDistributionError::UrlParseError(reason) => Failure::BadAddress {
                host: self.host.to_string(),
                reason,
            },
            OciDistributionError::UnsupportedMediaTypeError(m) => {
                Failure::Unsupported(format!("manifest media type {m}"))
            }
            OciDistributionError::UnsupportedSchemaVersionError(v) => {
                Failure::Unsupported(format!("manifest schemaVersion {v} (only 2 is supported)"))
            }
            OciDistributionError::VersionedParsingError(m) | OciDistributionError::ManifestParsingError(m) => {
                Failure::Invalid(m)
            }
            other => Failure::Other(other.to_string()),
        };
        f.into()
    }

    /// Maps an error of a blob stream (an HTTP error or a digest mismatch
    /// wrapped by oci-client).
    fn stream_failure(&self, e: std::io::Error) -> Fault {
        let inner = e.get_ref();
        if let Some(DigestError::VerificationError { expected, actual }) =
            inner.and_then(|inner| inner.downcast_ref::<DigestError>())
        {
            return Failure::DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            }
            .into();
        }
        if let Some(e) = inner.and_then(|inner| inner.downcast_ref::<reqwest::Error>()) {
            return self.request_failure(e).into();
        }
        Failure::Network {
            host: self.host.to_string(),
            reason: cause(&e),
        }
        .into()
    }

    /// Maps an HTTP error: no connection, no answer in time, or a broken
    /// connection.
    fn request_failure(&self, e: &reqwest::Error) -> Failure {
        let host = self.host.to_string();
        let config = &self.registry.config;
        if e.is_connect() {
            let reason = if e.is_timeout() {
                format!("no connection within {}", format_duration(config.connect_timeout()))
            } else {
                cause(e)
            };
            Failure::Connect {
                host,
                reason,
                plain_http: config.is_insecure(self.host),
            }
        } else if e.is_timeout() {
            Failure::Timeout {
                host,
                after: config.read_timeout(),
            }
        } else {
            Failure::Network { host, reason: cause(e) }
        }
    }
}

fn size_mismatch(digest: &Digest, expected: u64, actual: u64) -> Fault {
    Failure::SizeMismatch {
        digest: digest.to_string(),
        expected,
        actual,
    }
    .into()
}

fn put_blob(store: &BlobStore, bytes: &[u8], digest: &Digest, reference: &Reference, what: &str) -> Result<(), Fault> {
    if store.contains(digest) {
        return Ok(());
    }
    let op = format!("store {what} {digest} of {reference}");
    let mut w = store.writer().map_err(|e| Fault::Fatal(Error::store(op.clone())(e)))?;
    w.write_all(bytes).map_err(|e| {
        Fault::Fatal(Error::Io {
            op: op.clone(),
            path: "blob store".into(),
            source: e,
        })
    })?;
    match w.commit(Some(digest)) {
        Ok(_) => Ok(()),
        Err(e) => match blob_failure(e) {
            Ok(f) => Err(f.into()),
            Err(e) => Err(Fault::Fatal(Error::store(op)(e))),
        },
    }
}

/// The root cause of a network error, briefly: `connection refused` for
/// the common socket errors, else the innermost message.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    use std::io::ErrorKind;
    let mut innermost = e;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            let brief = match io.kind() {
                ErrorKind::ConnectionRefused => Some("connection refused"),
                ErrorKind::ConnectionReset => Some("connection reset"),
                ErrorKind::ConnectionAborted => Some("connection aborted"),
                ErrorKind::HostUnreachable => Some("host unreachable"),
                ErrorKind::NetworkUnreachable => Some("network unreachable"),
                ErrorKind::TimedOut => Some("timed out"),
                _ => None,
            };
            if let Some(brief) = brief {
                return brief.to_string();
            }
        }
        innermost = err;
        cur = err.source();
    }
    innermost.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send_so_callers_can_spawn_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("b"), dir.path().join("t")).unwrap();
        let registry = Registry::new(RegistryConfig::default());
        let reference = Reference::parse("127.0.0.1:1/x").unwrap();
        let platform = Platform::host();
        let observed = registry.with_observer(|_| ());
        let resolve = observed.resolve(&reference, &platform, &store);
        assert_send(&resolve);
        drop(resolve);
        // Checked when compiled; never run.
        let _ = |image: &ResolvedImage| assert_send(&observed.fetch_layers(image, &store));
        assert_send(&registry);
    }
}

//! HTTP sources (`Query.http`): a URL's content, streamed into the blob
//! store once per content. What a URL last gave is remembered (its ETag,
//! Last-Modified and blob), so a later fetch asks only whether it changed;
//! with a checksum whose blob is here, nothing is asked at all. A session
//! fetches a URL once, however often it asks.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_graph::KeyBuilder;
use kiln_store::{CacheRecord, Digest, Store, now_secs};
use reqwest::{StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::SolveError;
use crate::events::Subject;
use crate::per_key::PerKey;
use crate::report::Report;

/// Attempts per fetch (transient failures: connection errors, timeouts,
/// HTTP 5xx and 429).
const ATTEMPTS: u32 = 4;

/// What a URL gave last, kept across sessions (cache record meta).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UrlState {
    digest: Digest,
    size: u64,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// A URL's content in the blob store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// One fetch: what to get and how.
pub struct Request<'a> {
    /// The URL (http or https).
    pub url: &'a str,
    /// The `Authorization` header's value, if any (a secret).
    pub authorization: Option<&'a str>,
    /// The content's expected digest (`sha256:...`), if known.
    pub checksum: Option<Digest>,
    /// How long connecting and each read may take.
    pub timeouts: (Duration, Duration),
}

/// The URLs a session fetched, so that it fetches each once (different
/// URLs at the same time).
#[derive(Default)]
pub(crate) struct Fetches(PerKey<Vec<u8>, Fetched>);

impl Fetches {
    /// `request`'s content: from this session's earlier fetch, the blob
    /// store (by checksum), a revalidation, or a download.
    pub(crate) async fn fetch(
        &self,
        store: &Arc<Store>,
        report: &Report,
        request: &Request<'_>,
    ) -> Result<Fetched, SolveError> {
        let shown = display_url(request.url);
        let op = format!("http {shown}");
        let fail = |why: String| SolveError::op(&op, why);
        let key = state_key(request.url, request.authorization);
        let done = self
            .0
            .get_or_try(key.clone(), || fetch_once(store, report, request, &key, &op))
            .await?;
        check(done, request.checksum).map_err(fail)
    }
}

/// [`Fetches::fetch`] for a URL this session has not fetched yet.
async fn fetch_once(
    store: &Arc<Store>,
    report: &Report,
    request: &Request<'_>,
    key: &[u8],
    op: &str,
) -> Result<Fetched, SolveError> {
    if let Some(digest) = request.checksum.filter(|d| store.blobs().contains(d)) {
        let size = std::fs::metadata(store.blobs().path(&digest))
            .map(|m| m.len())
            .unwrap_or(0);
        return Ok(Fetched { digest, size });
    }
    let subject = Subject::uncounted(KeyBuilder::new("kiln/http-fetch").bytes(key).finish(), op.to_string());
    let download = async {
        let (done, message) = download(store, request, key).await?;
        Ok::<_, String>((check(done, request.checksum)?, message))
    };
    report
        .step(&subject, download)
        .await
        .map_err(|why| SolveError::op(op, why))
}

/// Fails when the content is not what the checksum says.
fn check(done: Fetched, checksum: Option<Digest>) -> Result<Fetched, String> {
    match checksum {
        Some(expected) if expected != done.digest => Err(format!(
            "checksum mismatch: expected {expected}, the content is {}; fix the checksum or the URL",
            done.digest
        )),
        _ => Ok(done),
    }
}

/// The URL without what may be a credential (user info, query), for
/// progress and errors.
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            let query = parsed.query().is_some();
            parsed.set_query(None);
            match query {
                // The query may hold a token: only say that there is one.
                true => format!("{parsed}?…"),
                false => parsed.to_string(),
            }
        }
        Err(_) => url.to_string(),
    }
}

/// The record key of a URL's state: the URL and (hashed in, never stored)
/// the credential it is fetched with, since another one may see another
/// content.
fn state_key(url: &str, authorization: Option<&str>) -> Vec<u8> {
    let mut key = KeyBuilder::new("kiln/http-state/v1");
    key.bytes(url.as_bytes());
    if let Some(auth) = authorization {
        key.bytes(b"\0authorization\0").bytes(auth.as_bytes());
    }
    key.finish().as_bytes().to_vec()
}

/// GETs the URL (conditionally, when its last content is here) and stores
/// what comes; the content and a line for progress.
async fn download(store: &Arc<Store>, request: &Request<'_>, key: &[u8]) -> Result<(Fetched, String), String> {
    let key: [u8; 32] = key.try_into().map_err(|_| "bad state key".to_string())?;
    let known = store
        .cache_get(&key)
        .map_err(|e| e.to_string())?
        .and_then(|r| serde_json::from_value::<UrlState>(r.meta).ok())
        .filter(|s| store.blobs().contains(&s.digest));
    let url = reqwest::Url::parse(request.url).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{} URLs are not fetched: use http or https", url.scheme()));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(request.timeouts.0)
        .read_timeout(request.timeouts.1)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match attempt_get(&client, &url, request, known.as_ref(), store).await {
            Ok(Answer::NotModified(done)) => return Ok((done, "not modified since the last download".into())),
            Ok(Answer::Downloaded(done, etag, last_modified)) => {
                remember(store, &key, done, etag, last_modified, request.url, started)?;
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let rate = kiln_store::format_size((done.size as f64 / secs) as u64);
                let size = kiln_store::format_size(done.size);
                return Ok((done, format!("downloaded {size} in {secs:.1}s ({rate}/s)")));
            }
            Err((true, _)) if attempt < ATTEMPTS => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err((_, why)) => {
                let tries = if attempt > 1 {
                    format!(" (after {attempt} attempts)")
                } else {
                    String::new()
                };
                return Err(format!("{why}{tries}"));
            }
        }
    }
}

/// What one GET gave.
enum Answer {
    /// The content known from last time is still current.
    NotModified(Fetched),
    /// New content, stored, with its ETag and Last-Modified.
    Downloaded(Fetched, Option<String>, Option<String>),
}

/// One GET of the URL; on failure, whether it is worth another attempt and
/// why it failed.
async fn attempt_get(
    client: &reqwest::Client,
    url: &reqwest::Url,
    request: &Request<'_>,
    known: Option<&UrlState>,
    store: &Arc<Store>,
) -> Result<Answer, (bool, String)> {
    let mut get = client.get(url.clone());
    if let Some(auth) = request.authorization {
        get = get.header(header::AUTHORIZATION, auth);
    }
    if let Some(state) = known {
        if let Some(etag) = &state.etag {
            get = get.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &state.last_modified {
            get = get.header(header::IF_MODIFIED_SINCE, modified);
        }
    }
    let response = get.send().await.map_err(|e| {
        (
            e.is_connect() || e.is_timeout() || e.is_request(),
            format!("GET failed: {e}"),
        )
    })?;
    let status = response.status();
    match known {
        Some(state) if status == StatusCode::NOT_MODIFIED => Ok(Answer::NotModified(Fetched {
            digest: state.digest,
            size: state.size,
        })),
        _ if status.is_success() => {
            let (etag, last_modified) = (text(&response, header::ETAG), text(&response, header::LAST_MODIFIED));
            let done = store_body(store, response, request.checksum).await?;
            Ok(Answer::Downloaded(done, etag, last_modified))
        }
        _ => {
            let transient = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
            Err((transient, format!("GET answered HTTP {status}")))
        }
    }
}

/// A response header as text.
fn text(response: &reqwest::Response, name: header::HeaderName) -> Option<String> {
    response.headers().get(name)?.to_str().ok().map(str::to_string)
}

/// Streams a response body into the blob store (checked against the
/// checksum: a mismatch keeps nothing).
async fn store_body(
    store: &Arc<Store>,
    response: reqwest::Response,
    checksum: Option<Digest>,
) -> Result<Fetched, (bool, String)> {
    let mut writer = store.blobs().writer().map_err(|e| (false, e.to_string()))?;
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| (true, format!("reading the body failed: {e}")))?;
        writer
            .write_all(&piece)
            .map_err(|e| (false, format!("storing the body: {e}")))?;
    }
    let size = writer.len();
    let digest = writer.commit(checksum.as_ref()).map_err(|e| match e {
        kiln_store::BlobError::DigestMismatch { expected, actual } => (
            false,
            format!("checksum mismatch: expected {expected}, the content is {actual}; fix the checksum or the URL"),
        ),
        other => (false, other.to_string()),
    })?;
    Ok(Fetched { digest, size })
}

/// Keeps what the URL gave, for the next fetch to revalidate.
fn remember(
    store: &Store,
    key: &[u8; 32],
    done: Fetched,
    etag: Option<String>,
    last_modified: Option<String>,
    url: &str,
    started: Instant,
) -> Result<(), String> {
    let state = UrlState {
        digest: done.digest,
        size: done.size,
        etag,
        last_modified,
    };
    let record = CacheRecord {
        outputs: Vec::new(),
        meta: serde_json::to_value(state).map_err(|e| e.to_string())?,
        description: format!("http {}", display_url(url)),
        created: now_secs(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    store
        .commit(Vec::new(), Some((key, &record)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            display_url("https://user:pw@example.com/a/b.tar.gz?token=s3cr3t"),
            "https://example.com/a/b.tar.gz?…"
        );
        assert_eq!(display_url("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080/x");
    }

    #[test]
    fn the_state_key_depends_on_the_credential_but_never_holds_it() {
        let plain = state_key("http://h/x", None);
        let with = state_key("http://h/x", Some("Bearer s3cr3t"));
        assert_ne!(plain, with);
        assert!(!with.windows(6).any(|w| w == b"s3cr3t"));
    }

    #[test]
    fn a_checksum_that_does_not_match_fails() {
        let done = Fetched {
            digest: Digest::of(b"a"),
            size: 1,
        };
        assert!(check(done, Some(Digest::of(b"a"))).is_ok());
        let err = check(done, Some(Digest::of(b"b"))).unwrap_err();
        assert!(err.contains("checksum mismatch"), "{err}");
    }
}

//! The registry client against a scripted HTTP server on loopback (no root,
//! no real registry): Docker v2 schema 2 lists, digest and size
//! verification against lying servers, mirror order and fallback, error
//! messages, and bounded failures: timeouts of a server that never
//! answers, refused connections, invalid ports, retries of transient
//! failures (and none of permanent ones), and the notices of slow and
//! retried requests.

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{LayerTar, gzip};
use kiln_oci::pull::RegistryNotice;
use kiln_oci::{Failure, Platform, Reference, Registry, RegistryConfig};
use kiln_store::{BlobStore, Digest};

#[derive(Clone)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many bytes of the body, then close the connection.
    cut_after: Option<usize>,
}

type Routes = HashMap<String, Response>;

/// Responses served once each, in order, before the route of a path.
type Script = Mutex<HashMap<String, VecDeque<Response>>>;

/// A scripted registry: answers GET/HEAD on known paths, 404 otherwise,
/// and logs every request.
struct Fake {
    host: String,
    log: Arc<Mutex<Vec<String>>>,
    script: Arc<Script>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(mut routes: Routes) -> Self {
        routes.entry("/v2/".into()).or_insert(Response {
            status: 200,
            headers: vec![],
            body: b"{}".to_vec(),
            cut_after: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Script::default());
        let stop = Arc::new(AtomicBool::new(false));
        let routes = Arc::new(routes);
        let thread = {
            let (log, script, stop) = (log.clone(), script.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (routes, script, log) = (routes.clone(), script.clone(), log.clone());
                    std::thread::spawn(move || serve(conn, &routes, &script, &log));
                }
            })
        };
        Self {
            host,
            log,
            script,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many requests were made for `path` (any method).
    fn count(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.ends_with(&format!(" {path}")))
            .count()
    }

    /// Serves `response` once for `path`, after the responses queued before
    /// and before its route.
    fn queue(&self, path: &str, response: Response) {
        self.script
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push_back(response);
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.host);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, routes: &Routes, script: &Script, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let path = target.split('?').next().unwrap_or("").to_string();
        log.lock().unwrap().push(format!("{method} {path}"));
        let queued = script.lock().unwrap().get_mut(&path).and_then(VecDeque::pop_front);
        let resp = queued
            .or_else(|| routes.get(&path).cloned())
            .unwrap_or_else(|| error(404, "NOT_FOUND", "no such path"));
        let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\n", resp.status, resp.body.len());
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method == "HEAD" {
            continue;
        }
        let body = &resp.body[..resp.cut_after.unwrap_or(resp.body.len())];
        if out.write_all(body).is_err() || resp.cut_after.is_some() {
            return;
        }
    }
}

fn ok(body: Vec<u8>, content_type: &str) -> Response {
    Response {
        status: 200,
        headers: vec![("Content-Type".into(), content_type.into())],
        body,
        cut_after: None,
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({"errors": [{"code": code, "message": message}]})).unwrap();
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body,
        cut_after: None,
    }
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A one-layer image in Docker v2 schema 2 form.
struct TestImage {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl TestImage {
    fn new(arch: &str, content: &str) -> Self {
        let tar = LayerTar::new()
            .file("etc/os-release", content.as_bytes(), 0o644)
            .finish();
        let layer = gzip(&tar);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).to_string()]}
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": Digest::of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": DOCKER_LAYER, "digest": Digest::of(&layer).to_string(), "size": layer.len()}]
        }))
        .unwrap();
        Self {
            manifest,
            config,
            layer,
        }
    }

    fn digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    /// Routes serving this image as `repo:tag` and by digest.
    fn routes(&self, repo: &str, tag: &str) -> Routes {
        let mut r = Routes::new();
        let m = ok(self.manifest.clone(), DOCKER_MANIFEST);
        r.insert(format!("/v2/{repo}/manifests/{tag}"), m.clone());
        r.insert(format!("/v2/{repo}/manifests/{}", self.digest()), m);
        r.insert(
            format!("/v2/{repo}/blobs/{}", Digest::of(&self.config)),
            ok(self.config.clone(), "application/octet-stream"),
        );
        r.insert(
            format!("/v2/{repo}/blobs/{}", Digest::of(&self.layer)),
            ok(self.layer.clone(), "application/octet-stream"),
        );
        r
    }
}

fn new_store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs"), dir.path().join("tmp")).unwrap();
    (dir, store)
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

/// Settings without retries (they are tested on their own, and would only
/// slow down the tests of other failures).
fn no_retries() -> RegistryConfig {
    RegistryConfig {
        retries: Some(0),
        ..Default::default()
    }
}

fn client() -> Registry {
    Registry::new(no_retries())
}

/// A client that records the notices it sends.
fn observed(config: RegistryConfig) -> (Registry, Arc<Mutex<Vec<RegistryNotice>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    let registry = Registry::new(config).with_observer(move |n| sink.lock().unwrap().push(n));
    (registry, notices)
}

/// The address of a port nothing listens on.
fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn pulls_a_docker_schema2_list_for_each_platform() {
    let amd = TestImage::new("amd64", "ID=amd");
    let arm = TestImage::new("arm64", "ID=arm");
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": arm.digest().to_string(), "size": arm.manifest.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": DOCKER_MANIFEST, "digest": amd.digest().to_string(), "size": amd.manifest.len(),
             "platform": {"os": "linux", "architecture": "amd64"}}
        ]
    }))
    .unwrap();
    let mut routes = amd.routes("multi", "amd-only");
    routes.extend(arm.routes("multi", "arm-only"));
    routes.insert("/v2/multi/manifests/latest".into(), ok(list.clone(), DOCKER_LIST));
    let fake = Fake::start(routes);
    let (_d, store) = new_store();
    let image = r(&format!("{}/multi:latest", fake.host));

    for (platform, want, content) in [("linux/amd64", &amd, "ID=amd"), ("linux/arm64", &arm, "ID=arm")] {
        let platform = Platform::parse(platform).unwrap();
        let got = client().pull(&image, &platform, &store).await.unwrap();
        assert_eq!(got.manifest_digest, want.digest());
        assert_eq!(got.index_digest, Some(Digest::of(&list)));
        assert_eq!(got.platform().architecture, platform.architecture);
        assert_eq!(got.layers[0].media_type, DOCKER_LAYER);
        assert!(store.contains(&Digest::of(&list)), "the index is stored too");
        assert!(store.contains(&got.layers[0].digest));
        let dir = tempfile::tempdir().unwrap();
        kiln_oci::apply_layer(
            store.open_blob(&got.layers[0].digest).unwrap(),
            DOCKER_LAYER,
            dir.path(),
            &[],
            kiln_oci::ExtractLimits::default(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/os-release")).unwrap(),
            content
        );
    }

    let err = client()
        .resolve(&image, &Platform::parse("linux/s390x").unwrap(), &store)
        .await
        .unwrap_err();
    match err.failure() {
        Some(Failure::NoMatchingPlatform { wanted, available }) => {
            assert_eq!(wanted, "linux/s390x");
            assert_eq!(available, "linux/arm64/v8, linux/amd64");
        }
        other => panic!("{other:?}: {err}"),
    }
}

#[tokio::test]
async fn pull_by_digest_verifies_the_content() {
    let img = TestImage::new("amd64", "x");
    let other = TestImage::new("amd64", "other");
    let mut routes = img.routes("x", "latest");
    // The server lies: asked for `other`'s digest, it serves `img`.
    routes.insert(
        format!("/v2/x/manifests/{}", other.digest()),
        ok(img.manifest.clone(), DOCKER_MANIFEST),
    );
    let fake = Fake::start(routes);
    let (_d, store) = new_store();

    let good = client()
        .resolve(
            &r(&format!("{}/x@{}", fake.host, img.digest())),
            &Platform::host(),
            &store,
        )
        .await;
    assert_eq!(good.unwrap().manifest_digest, img.digest());

    let err = client()
        .resolve(
            &r(&format!("{}/x@{}", fake.host, other.digest())),
            &Platform::host(),
            &store,
        )
        .await
        .unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::DigestMismatch { .. })), "{err}");
    assert!(err.to_string().contains(&other.digest().to_string()), "{err}");
}

#[tokio::test]
async fn fetch_layers_rejects_corrupt_or_oversized_blobs() {
    for tamper in ["flip", "extend", "truncate"] {
        let img = TestImage::new("amd64", "x");
        let mut routes = img.routes("x", "latest");
        let mut bad = img.layer.clone();
        match tamper {
            "flip" => *bad.last_mut().unwrap() ^= 0xff,
            "extend" => bad.extend_from_slice(b"more"),
            _ => bad.truncate(bad.len() - 3),
        }
        routes.insert(
            format!("/v2/x/blobs/{}", Digest::of(&img.layer)),
            ok(bad, "application/octet-stream"),
        );
        let fake = Fake::start(routes);
        let (_d, store) = new_store();
        let image = client()
            .resolve(&r(&format!("{}/x:latest", fake.host)), &Platform::host(), &store)
            .await
            .unwrap();
        let err = client().fetch_layers(&image, &store).await.unwrap_err();
        assert!(
            matches!(
                err.failure(),
                Some(Failure::DigestMismatch { .. } | Failure::SizeMismatch { .. })
            ),
            "{tamper}: {err}"
        );
        assert!(
            !store.contains(&image.layers[0].digest),
            "{tamper}: a bad blob was stored"
        );
        assert!(err.to_string().contains(&image.layers[0].digest.to_string()), "{err}");
    }
}

#[tokio::test]
async fn mirrors_answer_first_and_fall_back_in_order() {
    let img = TestImage::new("amd64", "x");
    let upstream = Fake::start(img.routes("ns/app", "v1"));
    let good_mirror = Fake::start(img.routes("ns/app", "v1"));
    let empty_mirror = Fake::start(Routes::new());
    let (_d, store) = new_store();
    let image = r(&format!("{}/ns/app:v1", upstream.host));

    // A working mirror answers; the registry itself is never contacted.
    let mut config = RegistryConfig::default();
    config
        .mirrors
        .insert(upstream.host.clone(), vec![good_mirror.host.clone()]);
    let got = Registry::new(config)
        .pull(&image, &Platform::host(), &store)
        .await
        .unwrap();
    assert_eq!(got.source, good_mirror.host);
    assert!(
        upstream.requests().is_empty(),
        "upstream contacted: {:?}",
        upstream.requests()
    );

    // A mirror without the image: the next mirror, then the registry.
    let (_d2, store2) = new_store();
    let mut config = RegistryConfig::default();
    config
        .mirrors
        .insert(upstream.host.clone(), vec![empty_mirror.host.clone()]);
    let got = Registry::new(config)
        .pull(&image, &Platform::host(), &store2)
        .await
        .unwrap();
    assert_eq!(got.source, upstream.host);
    assert!(
        empty_mirror
            .requests()
            .iter()
            .any(|r| r.contains("/v2/ns/app/manifests/v1"))
    );
    assert!(store2.contains(&got.layers[0].digest));
}

#[tokio::test]
async fn docker_hub_names_go_to_their_mirror() {
    let img = TestImage::new("amd64", "x");
    let mirror = Fake::start(img.routes("library/busybox", "latest"));
    let mut config = RegistryConfig::default();
    config.mirrors.insert("docker.io".into(), vec![mirror.host.clone()]);
    let (_d, store) = new_store();
    let got = Registry::new(config)
        .pull(&r("busybox"), &Platform::host(), &store)
        .await
        .unwrap();
    assert_eq!(got.source, mirror.host);
    assert_eq!(got.manifest_digest, img.digest());
    assert!(
        mirror
            .requests()
            .iter()
            .any(|r| r == "GET /v2/library/busybox/manifests/latest")
    );
}

#[tokio::test]
async fn failures_name_the_operation_and_the_fix() {
    let mut routes = Routes::new();
    routes.insert(
        "/v2/x/manifests/lates".into(),
        error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
    );
    routes.insert(
        "/v2/nope/manifests/latest".into(),
        error(404, "NAME_UNKNOWN", "repository name not known"),
    );
    routes.insert(
        "/v2/private/manifests/latest".into(),
        error(401, "UNAUTHORIZED", "authentication required"),
    );
    routes.insert(
        "/v2/busy/manifests/latest".into(),
        error(429, "TOOMANYREQUESTS", "slow down"),
    );
    let fake = Fake::start(routes);
    let (_d, store) = new_store();
    let resolve = |s: String| {
        let store = store.clone();
        async move { client().resolve(&r(&s), &Platform::host(), &store).await.unwrap_err() }
    };

    let e = resolve(format!("{}/x:lates", fake.host)).await;
    assert_eq!(e.failure(), Some(&Failure::ManifestUnknown));
    assert_eq!(
        e.to_string(),
        format!(
            "pull {}/x:lates from {}: manifest unknown (check the tag or digest)",
            fake.host, fake.host
        )
    );
    let e = resolve(format!("{}/nope", fake.host)).await;
    assert_eq!(e.failure(), Some(&Failure::RepositoryUnknown), "{e}");
    assert!(e.to_string().contains("check the image name"), "{e}");
    let e = resolve(format!("{}/private", fake.host)).await;
    assert!(matches!(e.failure(), Some(Failure::Unauthorized(_))), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
    let e = resolve(format!("{}/busy", fake.host)).await;
    assert!(matches!(e.failure(), Some(Failure::RateLimited(_))), "{e}");

    // Nothing listening: a connection failure, and with a mirror in front,
    // both attempts are reported.
    let dead = dead_address();
    let e = resolve(format!("{dead}/x")).await;
    assert!(matches!(e.failure(), Some(Failure::Connect { .. })), "{e}");
    let mut config = no_retries();
    config.mirrors.insert(dead.clone(), vec![fake.host.clone()]);
    let e = Registry::new(config)
        .resolve(&r(&format!("{dead}/x:lates")), &Platform::host(), &store)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("mirrors tried first") && msg.contains("manifest unknown"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_naming_the_host() {
    // Accepts connections and holds them open without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let (registry, notices) = observed(RegistryConfig {
        read_timeout: Some(Duration::from_secs(1)),
        retries: Some(1),
        waiting_notice_after: Some(Duration::from_millis(100)),
        ..Default::default()
    });
    let (_d, store) = new_store();

    let e = registry
        .resolve(&r(&format!("{host}/x:1")), &Platform::host(), &store)
        .await
        .unwrap_err();
    assert!(matches!(e.failure(), Some(Failure::Timeout { .. })), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "pull {host}/x:1 from {host}: timed out waiting for a response from {host}: nothing received for 1s"
        )),
        "{e}"
    );
    let notices = notices.lock().unwrap();
    let waiting = RegistryNotice::Waiting {
        host: host.clone(),
        what: "manifest x:1".into(),
        after: Duration::from_millis(100),
    };
    assert!(notices.contains(&waiting), "{notices:?}");
    assert_eq!(
        waiting.to_string(),
        format!("waiting for {host}: no response to manifest x:1 for 100ms")
    );
    let retried: Vec<_> = notices
        .iter()
        .filter_map(|n| match n {
            RegistryNotice::Retrying {
                host: h,
                attempt,
                attempts,
                error,
                ..
            } => Some((h.clone(), *attempt, *attempts, error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(retried.len(), 1, "{notices:?}");
    assert_eq!((&retried[0].0, retried[0].1, retried[0].2), (&host, 2, 2));
    assert!(retried[0].3.starts_with("timed out waiting"), "{}", retried[0].3);
}

#[tokio::test]
async fn a_refused_connection_says_so_with_a_hint() {
    let dead = dead_address();
    let (registry, notices) = observed(RegistryConfig {
        retries: Some(1),
        ..Default::default()
    });
    let (_d, store) = new_store();
    let e = registry
        .resolve(&r(&format!("{dead}/x")), &Platform::host(), &store)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "pull {dead}/x:latest from {dead}: cannot connect to {dead} (connection refused): \
             is the registry running and listening there? it is spoken to over plain HTTP"
        )
    );
    assert!(
        matches!(
            &notices.lock().unwrap()[..],
            [RegistryNotice::Retrying { attempt: 2, .. }]
        ),
        "refused connections are retried: {:?}",
        notices.lock().unwrap()
    );
}

#[tokio::test]
async fn invalid_ports_are_refused_before_any_request() {
    for (input, port) in [
        ("127.0.0.1:99999/x", "port 99999 is out of range"),
        ("localhost:0/x", "port 0 is out of range"),
        ("registry.internal:http/x:1", "port \"http\" is not a number"),
    ] {
        let e = Reference::parse(input).unwrap_err().to_string();
        assert!(e.starts_with(&format!("invalid image reference {input:?}")), "{e}");
        assert!(e.contains(port), "{e}");
    }

    // A mirror with a bad address (config is not parsed as references are):
    // a clear failure, then the registry itself.
    let img = TestImage::new("amd64", "x");
    let upstream = Fake::start(img.routes("x", "latest"));
    let mut config = no_retries();
    config.mirrors.insert(
        upstream.host.clone(),
        vec!["127.0.0.1:99999".into(), "bad host:5000".into()],
    );
    let (_d, store) = new_store();
    let image = r(&format!("{}/x", upstream.host));
    let got = Registry::new(config.clone())
        .resolve(&image, &Platform::host(), &store)
        .await
        .unwrap();
    assert_eq!(got.source, upstream.host);

    config.mirrors_only = true;
    let e = Registry::new(config)
        .resolve(&image, &Platform::host(), &store)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "127.0.0.1:99999: invalid registry address 127.0.0.1:99999: port 99999 is out of range (ports are 1 to 65535)"
        ),
        "{e}"
    );
    assert!(
        e.contains("invalid registry address bad host:5000: it does not make a valid URL"),
        "{e}"
    );
    assert!(!e.contains("clone"), "{e}");
}

fn unavailable() -> Response {
    Response {
        status: 503,
        headers: vec![],
        body: b"try again".to_vec(),
        cut_after: None,
    }
}

#[tokio::test]
async fn transient_failures_are_retried_and_reported() {
    let img = TestImage::new("amd64", "x");
    let fake = Fake::start(img.routes("x", "latest"));
    let manifest = "/v2/x/manifests/latest".to_string();
    let config = format!("/v2/x/blobs/{}", Digest::of(&img.config));
    let layer = format!("/v2/x/blobs/{}", Digest::of(&img.layer));
    fake.queue(&manifest, unavailable());
    fake.queue(&config, unavailable());
    // A layer cut off midway, twice: downloaded again from the start.
    let cut = Response {
        cut_after: Some(img.layer.len() / 2),
        ..ok(img.layer.clone(), "application/octet-stream")
    };
    fake.queue(&layer, cut.clone());
    fake.queue(&layer, cut);
    let (registry, notices) = observed(RegistryConfig {
        retries: Some(2),
        ..Default::default()
    });
    let (dir, store) = new_store();

    let got = registry
        .pull(&r(&format!("{}/x", fake.host)), &Platform::host(), &store)
        .await
        .unwrap();
    assert!(store.contains(&got.layers[0].digest));
    assert_eq!(
        (fake.count(&manifest), fake.count(&config), fake.count(&layer)),
        (2, 2, 3)
    );
    let retried: Vec<String> = notices.lock().unwrap().iter().map(|n| n.to_string()).collect();
    assert_eq!(retried.len(), 4, "{retried:?}");
    assert_eq!(
        retried[0],
        format!(
            "retrying manifest x:latest from {} in 500ms (try 2 of 3): the registry failed with HTTP 503: try again",
            fake.host
        )
    );
    assert!(
        retried[1].starts_with(&format!("retrying config {} from", Digest::of(&img.config))),
        "{retried:?}"
    );
    let layer_retry = format!("retrying layer {} from {} in", got.layers[0].digest, fake.host);
    assert!(
        retried[2].starts_with(&layer_retry) && retried[2].contains("in 500ms (try 2 of 3)"),
        "{retried:?}"
    );
    assert!(
        retried[3].starts_with(&layer_retry) && retried[3].contains("in 1s (try 3 of 3)"),
        "{retried:?}"
    );
    assert!(
        retried[2].contains(&format!("the connection to {} failed", fake.host)),
        "{retried:?}"
    );

    // Cut off every time: the pull fails, and nothing partial is kept.
    let (dir2, store2) = new_store();
    for _ in 0..3 {
        fake.queue(
            &layer,
            Response {
                cut_after: Some(10),
                ..ok(img.layer.clone(), "application/octet-stream")
            },
        );
    }
    let e = registry
        .pull(&r(&format!("{}/x", fake.host)), &Platform::host(), &store2)
        .await
        .unwrap_err();
    assert!(matches!(e.failure(), Some(Failure::Network { .. })), "{e}");
    assert!(!store2.contains(&got.layers[0].digest));
    assert_eq!(
        std::fs::read_dir(dir2.path().join("tmp")).unwrap().count(),
        0,
        "partial blobs left"
    );
    drop(dir);
}

#[tokio::test]
async fn permanent_failures_are_not_retried() {
    let img = TestImage::new("amd64", "x");
    let other = TestImage::new("amd64", "other");
    let mut routes = img.routes("x", "latest");
    routes.insert(
        "/v2/x/manifests/gone".into(),
        error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
    );
    routes.insert(
        "/v2/private/manifests/latest".into(),
        error(401, "UNAUTHORIZED", "authentication required"),
    );
    // Asked for `other`, it serves `img`.
    routes.insert(
        format!("/v2/x/manifests/{}", other.digest()),
        ok(img.manifest.clone(), DOCKER_MANIFEST),
    );
    let layer = format!("/v2/x/blobs/{}", Digest::of(&img.layer));
    routes.insert(layer.clone(), error(404, "BLOB_UNKNOWN", "blob unknown"));
    let fake = Fake::start(routes);
    let (registry, notices) = observed(RegistryConfig::default());
    let (_d, store) = new_store();
    let host = &fake.host;

    for (reference, path) in [
        (format!("{host}/x:gone"), "/v2/x/manifests/gone".to_string()),
        (format!("{host}/private"), "/v2/private/manifests/latest".to_string()),
        (
            format!("{host}/x@{}", other.digest()),
            format!("/v2/x/manifests/{}", other.digest()),
        ),
    ] {
        let e = registry.resolve(&r(&reference), &Platform::host(), &store).await;
        assert!(e.is_err(), "{reference}");
        assert_eq!(fake.count(&path), 1, "{reference}: {:?}", fake.requests());
    }
    let image = registry
        .resolve(&r(&format!("{host}/x")), &Platform::host(), &store)
        .await
        .unwrap();
    let e = registry.fetch_layers(&image, &store).await.unwrap_err();
    assert!(matches!(e.failure(), Some(Failure::BlobUnknown(_))), "{e}");
    assert_eq!(fake.count(&layer), 1);
    assert!(notices.lock().unwrap().is_empty(), "{:?}", notices.lock().unwrap());
}

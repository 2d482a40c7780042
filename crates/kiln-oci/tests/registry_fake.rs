//! The registry client against a scripted HTTP server on loopback (no root,
//! no real registry): Docker v2 schema 2 lists, digest and size
//! verification against lying servers, mirror order and fallback, and
//! error messages.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::{LayerTar, gzip};
use kiln_oci::{Failure, Platform, Reference, Registry, RegistryConfig};
use kiln_store::{BlobStore, Digest};

#[derive(Clone)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

type Routes = HashMap<String, Response>;

/// A scripted registry: answers GET/HEAD on known paths, 404 otherwise,
/// and logs every request.
struct Fake {
    host: String,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(mut routes: Routes) -> Self {
        routes.entry("/v2/".into()).or_insert(Response {
            status: 200,
            headers: vec![],
            body: b"{}".to_vec(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let routes = Arc::new(routes);
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (routes, log) = (routes.clone(), log.clone());
                    std::thread::spawn(move || serve(conn, &routes, &log));
                }
            })
        };
        Self {
            host,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
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

fn serve(conn: TcpStream, routes: &Routes, log: &Mutex<Vec<String>>) {
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
        let resp = routes
            .get(&path)
            .cloned()
            .unwrap_or_else(|| error(404, "NOT_FOUND", "no such path"));
        let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\n", resp.status, resp.body.len());
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method != "HEAD" && out.write_all(&resp.body).is_err() {
            return;
        }
    }
}

fn ok(body: Vec<u8>, content_type: &str) -> Response {
    Response {
        status: 200,
        headers: vec![("Content-Type".into(), content_type.into())],
        body,
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({"errors": [{"code": code, "message": message}]})).unwrap();
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body,
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

fn client() -> Registry {
    Registry::new(RegistryConfig::default())
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
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let e = resolve(format!("{dead}/x")).await;
    assert!(matches!(e.failure(), Some(Failure::Connect(_))), "{e}");
    let mut config = RegistryConfig::default();
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

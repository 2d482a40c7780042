//! A loopback distribution registry for tests.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long to wait for a registry to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A Debian `docker-registry` (distribution v2) serving on
/// `127.0.0.1:<free port>` with filesystem storage in a temp dir. Plain
/// HTTP (clients must treat it as insecure). Killed and waited for on drop;
/// its temp dir (storage, config, log) is removed then.
pub struct Registry {
    child: Child,
    port: u16,
    creds: Option<(String, String)>,
    log: PathBuf,
    counter: AtomicUsize,
    // Last: dropped after the process is gone.
    dir: tempfile::TempDir,
}

/// A parsed HTTP/1.1 response from [`Registry::get`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code, e.g. 200 or 401.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("kiln-testkit: response body is not JSON ({e}): {}", self.text()))
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("kiln-testkit: bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn basic_auth_header(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

fn decode_chunked(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        body = &body[eol + 2..];
        if size == 0 || body.len() < size {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// The `Accept` header [`Registry::get`] sends: every manifest and index
/// media type (distribution answers 404 for an index otherwise), then JSON.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/json";

/// One HTTP/1.1 GET over a fresh connection; `None` if connecting or reading fails.
fn http_get(port: u16, path: &str, authorization: Option<&str>, headers: &[(&str, &str)]) -> Option<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kiln-testkit\r\nConnection: close\r\n");
    if let Some(a) = authorization {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { decode_chunked(&body) } else { body };
    Some(HttpResponse { status, headers, body })
}

/// Polls `GET /v2/` until the registry answers 200 or 401.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("docker-registry exited with {status}"));
        }
        if let Some(resp) = http_get(port, "/v2/", None, &[])
            && (resp.status == 200 || resp.status == 401)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no answer on /v2/ within {START_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl Registry {
    /// Starts an anonymous registry; panics (with its log) if it does not
    /// come up within 30 s.
    pub fn start() -> Registry {
        Self::start_inner(None)
    }

    /// Starts a registry that requires HTTP basic auth with `user`/`password`
    /// (htpasswd bcrypt file made with `htpasswd -Bbn`); anonymous requests
    /// get 401.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(creds: Option<(String, String)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .expect("kiln-testkit: create registry temp dir");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("create registry storage dir");

        let auth = match &creds {
            None => String::new(),
            Some((user, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("kiln-testkit: cannot run htpasswd (apt-get install apache2-utils): {e}")
                    });
                assert!(
                    out.status.success(),
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let file = dir.path().join("htpasswd");
                fs::write(&file, &out.stdout).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-testkit\n    path: {}\n",
                    file.display()
                )
            }
        };

        let log = dir.path().join("registry.log");
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n  formatter: text\n\
                     storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                     maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-testkit-{port}\n  \
                     headers:\n    X-Content-Type-Options: [nosniff]\n\
                     {auth}",
                    storage = storage.display(),
                ),
            )
            .expect("write registry config");
            let log_file = File::create(&log).expect("create registry log");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("dup log fd"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("kiln-testkit: cannot run docker-registry (apt-get install docker-registry): {e}")
                });
            let mut child = child;
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    return Registry {
                        child,
                        port,
                        creds,
                        log,
                        counter: AtomicUsize::new(0),
                        dir,
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    // The port was taken between picking and binding it: try another.
                    if !text.contains("address already in use") {
                        panic!(
                            "kiln-testkit: registry did not start: {e}\n--- {} ---\n{text}",
                            log.display()
                        );
                    }
                    last_err = e;
                }
            }
        }
        panic!("kiln-testkit: registry did not start after 5 attempts: {last_err}");
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP port the registry listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT/<name_tag>`, a reference to an image in this registry.
    pub fn image_ref(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.host())
    }

    /// The basic-auth user and password, if started with [`Registry::start_with_basic_auth`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's storage root (filesystem driver) inside its temp dir.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Path of the registry's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Contents of the registry's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pushes the `latest` ref of the OCI layout `layout` to
    /// `HOST/<name_tag>` (e.g. `"library/busybox:latest"`) with skopeo and
    /// returns the digest of the pushed manifest (or index) as the registry
    /// serves it. Digests are preserved, so this equals
    /// [`crate::layout_digest`]. If the ref is an image index all its
    /// platforms are pushed (`--all`). Panics (with skopeo's and the
    /// registry's output) on failure.
    pub fn push(&self, layout: &Path, name_tag: &str) -> String {
        let all = crate::layout_is_index(layout);
        self.push_ref(&format!("oci:{}:latest", layout.display()), name_tag, all)
    }

    /// Like [`Registry::push`] for an OCI layout whose `latest` is an image
    /// index (e.g. [`crate::multiarch_layout`]): pushes every platform's
    /// manifest and the index, returns the index digest.
    pub fn push_index(&self, layout: &Path, name_tag: &str) -> String {
        assert!(
            crate::layout_is_index(layout),
            "{}: `latest` is not an image index",
            layout.display()
        );
        self.push_ref(&format!("oci:{}:latest", layout.display()), name_tag, true)
    }

    /// Copies any skopeo source (e.g. `oci-archive:/x.tar:latest`,
    /// `docker-archive:/x.tar`) to `HOST/<name_tag>`; `all` copies every
    /// image of an index. Returns the pushed digest.
    pub fn push_ref(&self, source: &str, name_tag: &str, all: bool) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let digest_file = self.dir.path().join(format!("push-{n}.digest"));
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ]);
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        if all {
            cmd.arg("--all");
        }
        cmd.arg("--digestfile").arg(&digest_file);
        cmd.arg(source).arg(format!("docker://{}", self.image_ref(name_tag)));
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("kiln-testkit: cannot run skopeo: {e}"));
        if !out.status.success() {
            panic!(
                "kiln-testkit: skopeo copy {source} -> {} failed ({}):\n{}{}\n--- registry log ---\n{}",
                self.image_ref(name_tag),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
        let digest = fs::read_to_string(&digest_file)
            .unwrap_or_else(|e| panic!("kiln-testkit: skopeo wrote no digest file: {e}"))
            .trim()
            .to_string();
        assert!(
            digest.starts_with("sha256:"),
            "unexpected digest from skopeo: {digest:?}"
        );
        digest
    }

    /// HTTP GET of `path` (e.g. `/v2/busybox/manifests/latest`) on this
    /// registry, sending the configured basic-auth credentials if any and
    /// `Accept:` [`ACCEPT_MANIFESTS`]. Panics if the request fails at the
    /// transport level.
    pub fn get(&self, path: &str) -> HttpResponse {
        let auth = self.creds.as_ref().map(|(u, p)| basic_auth_header(u, p));
        self.request(path, auth.as_deref(), &[("Accept", ACCEPT_MANIFESTS)])
    }

    /// Like [`Registry::get`] but without credentials.
    pub fn get_anonymous(&self, path: &str) -> HttpResponse {
        self.request(path, None, &[("Accept", ACCEPT_MANIFESTS)])
    }

    /// HTTP GET of `path` with an explicit `Authorization` header value (or
    /// none) and exactly the extra `headers` given.
    pub fn request(&self, path: &str, authorization: Option<&str>, headers: &[(&str, &str)]) -> HttpResponse {
        http_get(self.port, path, authorization, headers).unwrap_or_else(|| {
            panic!(
                "kiln-testkit: GET {path} on {} failed\n--- registry log ---\n{}",
                self.host(),
                self.log_text()
            )
        })
    }

    /// Tags of repository `name` (`GET /v2/<name>/tags/list`); empty if the
    /// repository does not exist.
    pub fn tags(&self, name: &str) -> Vec<String> {
        let resp = self.get(&format!("/v2/{name}/tags/list"));
        if resp.status == 404 {
            return Vec::new();
        }
        assert_eq!(resp.status, 200, "GET /v2/{name}/tags/list: {}", resp.text());
        resp.json()["tags"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

/// `Basic <base64(user:password)>`, the value of an `Authorization` header.
pub fn basic_authorization(user: &str, password: &str) -> String {
    basic_auth_header(user, password)
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to the registry's PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

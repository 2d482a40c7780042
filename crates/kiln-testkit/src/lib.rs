//! Test-only helpers for kiln's integration tests.
//!
//! - Fixture images as OCI image layouts, built by `scripts/setup.sh
//!   --fixtures-only` (see `scripts/fixtures/build.py`) into
//!   `${KILN_CACHE_DIR:-<repo>/.cache}/fixtures` the first time a process asks
//!   for one. Builds are cached on disk and serialised across processes with
//!   an flock, so parallel test binaries do not race.
//! - [`Registry`]: a real distribution registry (Debian `docker-registry`) on
//!   `127.0.0.1:<free port>` with storage in a temp dir, optionally with
//!   htpasswd basic auth, killed on drop.
//! - [`OtlpReceiver`]: an OpenTelemetry trace receiver (gRPC or
//!   HTTP/protobuf) on `127.0.0.1:<free port>` that keeps the spans it gets.
//! - [`require_root`] for tests that need root.
//!
//! Nothing here talks to anything but loopback.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod otlp;
mod registry;

pub use otlp::{Attr, OtlpProtocol, OtlpReceiver, ReceivedSpan};
pub use registry::{ACCEPT_MANIFESTS, HttpResponse, Registry, basic_authorization};

/// Root of the kiln git repository (the Cargo workspace root).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The cache directory: `$KILN_CACHE_DIR` if set, else `<repo>/.cache`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("KILN_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join(".cache"),
    }
}

/// Runs `scripts/setup.sh --fixtures-only [extra]` under an exclusive flock
/// on `<cache>/fixtures.lock`; panics with the script's output on failure.
fn run_setup(extra: &[&str]) {
    let cache = cache_dir();
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("kiln-testkit: cannot create {}: {e}", cache.display()));
    let lock_path = cache.join("fixtures.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("kiln-testkit: cannot open {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("kiln-testkit: flock {}: {e}", lock_path.display()));

    let script = repo_root().join("scripts/setup.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--fixtures-only")
        .args(extra)
        .env("KILN_CACHE_DIR", &cache)
        .env("KILN_FIXTURES_LOCK_HELD", "1")
        .output()
        .unwrap_or_else(|e| panic!("kiln-testkit: cannot run {}: {e}", script.display()));
    drop(lock);
    if !out.status.success() {
        panic!(
            "kiln-testkit: building test fixtures failed ({}): `{} --fixtures-only {}`\n\
             Run `scripts/setup.sh` as root once to install the Debian packages the tests need.\n\
             --- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            script.display(),
            extra.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

/// Directory holding the fixture images (`<cache>/fixtures`). The first call
/// in a process makes sure the small fixtures (busybox, its archives,
/// layered, multiarch, multiplatform) exist and are up to date; panics if they cannot be
/// built.
pub fn fixtures_dir() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            run_setup(&[]);
            cache_dir().join("fixtures")
        })
        .clone()
}

/// OCI layout of the busybox image (tag `latest`): one gzip layer with
/// Debian's static busybox and an applet symlink per command in `/bin`,
/// users `root` (0) and `app` (1000, supplementary group `builders` 2000),
/// `/etc/os-release` with `ID=kiln-busybox`; `Cmd ["sh"]`, host platform.
/// Bit-for-bit reproducible, so its digest is stable.
pub fn busybox_layout() -> PathBuf {
    fixtures_dir().join("busybox")
}

/// OCI layout (tag `latest`) of busybox plus three layers: gzip (`/data/keep`,
/// `/data/remove-me`, `/data/opaque/{a,b}`, symlink `/data/link -> keep`,
/// hard link `/data/hard` to `/data/keep`), zstd (whiteout of
/// `/data/remove-me`, opaque `/data/opaque` holding only `c`) and
/// uncompressed (`/data/new`). Merged `/data`: keep, link, hard, opaque/c, new.
pub fn layered_layout() -> PathBuf {
    fixtures_dir().join("layered")
}

/// OCI layout whose `latest` is an image index with two manifests: first a
/// tiny image for another architecture (its only file is `/etc/os-release`
/// with `ID=wrong-arch`), then the busybox image for the host platform (same
/// manifest digest as [`busybox_layout`]).
pub fn multiarch_layout() -> PathBuf {
    fixtures_dir().join("multiarch")
}

/// OCI layout whose `latest` is an image index of two real busybox images:
/// the host platform's (same manifest as [`busybox_layout`]) and a foreign
/// one's (arm64/v8 on amd64 hosts, amd64 on arm64 hosts), from Debian's
/// busybox-static for that architecture. Running the foreign one needs
/// qemu-user-static.
pub fn multiplatform_layout() -> PathBuf {
    fixtures_dir().join("multiplatform")
}

/// OCI layout (tag `latest`) of Debian bookworm from `debootstrap
/// --variant=minbase` (one gzip layer, ~50 MB; `Cmd ["bash"]`). Built on
/// first use (about 30 s, needs root and the Debian mirror) and cached; not
/// reproducible, so do not assert on its digest.
pub fn debian_layout() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            fixtures_dir();
            run_setup(&["--debian"]);
            cache_dir().join("fixtures/debian")
        })
        .clone()
}

/// The busybox image as an OCI archive (a tar of [`busybox_layout`]; ref `latest`).
pub fn busybox_oci_archive() -> PathBuf {
    fixtures_dir().join("busybox.oci.tar")
}

/// The busybox image as a docker-archive tarball (`docker save` format,
/// tagged `busybox:latest`), written by skopeo.
pub fn busybox_docker_archive() -> PathBuf {
    fixtures_dir().join("busybox.docker.tar")
}

/// Descriptor JSON (from `index.json`) of the `latest` ref of an OCI layout.
fn latest_descriptor(layout: &Path) -> serde_json::Value {
    let path = layout.join("index.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("kiln-testkit: read {}: {e}", path.display()));
    let index: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("kiln-testkit: parse {}: {e}", path.display()));
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .or(manifests.first())
        .cloned()
        .unwrap_or_else(|| panic!("kiln-testkit: {} has no manifests", path.display()))
}

/// Digest (`sha256:...`) of the `latest` manifest or index of an OCI layout,
/// as recorded in its `index.json`. Pushing with [`Registry::push`] keeps it.
pub fn layout_digest(layout: &Path) -> String {
    latest_descriptor(layout)["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("kiln-testkit: no digest in {}/index.json", layout.display()))
        .to_string()
}

/// True if the `latest` ref of an OCI layout is an image index (multi-platform).
pub fn layout_is_index(layout: &Path) -> bool {
    latest_descriptor(layout)["mediaType"] == "application/vnd.oci.image.index.v1+json"
}

/// Effective uid of this process (from `/proc/self/status`).
fn euid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Guard for tests that need root. Returns `false` (the caller should
/// `return` early) when `KILN_SKIP_ROOT_TESTS` is set to anything but `0` or
/// empty; otherwise returns `true` if running as root and panics if not.
///
/// ```no_run
/// if !kiln_testkit::require_root() {
///     return;
/// }
/// ```
pub fn require_root() -> bool {
    if std::env::var("KILN_SKIP_ROOT_TESTS").is_ok_and(|v| !v.is_empty() && v != "0") {
        eprintln!("KILN_SKIP_ROOT_TESTS is set: skipping a test that needs root");
        return false;
    }
    if euid() != Some(0) {
        panic!("this test needs root (CI runs as root); run as root or set KILN_SKIP_ROOT_TESTS=1 to skip");
    }
    true
}

/// Polls (every millisecond, for at most two minutes: a hang, never a
/// timing) until `cond` holds; panics naming `what` otherwise.
pub fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(120) {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("timed out waiting until {what}");
}

/// A network namespace a test makes (`ip netns add`), joined to the host by
/// a veth pair with a /30 of `prefix` (`10.231` gives `10.231.N.1` on the
/// host side and `10.231.N.2` inside); removed, with its veth pair, when
/// dropped. Each one of a test process has its own N and interface names.
pub struct NetNs {
    /// The name under `/run/netns`.
    pub name: String,
    /// The host side's address.
    pub outer: String,
    /// The namespace side's address.
    pub inner: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> Self {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() + made * 37) % 200 + 10;
        let name = format!("kiln-test-{}-{made}", std::process::id());
        let (host_if, ns_if) = (format!("kvh{id}"), format!("kvn{id}"));
        let (outer, inner) = (format!("{prefix}.{id}.1"), format!("{prefix}.{id}.2"));
        let script = format!(
            "ip netns add {name}; ip link add {host_if} type veth peer name {ns_if}; \
             ip link set {ns_if} netns {name}; ip addr add {outer}/30 dev {host_if}; ip link set {host_if} up; \
             ip -n {name} addr add {inner}/30 dev {ns_if}; ip -n {name} link set {ns_if} up; \
             ip -n {name} link set lo up"
        );
        let out = Command::new("sh").args(["-ec", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name, outer, inner }
    }

    /// The namespace's file, for `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

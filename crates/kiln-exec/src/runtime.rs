//! Running containers through an OCI runtime binary (crun or runc).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::cgroups::{self, InstanceLock};
use crate::host::{CgroupLayout, cgroup_layout, find_executable};
use crate::mounts::{MountPlan, Overlay};
use crate::spec::{self, ContainerMount, ProcessSpec};

/// Which OCI runtime implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// crun (preferred: fastest start).
    Crun,
    /// runc.
    Runc,
}

/// Errors from running containers.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No usable runtime binary.
    #[error(
        "no OCI runtime found: install crun (preferred) or runc (e.g. `apt-get install crun`), or set `runtime` in the kiln config"
    )]
    NoRuntime,
    /// The configured runtime is not there.
    #[error("OCI runtime {0:?} not found or not executable")]
    RuntimeNotFound(String),
    /// Preparing the container failed.
    #[error("container {id}: {action}: {source}")]
    Setup {
        id: String,
        action: &'static str,
        source: std::io::Error,
    },
    /// The runtime spec could not be built.
    #[error("container {id}: building the runtime spec: {source}")]
    Spec { id: String, source: oci_spec::OciSpecError },
}

/// One of a process's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives a running process's output as it arrives: which stream, and the
/// bytes read from it (chunks split anywhere, even inside a UTF-8 sequence).
pub type LiveOutput<'a> = dyn Fn(Stream, &[u8]) + Send + Sync + 'a;

/// Bytes kept of each output stream; beyond this the middle is dropped.
pub const OUTPUT_LIMIT: usize = 16 << 20;

/// The OCI runtime kiln uses.
#[derive(Debug, Clone)]
pub struct Runtime {
    kind: RuntimeKind,
    binary: PathBuf,
    /// The runtime's own state directory (`--root`).
    state: PathBuf,
    hide_cgroup_v2: bool,
    /// Random per-engine tag in container ids: runtimes name cgroups after
    /// container ids, so ids must not collide between engines on one host.
    instance: String,
    /// Held while the engine lives, so that its cgroups are not taken for
    /// leaked ones (see [`crate::cgroups`]).
    _registration: Option<Arc<InstanceLock>>,
}

/// A container to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Unique container id.
    pub id: String,
    /// Directory for the bundle (config.json, mount points); removed after.
    pub bundle: PathBuf,
    /// The root filesystem stack (writable: its upper dir gets the changes).
    pub rootfs: Overlay,
    /// Tree mounts: overlay stacks mounted at the given container path,
    /// optionally only a subpath of the stack.
    pub trees: Vec<TreeMount>,
    /// tmpfs mounts.
    pub tmpfs: Vec<String>,
    /// Host paths bound into the container (cache volumes, secret files).
    pub binds: Vec<Bind>,
    /// The process.
    pub process: ProcessSpec,
    /// Bytes for the process's stdin.
    pub stdin: Option<Vec<u8>>,
    /// The network namespace to join (a bind mount of one, see
    /// [`crate::net::Attachment`]); `None`: a new one with only loopback.
    pub network: Option<PathBuf>,
}

/// A host path bound into the container.
#[derive(Debug, Clone)]
pub struct Bind {
    /// Host path (file or directory).
    pub source: PathBuf,
    /// Path in the container.
    pub target: String,
    /// Mount read-only.
    pub readonly: bool,
}

/// An overlay stack mounted into the container.
#[derive(Debug, Clone)]
pub struct TreeMount {
    /// The stack.
    pub overlay: Overlay,
    /// Subpath of the stack to mount (relative; empty for all of it).
    pub subpath: PathBuf,
    /// Path in the container.
    pub target: String,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (128+N when killed by signal N).
    pub exit_code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr (includes the runtime's own error messages).
    pub stderr: Vec<u8>,
    /// Both streams interleaved in the order their chunks arrived.
    pub combined: Vec<u8>,
}

impl Runtime {
    /// Picks the runtime: `preferred` (a name or path) if given, else crun,
    /// else runc. `state` holds the runtime's container state.
    pub fn detect(preferred: Option<&str>, state: PathBuf) -> Result<Self, ExecError> {
        let binary = match preferred {
            Some(p) => find_executable(p).ok_or_else(|| ExecError::RuntimeNotFound(p.to_string()))?,
            None => find_executable("crun")
                .or_else(|| find_executable("runc"))
                .ok_or(ExecError::NoRuntime)?,
        };
        let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let kind = if name.contains("runc") {
            RuntimeKind::Runc
        } else {
            RuntimeKind::Crun
        };
        let hide_cgroup_v2 = cgroup_layout() == CgroupLayout::Hybrid;
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).map_err(|e| ExecError::Setup {
            id: String::new(),
            action: "drawing a random instance tag",
            source: std::io::Error::other(e),
        })?;
        let instance = hex::encode(random);
        let registration = cgroups::register(&instance).map(Arc::new);
        Ok(Self {
            kind,
            binary,
            state,
            hide_cgroup_v2,
            instance,
            _registration: registration,
        })
    }

    /// A container id unique on this host, for the `n`th container.
    pub fn container_id(&self, n: impl std::fmt::Display) -> String {
        format!("{}{}-{n}", cgroups::ID_PREFIX, self.instance)
    }

    /// Which runtime this is.
    pub fn kind(&self) -> RuntimeKind {
        self.kind
    }

    /// The runtime binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.binary);
        c.arg("--root").arg(&self.state);
        c
    }

    /// Kills and deletes containers left behind by a process that died
    /// (kill -9) while they ran. Call at start, while holding the state lock.
    pub fn remove_stale(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.state) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if !id.starts_with(cgroups::ID_PREFIX) {
                continue;
            }
            let _ = self
                .command()
                .args(["kill", &id, "KILL"])
                .stderr(Stdio::null())
                .status();
            let _ = self
                .command()
                .args(["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_dir_all(e.path());
            removed.push(id);
        }
        removed
    }

    /// Runs a container to completion and returns its exit code and output.
    /// Dropping the future kills the container.
    pub async fn run(&self, spec: &RunSpec) -> Result<ExecOutput, ExecError> {
        self.run_with_output(spec, &|_, _| {}).await
    }

    /// Like [`Runtime::run`], and passes the process's output to `live` as
    /// it arrives, chunk by chunk (all of it, also beyond what is kept).
    pub async fn run_with_output(&self, spec: &RunSpec, live: &LiveOutput<'_>) -> Result<ExecOutput, ExecError> {
        let mut spawned = self.spawn(spec)?;
        let combined = Mutex::new(Vec::new());
        let stdout = read_limited(
            spawned.child.stdout.take().expect("piped"),
            Stream::Stdout,
            &combined,
            live,
        );
        let stderr = read_limited(
            spawned.child.stderr.take().expect("piped"),
            Stream::Stderr,
            &combined,
            live,
        );
        let (status, stdout, stderr) = tokio::join!(spawned.child.wait(), stdout, stderr);
        spawned.finish(status, stdout, stderr, combined.into_inner().expect("output lock"))
    }

    /// Starts a container that runs until it exits or is stopped (a
    /// service): its output goes to `live` as it arrives, and what is kept
    /// of it comes with [`Started::wait`]. Dropping the handle kills the
    /// container.
    pub fn start(&self, spec: &RunSpec, live: Arc<LiveOutput<'static>>) -> Result<Started, ExecError> {
        let mut spawned = self.spawn(spec)?;
        let combined = Arc::new(Mutex::new(Vec::new()));
        let stdout = spawn_reader(
            spawned.child.stdout.take().expect("piped"),
            Stream::Stdout,
            &combined,
            &live,
        );
        let stderr = spawn_reader(
            spawned.child.stderr.take().expect("piped"),
            Stream::Stderr,
            &combined,
            &live,
        );
        Ok(Started {
            spawned,
            stdout,
            stderr,
            combined,
        })
    }

    /// Writes the container's bundle and starts the runtime on it, with
    /// its stdin fed and its stdout and stderr piped.
    fn spawn(&self, spec: &RunSpec) -> Result<Spawned, ExecError> {
        let setup = |action| {
            let id = spec.id.clone();
            move |source| ExecError::Setup { id, action, source }
        };
        let rootfs = spec.bundle.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(setup("creating the bundle"))?;
        fs::create_dir_all(&self.state).map_err(setup("creating the runtime state dir"))?;
        let bundle = RemoveOnDrop(spec.bundle.clone());

        let mut plan = MountPlan::new(self.hide_cgroup_v2);
        plan.overlay(&spec.rootfs, &rootfs)
            .map_err(setup("planning the rootfs mount"))?;
        let mut mounts = Vec::new();
        for (i, tree) in spec.trees.iter().enumerate() {
            let at = spec.bundle.join(format!("m{i}"));
            fs::create_dir_all(&at).map_err(setup("creating a mount point"))?;
            plan.overlay(&tree.overlay, &at)
                .map_err(setup("planning a tree mount"))?;
            mounts.push(ContainerMount::Bind {
                source: at.join(&tree.subpath),
                target: tree.target.clone(),
                readonly: tree.overlay.upper.is_none(),
            });
        }
        for target in &spec.tmpfs {
            mounts.push(ContainerMount::Tmpfs { target: target.clone() });
        }
        for b in &spec.binds {
            mounts.push(ContainerMount::Bind {
                source: b.source.clone(),
                target: b.target.clone(),
                readonly: b.readonly,
            });
        }
        let oci =
            spec::build(rootfs, &spec.process, &mounts, spec.network.as_deref()).map_err(|source| ExecError::Spec {
                id: spec.id.clone(),
                source,
            })?;
        oci.save(spec.bundle.join("config.json"))
            .map_err(|e| setup("writing config.json")(std::io::Error::other(e)))?;

        let mut cmd = Command::from(self.command());
        cmd.arg("run").arg("--bundle").arg(&spec.bundle).arg(&spec.id);
        cmd.stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        // SAFETY: the closure only makes system calls (see MountPlan::apply).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                plan.apply()
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(setup("starting the runtime (mounting the container filesystems)"))?;
        let guard = KillOnDrop {
            runtime: self.clone(),
            id: spec.id.clone(),
            armed: true,
        };
        if let (Some(mut stdin), Some(data)) = (child.stdin.take(), spec.stdin.clone()) {
            tokio::spawn(async move {
                // A process that does not read its stdin is not an error.
                let _ = stdin.write_all(&data).await;
            });
        }
        Ok(Spawned {
            child,
            guard,
            _bundle: bundle,
        })
    }
}

/// A container's runtime process, with what removes the container and its
/// bundle if it is abandoned.
struct Spawned {
    child: tokio::process::Child,
    guard: KillOnDrop,
    _bundle: RemoveOnDrop,
}

impl Spawned {
    /// The result of a container that exited with `status`.
    fn finish(
        self,
        status: std::io::Result<std::process::ExitStatus>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        combined: Vec<u8>,
    ) -> Result<ExecOutput, ExecError> {
        let Spawned { mut guard, .. } = self;
        let status = status.map_err(|source| ExecError::Setup {
            id: guard.id.clone(),
            action: "waiting for the runtime",
            source,
        })?;
        guard.armed = false;
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
            combined,
        })
    }
}

/// A container started with [`Runtime::start`].
pub struct Started {
    spawned: Spawned,
    stdout: tokio::task::JoinHandle<Vec<u8>>,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    combined: Arc<Mutex<Vec<u8>>>,
}

impl Started {
    /// The container's id (the runtime's name for it).
    pub fn id(&self) -> &str {
        &self.spawned.guard.id
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) to the container's process.
    pub fn signal(&self, signal: &str) -> std::io::Result<()> {
        self.signaller().signal(signal)
    }

    /// What signals the container while [`Started::wait`] owns it.
    pub fn signaller(&self) -> Signaller {
        Signaller {
            runtime: self.spawned.guard.runtime.clone(),
            id: self.spawned.guard.id.clone(),
        }
    }

    /// Waits until the container exits: its exit code and kept output.
    pub async fn wait(mut self) -> Result<ExecOutput, ExecError> {
        let status = self.spawned.child.wait().await;
        let stdout = self.stdout.await.unwrap_or_default();
        let stderr = self.stderr.await.unwrap_or_default();
        let combined = std::mem::take(&mut *self.combined.lock().expect("output lock"));
        self.spawned.finish(status, stdout, stderr, combined)
    }
}

/// Signals a started container (see [`Started::signaller`]).
#[derive(Debug, Clone)]
pub struct Signaller {
    runtime: Runtime,
    id: String,
}

impl Signaller {
    /// Sends `signal` (`TERM`, `KILL`, ...) to the container's process.
    pub fn signal(&self, signal: &str) -> std::io::Result<()> {
        let status = self
            .runtime
            .command()
            .args(["kill", &self.id, signal])
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "the runtime could not signal {}",
                self.id
            )))
        }
    }

    /// Asks the process to stop as `SIGTERM` would outside a container:
    /// `SIGTERM` if it handles it, else `SIGKILL` (a namespace's init, as a
    /// container's process is, ignores signals it does not handle, where
    /// any other process would end).
    pub fn terminate(&self) -> std::io::Result<()> {
        let handles_term = self.pid().and_then(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            let mask = u64::from_str_radix(caught.trim(), 16).ok()?;
            Some(mask & (1 << (libc::SIGTERM - 1)) != 0)
        });
        self.signal(if handles_term == Some(false) { "KILL" } else { "TERM" })
    }

    /// The host's pid of the container's process, as the runtime reports it.
    fn pid(&self) -> Option<u32> {
        let out = self
            .runtime
            .command()
            .args(["state", &self.id])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        state.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok())
    }
}

/// [`read_limited`] in a task of its own.
fn spawn_reader(
    stream: impl AsyncRead + Unpin + Send + 'static,
    kind: Stream,
    combined: &Arc<Mutex<Vec<u8>>>,
    live: &Arc<LiveOutput<'static>>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    let (combined, live) = (combined.clone(), live.clone());
    tokio::spawn(async move { read_limited(stream, kind, &combined, &*live).await })
}

/// Reads a stream to its end, passing every chunk to `live`, keeping at most
/// [`OUTPUT_LIMIT`] bytes of it and appending what it keeps to `combined` as
/// it arrives.
async fn read_limited(
    mut r: impl AsyncRead + Unpin,
    stream: Stream,
    combined: &Mutex<Vec<u8>>,
    live: &LiveOutput<'_>,
) -> Vec<u8> {
    let mut out = Vec::new();
    // Small chunks keep what live listeners buffer small.
    let mut buf = vec![0u8; 16 << 10];
    let mut dropped = 0usize;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        live(stream, &buf[..n]);
        if out.len() + n > OUTPUT_LIMIT {
            dropped += n;
            continue;
        }
        out.extend_from_slice(&buf[..n]);
        let mut all = combined.lock().expect("output lock");
        if all.len() + n <= 2 * OUTPUT_LIMIT {
            all.extend_from_slice(&buf[..n]);
        }
    }
    if dropped > 0 {
        out.extend_from_slice(format!("\n[kiln: {dropped} more bytes of output not kept]\n").as_bytes());
    }
    out
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Kills and deletes the container if `run` is abandoned midway.
struct KillOnDrop {
    runtime: Runtime,
    id: String,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self
                .runtime
                .command()
                .args(["kill", &self.id, "KILL"])
                .stderr(Stdio::null())
                .status();
            let _ = self
                .runtime
                .command()
                .args(["delete", "--force", &self.id])
                .stderr(Stdio::null())
                .status();
        }
    }
}

//! One engine per state dir, many clients: `kiln engine` serves the state
//! dir's engine on a Unix socket inside it, and `kiln run`, `kiln session`
//! and `kiln query` open their session there, starting the engine in the
//! background when none runs (it stops when it has had no client for a
//! while).

mod answers;
pub mod client;
mod client_host;
pub mod log;
pub mod protocol;
pub mod server;
pub mod tls;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kiln_api::Server;
use kiln_solver::explain::Explanation;
use kiln_solver::{Events, LocalHost, Stats};

use self::client::{Attached, Endpoint};

/// This process's session, on the engine serving its state dir (or on the
/// engine `KILN_HOST` names).
pub struct Client {
    attached: Arc<Attached>,
    /// The local state dir (none for an engine elsewhere).
    state_dir: Option<PathBuf>,
}

/// How long an engine a client started waits without clients before it
/// stops, unless the config says otherwise.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The environment variables an engine a client starts keeps: where to
/// find programs (crun), its log level, locale and temp dir.
const ENGINE_ENV: [&str; 7] = ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "KILN_LOG", "RUST_BACKTRACE"];

/// How long a client waits for the engine it started to listen.
const START_WAIT: Duration = Duration::from_secs(120);

/// How to start an engine for a state dir: kiln's global flags that
/// concern the engine, and how long it may stay idle.
pub struct Start {
    /// The state directory.
    pub state_dir: PathBuf,
    /// `--config`, when given.
    pub config: Option<PathBuf>,
    /// `--runtime`, when given.
    pub runtime: Option<String>,
    /// `--idle-timeout`.
    pub idle: Duration,
}

impl Start {
    /// Starts `kiln engine` for the state dir in the background, in a
    /// session of its own (a Ctrl-C of the client does not reach it), its
    /// output appended to `engine.log` in the state dir.
    fn spawn(&self) -> anyhow::Result<std::process::Child> {
        // The log lives in the state dir, which must be private first.
        kiln_store::prepare_root(&self.state_dir).with_context(|| format!("preparing {}", self.state_dir.display()))?;
        let log_path = self.state_dir.join("engine.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let exe = std::env::current_exe().context("finding the kiln binary")?;
        let mut cmd = std::process::Command::new(exe);
        // The engine outlives this client and serves others: it gets none of
        // this client's environment (which may hold secrets) but what it
        // needs itself.
        cmd.env_clear();
        for name in ENGINE_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.arg("--state-dir").arg(&self.state_dir);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        if let Some(runtime) = &self.runtime {
            cmd.arg("--runtime").arg(runtime);
        }
        cmd.args(["engine", "--started-by-client", "--idle-timeout"])
            .arg(kiln_store::format_duration(self.idle))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("sharing the engine log")?)
            .stderr(log);
        // SAFETY: setsid(2) is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        };
        cmd.spawn().context("starting kiln engine")
    }
}

/// The last lines of a log, to show why an engine did not start.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

impl Client {
    /// A session on the engine serving `start`'s state dir; one is started
    /// in the background when none runs (two clients racing to start one
    /// end up on the same engine: the second engine finds the first one's
    /// lock and leaves).
    pub async fn connect(
        start: &Start,
        options: kiln_solver::SessionOptions,
        cwd: &Path,
        host: &LocalHost,
    ) -> anyhow::Result<Self> {
        if let Some(client) = Self::on_engine(&start.state_dir, options.clone(), cwd, host).await? {
            return Ok(client);
        }
        let mut child = start.spawn()?;
        let waited = std::time::Instant::now();
        let mut left: Option<std::time::Instant> = None;
        while waited.elapsed() < START_WAIT {
            if let Some(client) = Self::on_engine(&start.state_dir, options.clone(), cwd, host).await? {
                // Reaped in the background; the engine outlives this process.
                std::thread::spawn(move || child.wait());
                return Ok(client);
            }
            match left {
                // An engine that lost the race leaves at once, with success:
                // the winner is about to listen.
                None => {
                    if let Some(status) = child.try_wait().context("waiting for kiln engine")? {
                        if !status.success() {
                            let log = start.state_dir.join("engine.log");
                            anyhow::bail!(
                                "the engine for {} did not start ({status}); the end of {}:\n{}",
                                start.state_dir.display(),
                                log.display(),
                                tail(&log)
                            );
                        }
                        left = Some(std::time::Instant::now());
                    }
                }
                // The winner does not listen: it is stopping. Start another.
                Some(at) if at.elapsed() > Duration::from_secs(1) => {
                    child = start.spawn()?;
                    left = None;
                }
                Some(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!(
            "the engine for {} did not listen within {} s; see {}",
            start.state_dir.display(),
            START_WAIT.as_secs(),
            start.state_dir.join("engine.log").display()
        )
    }

    /// A session on the engine serving `state_dir` (none running: `None`).
    /// The engine's questions about this host are answered by `host`.
    pub async fn on_engine(
        state_dir: &Path,
        options: kiln_solver::SessionOptions,
        cwd: &Path,
        host: &LocalHost,
    ) -> anyhow::Result<Option<Self>> {
        let endpoint = Endpoint::Unix(state_dir.join(protocol::SOCKET));
        let attached = client::attach(&endpoint, options, cwd, host.clone()).await?;
        Ok(attached.map(|attached| Client {
            attached,
            state_dir: Some(state_dir.to_path_buf()),
        }))
    }

    /// A session on the engine at `endpoint` (`KILN_HOST`), which must be
    /// running: clients start only the engines of their own state dir.
    pub async fn elsewhere(
        endpoint: &Endpoint,
        options: kiln_solver::SessionOptions,
        cwd: &Path,
        host: &LocalHost,
    ) -> anyhow::Result<Self> {
        let attached = client::attach(endpoint, options, cwd, host.clone()).await?;
        let attached = attached.with_context(|| format!("no engine listens at {endpoint} (KILN_HOST)"))?;
        Ok(Client {
            attached,
            state_dir: None,
        })
    }

    /// The session's progress events.
    pub fn events(&self) -> &Events {
        self.attached.events()
    }

    /// The local state directory (none for an engine elsewhere).
    pub fn state_dir(&self) -> Option<&Path> {
        self.state_dir.as_deref()
    }

    /// The API server of the session (the engine answers), accepting
    /// `token`.
    pub fn server(&self, token: String) -> Server {
        Server::forwarding(self.attached.forward(), token)
    }

    /// Ends the session's work: the cache is made durable; what the session
    /// did and why its operations missed the cache.
    pub async fn finish(&self) -> (Stats, Vec<Explanation>) {
        self.attached.finish().await.unwrap_or_else(|e| {
            eprintln!("kiln: warning: {e:#}");
            Default::default()
        })
    }
}

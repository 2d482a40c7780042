//! A client's end of a session on an engine: requests go over the socket,
//! progress events come back, and the engine's questions about this host
//! are answered here, in this process's environment.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use kiln_api::server::{Bytes, Forward, StatusCode};
use kiln_oci::Credentials;
use kiln_solver::explain::Explanation;
use kiln_solver::{Events, HostAccess, LocalHost, SessionOptions, Stats};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::protocol::{self, CommandOutput, HostReply, HostRequest, ToClient, ToEngine, VERSION};
use crate::cache_cmd::CacheCommand;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<(StatusCode, serde_json::Value)>>>>;

/// What a session did, and why its operations missed the cache.
type Summary = (Stats, Vec<Explanation>);

/// What a `kiln cache` command showed, and its error.
type CacheDone = (String, Option<String>);

/// A session on an engine.
pub struct Attached {
    out: mpsc::UnboundedSender<ToEngine>,
    cache_done: Mutex<Option<oneshot::Receiver<CacheDone>>>,
    events: Events,
    next: AtomicU64,
    pending: Pending,
    finished: Mutex<Option<oneshot::Receiver<Summary>>>,
}

/// A connection to the engine listening at `socket`; `None` when no engine
/// listens there.
async fn connect(socket: &Path) -> anyhow::Result<Option<UnixStream>> {
    match UnixStream::connect(socket).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("connecting to the engine at {}", socket.display())),
    }
}

/// Asks the engine at `socket` one thing outside a session (`Status`,
/// `Stop`) and returns its answer; `None` when no engine listens there.
pub async fn ask(socket: &Path, message: ToEngine) -> anyhow::Result<Option<ToClient>> {
    let Some(stream) = connect(socket).await? else {
        return Ok(None);
    };
    let (read, write) = stream.into_split();
    let out = protocol::writer::<ToEngine>(write);
    out.send(message).context("the engine closed the connection")?;
    let answer = protocol::read::<ToClient>(&mut protocol::lines(read)).await?;
    answer
        .map(Some)
        .context("the engine closed the connection without answering")
}

/// Opens a session on the engine listening at `socket`; `None` when no
/// engine listens there.
/// The engine's questions about this host are answered by `host`.
pub async fn attach(
    socket: &Path,
    options: SessionOptions,
    cwd: &Path,
    host: LocalHost,
) -> anyhow::Result<Option<Arc<Attached>>> {
    let Some(stream) = connect(socket).await? else {
        return Ok(None);
    };
    let (read, write) = stream.into_split();
    let out = protocol::writer::<ToEngine>(write);
    let mut lines = protocol::lines(read);
    let hello = ToEngine::Hello {
        version: VERSION,
        options,
        cwd: cwd.to_path_buf(),
    };
    out.send(hello).context("the engine closed the connection")?;
    match protocol::read::<ToClient>(&mut lines).await? {
        Some(ToClient::Ready) => {}
        Some(ToClient::Refused { message }) => anyhow::bail!("the engine at {} refused: {message}", socket.display()),
        _ => anyhow::bail!("the engine at {} did not open a session", socket.display()),
    }
    let (finished_tx, finished_rx) = oneshot::channel();
    let (cache_tx, cache_rx) = oneshot::channel();
    let attached = Arc::new(Attached {
        out: out.clone(),
        cache_done: Mutex::new(Some(cache_rx)),
        events: Events::default(),
        next: AtomicU64::new(0),
        pending: Pending::default(),
        finished: Mutex::new(Some(finished_rx)),
    });
    let (events, pending) = (attached.events.clone(), attached.pending.clone());
    tokio::spawn(async move {
        let (mut finished, mut cache_done) = (Some(finished_tx), Some(cache_tx));
        while let Ok(Some(message)) = protocol::read::<ToClient>(&mut lines).await {
            match message {
                ToClient::Event { event } => events.send(event),
                ToClient::Response { id, status, body } => {
                    if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
                        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        let _ = tx.send((status, body));
                    }
                }
                ToClient::Host { id, request } => {
                    let (out, host) = (out.clone(), host.clone());
                    tokio::task::spawn_blocking(move || {
                        let _ = out.send(ToEngine::Host {
                            id,
                            reply: answer(&host, request),
                        });
                    });
                }
                ToClient::Finished { stats, explanations } => {
                    if let Some(tx) = finished.take() {
                        let _ = tx.send((stats, explanations));
                    }
                }
                ToClient::Warning { message } => eprintln!("kiln: warning: {message}"),
                ToClient::Log { line } => eprintln!("kiln engine: {line}"),
                ToClient::CacheDone { output, error } => {
                    if let Some(tx) = cache_done.take() {
                        let _ = tx.send((output, error));
                    }
                }
                ToClient::Ready | ToClient::Refused { .. } | ToClient::Status(_) | ToClient::Stopping { .. } => {}
            }
        }
        // The engine is gone: requests still waiting get an error.
        pending.lock().expect("pending lock").clear();
    });
    Ok(Some(attached))
}

/// Answers an engine's question about this host.
fn answer(host: &LocalHost, request: HostRequest) -> HostReply {
    match request {
        HostRequest::Env { name } => HostReply::Env(host.env(&name)),
        HostRequest::ReadFile { path } => HostReply::ReadFile(host.read_to_string(&path).map_err(|e| e.to_string())),
        HostRequest::Command { command } => HostReply::Command(
            host.command_output(&command)
                .map(|out| {
                    use std::os::unix::process::ExitStatusExt;
                    CommandOutput {
                        status: out.status.into_raw(),
                        stdout: out.stdout,
                        stderr: out.stderr,
                    }
                })
                .map_err(|e| e.to_string()),
        ),
        HostRequest::RegistryCredentials { registry } => HostReply::RegistryCredentials(
            host.registry_credentials(&registry)
                .map(|c| match c {
                    Credentials::Basic { username, password } => Some((username, password)),
                    Credentials::Anonymous => None,
                })
                .map_err(|e| e.to_string()),
        ),
    }
}

impl Attached {
    /// The session's progress events, as the engine sends them.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Answers a GraphQL request body through the engine.
    pub async fn request(&self, body: Bytes) -> (StatusCode, serde_json::Value) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let body = String::from_utf8_lossy(&body).into_owned();
        let gone = || {
            let message = "the engine serving this session went away (see its log)";
            (
                StatusCode::BAD_GATEWAY,
                serde_json::json!({ "errors": [{ "message": message }] }),
            )
        };
        if self.out.send(ToEngine::Request { id, body }).is_err() {
            return gone();
        }
        rx.await.unwrap_or_else(|_| gone())
    }

    /// The API server's backend: requests go to the engine.
    pub fn forward(self: &Arc<Self>) -> Forward {
        let attached = self.clone();
        Arc::new(move |body| {
            let attached = attached.clone();
            Box::pin(async move { attached.request(body).await })
        })
    }

    /// Runs a `kiln cache` command on the engine: what it shows, and how
    /// it ended.
    pub async fn cache(&self, command: &CacheCommand) -> anyhow::Result<(String, anyhow::Result<()>)> {
        let done = self.cache_done.lock().expect("cache lock").take();
        let done = done.context("a cache command ran on this session already")?;
        self.out
            .send(ToEngine::Cache {
                command: command.clone(),
            })
            .map_err(|_| anyhow::anyhow!("the engine went away"))?;
        let (output, error) = done.await.context("the engine went away during the cache command")?;
        Ok((output, error.map_or(Ok(()), |e| Err(anyhow::anyhow!(e)))))
    }

    /// Ends the session's work: the engine makes the cache durable and
    /// says what the session did.
    pub async fn finish(&self) -> anyhow::Result<Summary> {
        let finished = self.finished.lock().expect("finished lock").take();
        let finished = finished.context("the session was finished already")?;
        self.out
            .send(ToEngine::Finish)
            .map_err(|_| anyhow::anyhow!("the engine went away"))?;
        finished
            .await
            .context("the engine went away before the end of the session")
    }
}

//! A client's end of a session on an engine: requests go over the socket,
//! progress events come back, and the engine's questions about this host
//! are answered here, in this process's environment.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use kiln_api::server::{Bytes, Forward, StatusCode};
use kiln_solver::explain::Explanation;
use kiln_solver::{Events, LocalHost, SessionOptions, Stats};
use rustls::pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;

use super::answers::Answers;
use super::protocol::{self, Incoming, Stream, ToClient, ToEngine};
use super::tls::{SELF_SIGNED_NAME, Trust};
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

/// Where an engine listens.
#[derive(Clone)]
pub enum Endpoint {
    /// A Unix socket (a state dir's `engine.sock`).
    Unix(PathBuf),
    /// TCP, with TLS and the engine's token.
    Tcp {
        addr: String,
        tls: TlsConnector,
        name: ServerName<'static>,
        token: String,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "tcp://{addr}"),
        }
    }
}

impl Endpoint {
    /// Reads `unix:///path/engine.sock` or `tcp://host:port` (`KILN_HOST`).
    /// A TCP engine is trusted as `trust` says and given `token`.
    pub fn parse(text: &str, trust: Option<&Trust>, token: Option<String>) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let Some(addr) = text.strip_prefix("tcp://") else {
            anyhow::bail!("engine address {text:?}: expected unix:///path or tcp://host:port");
        };
        let Some(trust) = trust else {
            anyhow::bail!(
                "engine {text}: say how to trust its certificate: KILN_TLS_FINGERPRINT (printed by `kiln engine \
                 --listen`) or KILN_TLS_CA (a CA's PEM file)"
            );
        };
        let Some(token) = token else {
            anyhow::bail!("engine {text}: set KILN_TOKEN (or KILN_TOKEN_FILE) to the engine's token");
        };
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let name = match trust {
            Trust::Fingerprint(_) => ServerName::try_from(SELF_SIGNED_NAME.to_string()),
            Trust::Ca(_) => ServerName::try_from(host.trim_matches(['[', ']']).to_string()),
        }
        .with_context(|| format!("engine {text}: {host} is not a host name"))?;
        Ok(Endpoint::Tcp {
            addr: addr.to_string(),
            tls: super::tls::client(trust)?,
            name,
            token,
        })
    }

    /// A connection, ready for its first message; `None` when no engine
    /// listens on a Unix socket (a TCP engine that does not answer is an
    /// error: clients start only local engines).
    async fn connect(&self) -> anyhow::Result<Option<(Incoming, mpsc::UnboundedSender<ToEngine>)>> {
        let stream: Box<dyn Stream> = match self {
            Endpoint::Unix(socket) => match UnixStream::connect(socket).await {
                Ok(stream) => Box::new(stream),
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
                    return Ok(None);
                }
                Err(e) => return Err(e).with_context(|| format!("connecting to the engine at {self}")),
            },
            Endpoint::Tcp { addr, tls, name, .. } => {
                let tcp = TcpStream::connect(addr.as_str())
                    .await
                    .with_context(|| format!("connecting to the engine at {self}"))?;
                let stream = tls
                    .connect(name.clone(), tcp)
                    .await
                    .with_context(|| format!("TLS with the engine at {self}"))?;
                Box::new(stream)
            }
        };
        let (lines, out) = protocol::split::<ToEngine>(stream, true)
            .await
            .map_err(|e| engine_speaks(self, e))?;
        if let Endpoint::Tcp { token, .. } = self {
            out.send(ToEngine::Auth { token: token.clone() })
                .context("the engine closed the connection")?;
        }
        Ok(Some((lines, out)))
    }
}

/// What to do about an engine that does not speak this client's protocol
/// (`e` says what it speaks).
fn engine_speaks(endpoint: &Endpoint, e: io::Error) -> anyhow::Error {
    match endpoint {
        Endpoint::Unix(socket) => {
            let lock = socket.with_file_name("engine.lock");
            let pid = std::fs::read_to_string(lock).unwrap_or_default();
            let pid = pid.trim();
            anyhow::anyhow!(
                "the engine at {endpoint} (pid {pid}) cannot serve this client: {e}; it is probably another \
                 version of kiln: stop it (`kill {pid}`) and run again, which starts this version's engine"
            )
        }
        Endpoint::Tcp { .. } => anyhow::anyhow!(
            "the engine at {endpoint} cannot serve this client: {e}; use the same version of kiln as the engine"
        ),
    }
}

/// Asks the engine at `endpoint` one thing outside a session (`Status`,
/// `Stop`) and returns its answer; `None` when no engine listens there.
pub async fn ask(endpoint: &Endpoint, message: ToEngine) -> anyhow::Result<Option<ToClient>> {
    let Some((mut lines, out)) = endpoint.connect().await? else {
        return Ok(None);
    };
    out.send(message).context("the engine closed the connection")?;
    let answer = lines.read::<ToClient>().await?;
    answer
        .map(Some)
        .context("the engine closed the connection without answering")
}

/// Opens a session on the engine at `endpoint`; `None` when no engine
/// listens there. The engine's questions about this host are answered by
/// `host`.
pub async fn attach(
    endpoint: &Endpoint,
    options: SessionOptions,
    cwd: &Path,
    host: LocalHost,
) -> anyhow::Result<Option<Arc<Attached>>> {
    let Some((mut lines, out)) = endpoint.connect().await? else {
        return Ok(None);
    };
    let hello = ToEngine::Hello {
        options,
        cwd: cwd.to_path_buf(),
    };
    out.send(hello).context("the engine closed the connection")?;
    match lines.read::<ToClient>().await? {
        Some(ToClient::Ready) => {}
        Some(ToClient::Refused { message }) => anyhow::bail!("the engine at {endpoint} refused: {message}"),
        _ => anyhow::bail!("the engine at {endpoint} did not open a session"),
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
        let mut answers = Answers::new(host, out);
        while let Ok(Some(message)) = lines.read::<ToClient>().await {
            match message {
                ToClient::Event { event } => events.send(event),
                ToClient::Response { id, status, body } => {
                    if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
                        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        let _ = tx.send((status, body));
                    }
                }
                ToClient::Host { id, request } => answers.handle(id, request),
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

//! `kiln engine`: one engine for a state dir, serving its clients' sessions
//! on the Unix socket in it.

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kiln_api::{Api, Server};
use kiln_solver::{Engine, Session};
use kiln_store::KeepStorage;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::client_host::{ClientHost, Uploads};
use super::protocol::{self, EngineStatus, SOCKET, Stream, ToClient, ToEngine};

/// Claims the right to serve `state_dir`: `None` when another engine
/// serves it (an error unless `quiet`: a client started this engine and
/// will find the other one). Held until the returned lock is dropped.
pub fn claim(state_dir: &Path, quiet: bool) -> anyhow::Result<Option<File>> {
    kiln_store::prepare_root(state_dir).with_context(|| format!("preparing {}", state_dir.display()))?;
    let path = state_dir.join("engine.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if !kiln_store::try_lock(&lock) {
        if quiet {
            return Ok(None);
        }
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "an engine (pid {}) serves {} already; stop it first (kill {})",
            holder.trim(),
            state_dir.display(),
            holder.trim()
        );
    }
    Ok(Some(lock))
}

/// What the engine's connections share.
struct Served {
    engine: Arc<Engine>,
    budget: KeepStorage,
    started: Instant,
    /// Open connections.
    connections: AtomicUsize,
    /// Connections that are sessions.
    sessions: AtomicUsize,
    /// A connection ended.
    ended: Notify,
    /// Set by `kiln engine stop`: how long to wait for the sessions.
    stop: watch::Sender<Option<Duration>>,
    /// What remote clients uploaded last, by directory.
    uploads: Uploads,
}

/// A TCP listener for remote clients: TLS, then the engine's token.
pub struct Tcp {
    listener: TcpListener,
    tls: TlsAcceptor,
    token: Arc<String>,
}

/// How long a TCP client has for its TLS handshake and its token.
const HANDSHAKE: Duration = Duration::from_secs(10);

impl Tcp {
    /// Listens on `addr` (`host:port`; port 0: any), with the certificate
    /// and key `files` (else the state dir's self-signed pair) and the
    /// token in `token_file` (else `<state_dir>/tls/token`, made once).
    /// Says where, with what fingerprint and which token file, on stderr.
    pub async fn listen(
        state_dir: &Path,
        addr: &str,
        files: Option<(&Path, &Path)>,
        token_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let tls = super::tls::server(state_dir, files)?;
        let token_path = match token_file {
            Some(path) => path.to_path_buf(),
            None => super::tls::own_token(state_dir)?,
        };
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading the token {}", token_path.display()))?
            .trim()
            .to_string();
        if token.len() < 16 {
            anyhow::bail!("the token in {} is shorter than 16 characters", token_path.display());
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on tcp://{addr}"))?;
        let bound = listener.local_addr().context("the listening address")?;
        eprintln!(
            "kiln engine: listening on tcp://{bound} (TLS certificate {}; token in {})",
            tls.fingerprint,
            token_path.display()
        );
        Ok(Self {
            listener,
            tls: tls.acceptor,
            token: Arc::new(token),
        })
    }
}

/// Makes a TCP client do its TLS handshake and give the token; one that
/// fails either is answered (when it got as far as TLS) and dropped.
async fn authenticate(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: TlsAcceptor,
    token: Arc<String>,
) -> Option<(protocol::Incoming, mpsc::UnboundedSender<ToClient>)> {
    let stream: Box<dyn Stream> = match tokio::time::timeout(HANDSHAKE, tls.accept(tcp)).await {
        Ok(Ok(stream)) => Box::new(stream),
        Ok(Err(e)) => {
            tracing::warn!(%peer, "a TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::warn!(%peer, "a client did not finish its TLS handshake in time");
            return None;
        }
    };
    let greeted = tokio::time::timeout(HANDSHAKE, protocol::split::<ToClient>(stream, false)).await;
    let (mut lines, out) = match greeted {
        Ok(Ok(split)) => split,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "a client failed its greeting: {e}");
            return None;
        }
        Err(_) => {
            tracing::warn!(%peer, "a client did not greet in time");
            return None;
        }
    };
    let given = match tokio::time::timeout(HANDSHAKE, lines.read::<ToEngine>()).await {
        Ok(Ok(Some(ToEngine::Auth { token }))) => token,
        _ => String::new(),
    };
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        tracing::warn!(%peer, "a client gave no or a wrong token");
        let message = "wrong or missing engine token: set KILN_TOKEN to the token the engine names".into();
        let _ = out.send(ToClient::Refused { message });
        return None;
    }
    lines.trust();
    Some((lines, out))
}

/// Serves `engine` on the socket in its state dir (and `tcp`, when given)
/// until a signal, until the state dir is removed, until `kiln engine
/// stop`, or until no client was connected for `idle` (when given).
pub async fn serve(
    engine: Arc<Engine>,
    idle: Option<Duration>,
    budget: KeepStorage,
    tcp: Option<Tcp>,
) -> anyhow::Result<()> {
    let root = engine.store().root().to_path_buf();
    let socket = root.join(SOCKET);
    let listener = listen(&socket)?;
    tracing::info!(socket = %socket.display(), "serving");
    let served = Arc::new(Served {
        engine: engine.clone(),
        budget,
        started: Instant::now(),
        connections: AtomicUsize::new(0),
        sessions: AtomicUsize::new(0),
        ended: Notify::new(),
        stop: watch::channel(None).0,
        uploads: Uploads::default(),
    });
    let mut stop = served.stop.subscribe();
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut idle_since = Some(Instant::now());
    let mut draining: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            accepted = listener.accept(), if draining.is_none() => {
                let (stream, _) = accepted.context("accepting a client")?;
                idle_since = None;
                spawn_connection(&served, Connection::Local(Box::new(stream)));
            }
            accepted = remote(&tcp), if draining.is_none() => {
                idle_since = None;
                spawn_connection(&served, accepted.context("accepting a remote client")?);
            }
            _ = served.ended.notified() => {
                if served.connections.load(Ordering::SeqCst) == 0 {
                    idle_since = Some(Instant::now());
                }
            }
            Ok(()) = stop.changed(), if draining.is_none() => {
                let wait = stop.borrow().unwrap_or_default();
                tracing::info!("stopping: waiting up to {} for the sessions", kiln_store::format_duration(wait));
                // New clients start a new engine once this one is gone.
                let _ = std::fs::remove_file(&socket);
                draining = Some(Instant::now() + wait);
            }
            _ = tick.tick() => {
                if !root.exists() {
                    tracing::info!("the state directory was removed: stopping");
                    break;
                }
                if let Some(deadline) = draining
                    && (served.sessions.load(Ordering::SeqCst) == 0 || Instant::now() >= deadline)
                {
                    break;
                }
                if let (Some(idle), Some(since)) = (idle, idle_since)
                    && since.elapsed() >= idle
                {
                    tracing::info!("no client for {}: stopping", kiln_store::format_duration(idle));
                    break;
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&socket);
    // The last containers' namespaces and addresses are released (also
    // when the state dir is gone: they live outside it).
    if let Some(network) = engine.network().cloned() {
        let _ = tokio::task::spawn_blocking(move || network.settle()).await;
    }
    if root.exists() {
        engine.store().flush().context("making the cache durable")?;
    }
    Ok(())
}

/// Binds the socket, readable and writable by the engine's user only.
fn listen(socket: &Path) -> anyhow::Result<UnixListener> {
    // A socket left by an engine that was killed: this engine holds the
    // state dir now, so nobody else serves it.
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the stale socket {}", socket.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", socket.display()))?;
    Ok(listener)
}

/// A connection: on the local socket, or from a TCP client (TLS and the
/// token still to come).
enum Connection {
    Local(Box<dyn Stream>),
    Tcp {
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        tls: TlsAcceptor,
        token: Arc<String>,
    },
}

/// The next TCP client (never, without a TCP listener).
async fn remote(tcp: &Option<Tcp>) -> io::Result<Connection> {
    let Some(tcp) = tcp else {
        return std::future::pending().await;
    };
    let (stream, peer) = tcp.listener.accept().await?;
    Ok(Connection::Tcp {
        stream,
        peer,
        tls: tcp.tls.clone(),
        token: tcp.token.clone(),
    })
}

/// Serves a connection in a task of its own.
fn spawn_connection(served: &Arc<Served>, connection: Connection) {
    served.connections.fetch_add(1, Ordering::SeqCst);
    let served = served.clone();
    tokio::spawn(async move {
        let accepted = match connection {
            Connection::Local(stream) => match protocol::split::<ToClient>(stream, true).await {
                Ok((lines, out)) => Some((lines, out, false)),
                Err(e) => {
                    tracing::warn!("a local client failed its greeting: {e}");
                    None
                }
            },
            Connection::Tcp {
                stream,
                peer,
                tls,
                token,
            } => authenticate(stream, peer, tls, token)
                .await
                .map(|(lines, out)| (lines, out, true)),
        };
        if let Some((lines, out, remote)) = accepted
            && let Err(e) = serve_connection(&served, lines, out, remote).await
        {
            tracing::warn!("a client's session ended with an error: {e:#}");
        }
        served.connections.fetch_sub(1, Ordering::SeqCst);
        served.ended.notify_one();
    });
}

/// One connection: a client's session, from its hello to the end of the
/// connection, or a status or stop request.
async fn serve_connection(
    served: &Served,
    mut lines: protocol::Incoming,
    out: mpsc::UnboundedSender<ToClient>,
    remote: bool,
) -> anyhow::Result<()> {
    let (options, cwd) = match lines.read().await? {
        Some(ToEngine::Hello { options, cwd }) => (options, cwd),
        Some(ToEngine::Status) => {
            let _ = out.send(ToClient::Status(status(served).await));
            return Ok(());
        }
        Some(ToEngine::Stop { timeout_secs }) => {
            let sessions = served.sessions.load(Ordering::SeqCst);
            let _ = out.send(ToClient::Stopping { sessions });
            served.stop.send_replace(Some(Duration::from_secs(timeout_secs)));
            return Ok(());
        }
        _ => anyhow::bail!("the client did not open a session"),
    };
    served.sessions.fetch_add(1, Ordering::SeqCst);
    let result = serve_session(served, options, cwd, &out, &mut lines, remote).await;
    served.sessions.fetch_sub(1, Ordering::SeqCst);
    result
}

/// What the engine is doing.
async fn status(served: &Served) -> EngineStatus {
    let store = served.engine.store().clone();
    let cache_bytes = tokio::task::spawn_blocking(move || store.usage().map(|u| u.cache_bytes()))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    EngineStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: served.started.elapsed().as_secs(),
        sessions: served.sessions.load(Ordering::SeqCst),
        running: served.engine.running_operations(),
        cache_bytes,
        state_dir: served.engine.store().root().to_path_buf(),
    }
}

/// Serves one session until its client goes away.
async fn serve_session(
    served: &Served,
    options: kiln_solver::SessionOptions,
    cwd: std::path::PathBuf,
    out: &mpsc::UnboundedSender<ToClient>,
    lines: &mut protocol::Incoming,
    remote: bool,
) -> anyhow::Result<()> {
    let (engine, budget) = (&served.engine, served.budget);
    let host = Arc::new(ClientHost::new(
        out.clone(),
        remote,
        served.uploads.clone(),
        engine.store(),
    ));
    let session = engine.session_for(host.clone(), options);
    let server = Server::new(Api::new(session.clone(), cwd), String::new()).context("building the schema")?;
    let _ = out.send(ToClient::Ready);
    let mut events = session.events().subscribe();
    let mut log = super::log::subscribe();
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            message = lines.read::<ToEngine>() => match message? {
                Some(ToEngine::Request { id, body }) => {
                    let (server, out) = (server.clone(), out.clone());
                    requests.spawn(async move {
                        let (status, body) = server.answer(body.into()).await;
                        let _ = out.send(ToClient::Response { id, status: status.as_u16(), body });
                    });
                }
                Some(ToEngine::Host { id, reply }) => host.answered(id, reply),
                Some(ToEngine::Finish) => {
                    requests.spawn(finish(engine.clone(), &session, &mut events, out.clone()));
                }
                Some(ToEngine::Cache { command }) => {
                    let (store, out) = (engine.store().clone(), out.clone());
                    requests.spawn(async move {
                        let (output, error) = tokio::task::spawn_blocking(move || {
                            let mut output = String::new();
                            let result = crate::cache_cmd::execute(&store, &budget, None, &command, &mut output);
                            (output, result.err().map(|e| format!("{e:#}")))
                        })
                        .await
                        .unwrap_or_else(|e| (String::new(), Some(e.to_string())));
                        let _ = out.send(ToClient::CacheDone { output, error });
                    });
                }
                Some(ToEngine::Hello { .. } | ToEngine::Status | ToEngine::Stop { .. } | ToEngine::Auth { .. }) => {
                    tracing::warn!("a client asked for a session in its session")
                }
                // The client is gone: its requests are dropped, and with
                // them the work nobody else waits for.
                None => break,
            },
            event = events.recv() => match event {
                Ok(event) => { let _ = out.send(ToClient::Event { event }); }
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!("a client missed {n} progress events"),
                Err(broadcast::error::RecvError::Closed) => {}
            },
            Ok(line) = log.recv() => { let _ = out.send(ToClient::Log { line }); }
            Some(_) = requests.join_next() => {}
        }
    }
    requests.abort_all();
    Ok(())
}

/// Answers [`ToEngine::Finish`]: events sent so far, then the summary.
/// The events so far are sent at once; the flush (a filesystem sync, which
/// may take long on a busy disk) runs off the engine's async threads, so
/// that it never stalls other sessions, and the summary follows it.
fn finish(
    engine: Arc<Engine>,
    session: &Session,
    events: &mut broadcast::Receiver<Arc<kiln_solver::Event>>,
    out: mpsc::UnboundedSender<ToClient>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    while let Ok(event) = events.try_recv() {
        let _ = out.send(ToClient::Event { event });
    }
    let (stats, explanations) = (session.stats(), session.explanations());
    async move {
        let flushed = tokio::task::spawn_blocking(move || engine.store().flush_results()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!("could not make the cache durable: {e}");
        }
        let _ = out.send(ToClient::Finished { stats, explanations });
    }
}

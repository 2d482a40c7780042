//! `kiln engine`: one engine for a state dir, serving its clients' sessions
//! on the Unix socket in it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kiln_api::{Api, Server};
use kiln_oci::Credentials;
use kiln_solver::{Engine, Export, ExportError, HostAccess, HostPathKind, LocalHost, Session};
use kiln_store::host::{FileSource, HostEntry, HostKind};
use kiln_store::{CopyStats, HostError, HostTree, KeepStorage, MergedView, PathFilter, Staged, Store, StoreError};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::protocol::{
    self, EngineStatus, HostReply, HostRequest, SOCKET, ScannedEntry, Stream, ToClient, ToEngine, VERSION,
};

/// Claims the right to serve `state_dir`: `None` when another engine
/// serves it (an error unless `quiet`: a client started this engine and
/// will find the other one). Held until the returned lock is dropped.
pub fn claim(state_dir: &Path, quiet: bool) -> anyhow::Result<Option<File>> {
    use std::os::fd::AsRawFd;
    kiln_store::prepare_root(state_dir).with_context(|| format!("preparing {}", state_dir.display()))?;
    let path = state_dir.join("engine.lock");
    let mut lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
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
    lock.set_len(0)
        .and_then(|_| lock.write_all(std::process::id().to_string().as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
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

/// The selection last uploaded from each directory of remote clients (its
/// digest finds its snapshot while it is stored).
type Uploads = Arc<Mutex<HashMap<std::path::PathBuf, Arc<HostTree>>>>;

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
    let (mut lines, out) = protocol::split::<ToClient>(stream);
    let given = match tokio::time::timeout(HANDSHAKE, protocol::read::<ToEngine>(&mut lines)).await {
        Ok(Ok(Some(ToEngine::Auth { token }))) => token,
        _ => String::new(),
    };
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        tracing::warn!(%peer, "a client gave no or a wrong token");
        let message = "wrong or missing engine token: set KILN_TOKEN to the token the engine names".into();
        let _ = out.send(ToClient::Refused { message });
        return None;
    }
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
                    return Ok(());
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
    engine.store().flush().context("making the cache durable")?;
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
            Connection::Local(stream) => {
                let (lines, out) = protocol::split::<ToClient>(stream);
                Some((lines, out, false))
            }
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
    let (options, cwd) = match protocol::read(&mut lines).await? {
        Some(ToEngine::Hello {
            version: VERSION,
            options,
            cwd,
        }) => (options, cwd),
        Some(ToEngine::Hello { version, .. }) => {
            let message = format!(
                "this engine speaks protocol {VERSION}, the client {version}: stop the engine (kiln engine stop) \
                 or use the kiln binary it runs"
            );
            let _ = out.send(ToClient::Refused { message });
            return Ok(());
        }
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
    let host = Arc::new(ClientHost::new(out.clone(), remote, served.uploads.clone()));
    let session = engine.session_for(host.clone(), options);
    let server = Server::new(Api::new(session.clone(), cwd), String::new()).context("building the schema")?;
    let _ = out.send(ToClient::Ready);
    let mut events = session.events().subscribe();
    let mut log = super::log::subscribe();
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            message = protocol::read::<ToEngine>(lines) => match message? {
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
    events: &mut broadcast::Receiver<kiln_solver::Event>,
    out: mpsc::UnboundedSender<ToClient>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    while let Ok(event) = events.try_recv() {
        let _ = out.send(ToClient::Event { event });
    }
    let (stats, explanations) = (session.stats(), session.explanations());
    async move {
        let flushed = tokio::task::spawn_blocking(move || engine.store().flush()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!("could not make the cache durable: {e}");
        }
        let _ = out.send(ToClient::Finished { stats, explanations });
    }
}

/// A client's host, as its session on the engine sees it. Its environment,
/// the files it reads as its user, its commands and its registry
/// credentials are asked of the client. A local client shares the file
/// system (the socket admits only the engine's user), so scans, uploads and
/// exports go to it directly; a remote client's files are not reachable
/// that way, and uploads through the connection are not built yet.
struct ClientHost {
    local: LocalHost,
    remote: bool,
    /// The selection last uploaded from each directory of remote clients.
    uploads: Uploads,
    out: mpsc::UnboundedSender<ToClient>,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<HostReply>>>,
}

impl ClientHost {
    fn new(out: mpsc::UnboundedSender<ToClient>, remote: bool, uploads: Uploads) -> Self {
        Self {
            local: LocalHost::default(),
            remote,
            uploads,
            out,
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Asks the client and waits for its answer (these calls are blocking,
    /// and come from the engine's worker threads).
    fn ask(&self, request: HostRequest) -> io::Result<HostReply> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the client went away");
        self.out.send(ToClient::Host { id, request }).map_err(|_| gone())?;
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(rx)).map_err(|_| gone())
    }

    fn answered(&self, id: u64, reply: HostReply) {
        if let Some(tx) = self.pending.lock().expect("pending lock").remove(&id) {
            let _ = tx.send(reply);
        }
    }
}

fn unexpected() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the client answered another question")
}

/// An entry a client scanned, as the store knows entries.
fn reported(e: ScannedEntry) -> io::Result<HostEntry> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", e.rel.display()));
    if !protocol::plain_relative(&e.rel) {
        return Err(bad("not a plain relative path"));
    }
    let kind = match (e.kind.as_str(), &e.target) {
        ("dir", _) => HostKind::Dir,
        ("file", _) => HostKind::File(e.size),
        ("symlink", Some(target)) => HostKind::Symlink(target.clone()),
        _ => return Err(bad("an unknown kind of entry")),
    };
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&e.digest, &mut digest).map_err(|_| bad("a malformed digest"))?;
    Ok(HostEntry::reported(e.rel, kind, e.mode, digest))
}

/// The most content one answer of a client carries.
const CONTENT_BATCH: u64 = 4 << 20;

/// Files of a client's host directory, asked of the client in batches and
/// checked against the digests of its scan.
struct ClientFiles<'a> {
    host: &'a ClientHost,
    root: &'a Path,
    /// The previous upload of the same directory, if still stored: its
    /// snapshot, and the digest of each of its files (checked when they
    /// came, so never read again to compare).
    previous: Option<(MergedView, HashMap<&'a Path, [u8; 32]>)>,
}

impl ClientFiles<'_> {
    /// Copies `e` from the previous upload when that holds the same
    /// content at the same path; whether it did.
    fn copy_unchanged(&self, e: &HostEntry, to: &Path) -> bool {
        let Some((view, digests)) = &self.previous else {
            return false;
        };
        if digests.get(e.rel.as_path()) != Some(&e.digest) {
            return false;
        }
        let Ok(Some(old)) = view.lookup(&e.rel) else {
            return false;
        };
        old.meta.is_file() && std::fs::copy(&old.real, to).is_ok()
    }
}

impl FileSource for ClientFiles<'_> {
    fn write(&self, files: &[&HostEntry], dest: &Path) -> Result<(), HostError> {
        use base64::Engine as _;
        let wanted: Vec<&HostEntry> = files
            .iter()
            .copied()
            .filter(|e| !self.copy_unchanged(e, &dest.join(&e.rel)))
            .collect();
        tracing::debug!(
            root = %self.root.display(),
            unchanged = files.len() - wanted.len(),
            asked = wanted.len(),
            "uploading from a client"
        );
        let mut rest = wanted.as_slice();
        while !rest.is_empty() {
            let mut size = 0;
            let n = rest
                .iter()
                .take_while(|e| {
                    size += e.stat.size;
                    size <= CONTENT_BATCH
                })
                .count()
                .max(1);
            let (batch, later) = rest.split_at(n);
            rest = later;
            let failed = |source: io::Error| HostError {
                path: self.root.join(&batch[0].rel),
                source,
            };
            let request = HostRequest::ReadFiles {
                root: self.root.to_path_buf(),
                rels: batch.iter().map(|e| e.rel.clone()).collect(),
            };
            let contents = match self.host.ask(request).map_err(failed)? {
                HostReply::ReadFiles(Ok(contents)) if contents.len() == batch.len() => contents,
                HostReply::ReadFiles(Err(message)) => return Err(failed(io::Error::other(message))),
                _ => return Err(failed(unexpected())),
            };
            for (e, content) in batch.iter().zip(contents) {
                let path = self.root.join(&e.rel);
                let failed = |source: io::Error| HostError {
                    path: path.clone(),
                    source,
                };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                if *blake3::hash(&bytes).as_bytes() != e.digest {
                    return Err(failed(io::Error::other("changed while kiln was reading it; run again")));
                }
                let to = dest.join(&e.rel);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&to)
                    .and_then(|mut f| f.write_all(&bytes))
                    .map_err(|source| HostError { path: to, source })?;
            }
        }
        Ok(())
    }
}

/// What a remote client cannot do yet.
fn not_remote(what: &str) -> io::Error {
    io::Error::other(format!(
        "{what} of a client on another machine are not supported yet (kiln issue 11): run the pipeline \
         on the engine's machine, or without KILN_HOST"
    ))
}

impl HostAccess for ClientHost {
    fn kind(&self, path: &Path) -> HostPathKind {
        if !self.remote {
            return self.local.kind(path);
        }
        match self.ask(HostRequest::Kind { path: path.into() }) {
            Ok(HostReply::Kind(kind)) => match kind.as_str() {
                "directory" => HostPathKind::Directory,
                "file" => HostPathKind::File,
                "other" => HostPathKind::Other,
                _ => HostPathKind::Missing,
            },
            _ => HostPathKind::Missing,
        }
    }

    fn env(&self, name: &str) -> Option<String> {
        match self.ask(HostRequest::Env { name: name.into() }) {
            Ok(HostReply::Env(value)) => value,
            _ => None,
        }
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        match self.ask(HostRequest::ReadFile { path: path.into() })? {
            HostReply::ReadFile(result) => result.map_err(io::Error::other),
            _ => Err(unexpected()),
        }
    }

    fn command_output(&self, command: &str) -> io::Result<std::process::Output> {
        use std::os::unix::process::ExitStatusExt;
        match self.ask(HostRequest::Command {
            command: command.into(),
        })? {
            HostReply::Command(result) => {
                let out = result.map_err(io::Error::other)?;
                Ok(std::process::Output {
                    status: std::process::ExitStatus::from_raw(out.status),
                    stdout: out.stdout,
                    stderr: out.stderr,
                })
            }
            _ => Err(unexpected()),
        }
    }

    fn export(&self, view: &MergedView, export: &Export) -> Result<CopyStats, ExportError> {
        if self.remote {
            return Err(ExportError::Create {
                path: export.dest.clone(),
                source: not_remote("exports to the host"),
            });
        }
        self.local.export(view, export)
    }

    fn scan_dir(&self, store: &Store, root: &Path, filter: &PathFilter) -> Result<HostTree, HostError> {
        if !self.remote {
            return self.local.scan_dir(store, root, filter);
        }
        let failed = |source: io::Error| HostError {
            path: root.to_path_buf(),
            source,
        };
        let (include, exclude) = filter.patterns();
        let request = HostRequest::ScanDir {
            root: root.to_path_buf(),
            include: include.to_vec(),
            exclude: exclude.to_vec(),
        };
        let entries = match self.ask(request).map_err(failed)? {
            HostReply::ScanDir(Ok(entries)) => entries,
            HostReply::ScanDir(Err(message)) => return Err(failed(io::Error::other(message))),
            _ => return Err(failed(unexpected())),
        };
        let entries = entries
            .into_iter()
            .map(reported)
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        Ok(HostTree::reported(root.to_path_buf(), entries))
    }

    fn upload_dir(&self, store: &Store, tree: &HostTree) -> Result<Staged, StoreError> {
        if !self.remote {
            return self.local.upload_dir(store, tree);
        }
        // The previous upload of this directory: its files that are
        // unchanged are copied here instead of sent again.
        let before = self.uploads.lock().expect("uploads lock").get(&tree.root).cloned();
        let previous = before.as_deref().and_then(|before| {
            let id = store.db().host_content(&before.digest).ok().flatten()?;
            let view = store.view(Some(id)).ok()?;
            let digests = before
                .entries
                .iter()
                .filter(|e| matches!(e.kind, HostKind::File(_)))
                .map(|e| (e.rel.as_path(), e.digest))
                .collect();
            Some((view, digests))
        });
        let staged = store.import_host_from(
            tree,
            &ClientFiles {
                host: self,
                root: &tree.root,
                previous,
            },
        )?;
        self.uploads
            .lock()
            .expect("uploads lock")
            .insert(tree.root.clone(), Arc::new(tree.clone()));
        Ok(staged)
    }

    fn registry_credentials(&self, host: &str) -> Result<Credentials, kiln_oci::Error> {
        let asked = self.ask(HostRequest::RegistryCredentials { registry: host.into() });
        let refused = |reason: String| kiln_oci::Error::Credentials {
            path: "the client's docker config".into(),
            reason,
        };
        match asked.map_err(|e| refused(e.to_string()))? {
            HostReply::RegistryCredentials(Ok(Some((username, password)))) => {
                Ok(Credentials::Basic { username, password })
            }
            HostReply::RegistryCredentials(Ok(None)) => Ok(Credentials::Anonymous),
            HostReply::RegistryCredentials(Err(reason)) => Err(refused(reason)),
            _ => Err(refused(unexpected().to_string())),
        }
    }

    fn warn(&self, message: &str) {
        let _ = self.out.send(ToClient::Warning {
            message: message.to_string(),
        });
    }
}

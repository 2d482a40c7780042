//! What an engine (`kiln engine`) and its clients say to each other over
//! the Unix socket in the state dir or TLS: each side first sends a
//! preamble naming the protocol's version, then frames, each a JSON
//! message and the raw bytes it carries (file contents), both ways. One
//! connection is one session; closing it ends the session.

use std::io;
use std::path::PathBuf;

use kiln_oci::Credentials;
use kiln_solver::explain::Explanation;
use kiln_solver::{Event, HostPathKind, SessionOptions, Stats};
use kiln_store::HostPolicy;
use kiln_store::host::HostKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::cache_cmd::CacheCommand;

/// The socket's name in the state dir.
pub const SOCKET: &str = "engine.sock";

/// The protocol's version, in the preamble: an engine refuses clients of
/// another, and a client says what to do about it.
pub const VERSION: u32 = 2;

/// What each side sends first (then the version and a newline).
const PREAMBLE: &str = "kiln-engine-protocol ";

/// From a client to its engine.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToEngine {
    /// The engine's token (the first message over TCP).
    Auth { token: String },
    /// Opens the session (the first message).
    Hello {
        options: SessionOptions,
        /// The directory the client's relative host paths are relative to.
        cwd: PathBuf,
    },
    /// A GraphQL request body (already authenticated by the client).
    Request { id: u64, body: String },
    /// The answer to a [`ToClient::Host`] request.
    Host { id: u64, reply: HostReply },
    /// The client is done: make the cache durable and send the summary.
    Finish,
    /// A `kiln cache` command to run on the engine's store.
    Cache { command: CacheCommand },
    /// What the engine is doing (instead of a hello; `kiln engine status`).
    Status,
    /// Stop serving: refuse new clients, wait up to `timeout_secs` for the
    /// sessions to end, then end them (instead of a hello).
    Stop { timeout_secs: u64 },
}

/// From an engine to a client.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToClient {
    /// The session is open.
    Ready,
    /// The session was refused; the message says why.
    Refused { message: String },
    /// Progress of one of the session's operations.
    Event { event: std::sync::Arc<Event> },
    /// The answer to a [`ToEngine::Request`].
    Response {
        id: u64,
        status: u16,
        body: serde_json::Value,
    },
    /// Something only the client's host can answer.
    Host { id: u64, request: HostRequest },
    /// Something the client should tell its user (not an error).
    Warning { message: String },
    /// A line of the engine's log (warnings, garbage collection).
    Log { line: String },
    /// The answer to [`ToEngine::Finish`].
    Finished {
        stats: Stats,
        explanations: Vec<Explanation>,
    },
    /// The answer to [`ToEngine::Cache`]: what it shows, and its error.
    CacheDone { output: String, error: Option<String> },
    /// The answer to [`ToEngine::Status`].
    Status(EngineStatus),
    /// The answer to [`ToEngine::Stop`]: the engine drains.
    Stopping { sessions: usize },
}

/// What an engine is doing.
#[derive(Debug, Serialize, Deserialize)]
pub struct EngineStatus {
    /// kiln's version.
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// Connected sessions.
    pub sessions: usize,
    /// Operations running or about to run.
    pub running: usize,
    /// Bytes the cache holds (budgeted: snapshots, blobs, stat caches).
    pub cache_bytes: u64,
    /// The state directory.
    pub state_dir: PathBuf,
}

/// A question about the client's host (its environment, its files as its
/// user reads them, its commands).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostRequest {
    /// An environment variable of the client.
    Env { name: String },
    /// A file, read by the client.
    ReadFile { path: PathBuf },
    /// `sh -c command`, run by the client.
    Command { command: String },
    /// The client's credentials for a registry host (its docker config).
    RegistryCredentials { registry: String },
    /// What is at a path of the client's host.
    Kind { path: PathBuf },
    /// The selection of a host directory (scanned by the client, with its
    /// own stat cache): paths, kinds, modes and content digests.
    ScanDir {
        root: PathBuf,
        include: Vec<String>,
        exclude: Vec<String>,
        /// Whether `.gitignore` files apply too.
        #[serde(default)]
        gitignore: bool,
    },
    /// The contents of files of a host directory, whole or in pieces
    /// (answered with the pieces one after another as the payload).
    ReadFiles { root: PathBuf, pieces: Vec<Piece> },
    /// Starts an export to the client's host: a tar stream follows in
    /// [`HostRequest::ExportData`] requests, then [`HostRequest::ExportEnd`].
    ExportBegin { export: u64, to: ExportTo },
    /// The next bytes of an export's tar stream (the payload).
    ExportData {
        export: u64,
        #[serde(skip)]
        data: Vec<u8>,
    },
    /// The end of an export's tar stream: put it in place.
    ExportEnd { export: u64 },
}

/// A piece of a file of a host directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Piece {
    /// A plain relative path under the directory.
    pub rel: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// Where and how an export lands on the client's host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportTo {
    /// The path it becomes.
    pub dest: PathBuf,
    /// The directory to create first.
    pub dir: PathBuf,
    /// Remove `dest` first.
    pub wipe: bool,
    /// What may be created of what grants privileges on the host.
    pub policy: HostPolicy,
}

/// The answer to a [`HostRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostReply {
    Env(Option<String>),
    ReadFile(Result<String, String>),
    Command(Result<CommandOutput, String>),
    RegistryCredentials(Result<Credentials, String>),
    Kind(HostPathKind),
    ScanDir(Result<Vec<ScannedEntry>, String>),
    /// The pieces asked for, one after another, as the payload.
    ReadFiles {
        result: Result<(), String>,
        #[serde(skip)]
        data: Vec<u8>,
    },
    /// An export request was carried out (or how it failed).
    Done(Result<(), String>),
}

/// Whether a path of a scanned directory is plain and relative (no root,
/// no `..`, no `.`): the only kind either side accepts from the other.
pub fn plain_relative(path: &std::path::Path) -> bool {
    path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// One entry of a directory a client scanned.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScannedEntry {
    pub rel: PathBuf,
    pub kind: HostKind,
    pub mode: u32,
    /// BLAKE3 of a file's content, hex (zeros otherwise).
    pub digest: String,
}

/// What a command run by the client gave.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommandOutput {
    /// The raw wait status.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A message that may carry raw bytes (sent after its JSON, never inside).
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// Where its raw bytes go, for the messages that carry some.
    fn payload(&mut self) -> Option<&mut Vec<u8>>;
}

impl Message for ToEngine {
    fn payload(&mut self) -> Option<&mut Vec<u8>> {
        match self {
            ToEngine::Host {
                reply: HostReply::ReadFiles { data, .. },
                ..
            } => Some(data),
            _ => None,
        }
    }
}

impl Message for ToClient {
    fn payload(&mut self) -> Option<&mut Vec<u8>> {
        match self {
            ToClient::Host {
                request: HostRequest::ExportData { data, .. },
                ..
            } => Some(data),
            _ => None,
        }
    }
}

/// A connection to or from an engine: the Unix socket, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for S {}

/// The largest frame read before the peer is trusted (a TCP client before
/// its token): a hello, a token.
pub const UNTRUSTED_FRAME: usize = 64 << 10;

/// The largest frame read from a trusted peer (file contents travel in
/// pieces of a few MiB).
const TRUSTED_FRAME: usize = 64 << 20;

/// The messages arriving on a connection.
pub struct Incoming {
    reader: BufReader<ReadHalf<Box<dyn Stream>>>,
    limit: usize,
}

/// A connection's two directions: the messages arriving, and a sender of
/// messages written in order by a task of their own (which ends when every
/// sender is gone or the peer is). The preambles are exchanged first: an
/// error says which protocol the peer speaks when it is not this one.
pub async fn split<T: Message>(
    stream: Box<dyn Stream>,
    trusted: bool,
) -> io::Result<(Incoming, mpsc::UnboundedSender<T>)> {
    let (read, write) = tokio::io::split(stream);
    let mut write = BufWriter::with_capacity(256 << 10, write);
    write.write_all(format!("{PREAMBLE}{VERSION}\n").as_bytes()).await?;
    write.flush().await?;
    let mut incoming = Incoming {
        reader: BufReader::with_capacity(256 << 10, read),
        limit: if trusted { TRUSTED_FRAME } else { UNTRUSTED_FRAME },
    };
    incoming.preamble().await?;
    let (tx, rx) = mpsc::unbounded_channel::<T>();
    tokio::spawn(write_frames(write, rx));
    Ok((incoming, tx))
}

/// Writes each message as a frame: the JSON's length and the payload's (4
/// bytes each, big-endian), the JSON, the payload. Flushed whenever no
/// other message waits.
async fn write_frames<T: Message>(
    mut write: BufWriter<WriteHalf<Box<dyn Stream>>>,
    mut rx: mpsc::UnboundedReceiver<T>,
) {
    while let Some(mut message) = rx.recv().await {
        let payload = message.payload().map(std::mem::take).unwrap_or_default();
        let json = serde_json::to_vec(&message).expect("messages serialize");
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&(json.len() as u32).to_be_bytes());
        header[4..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        let written = async {
            write.write_all(&header).await?;
            write.write_all(&json).await?;
            write.write_all(&payload).await?;
            if rx.is_empty() {
                write.flush().await?;
            }
            io::Result::Ok(())
        };
        if written.await.is_err() {
            break;
        }
    }
}

impl Incoming {
    /// Reads the peer's preamble and checks its version.
    async fn preamble(&mut self) -> io::Result<()> {
        let mut line = Vec::new();
        (&mut self.reader).take(64).read_until(b'\n', &mut line).await?;
        let text = String::from_utf8_lossy(&line);
        let version = text
            .trim_end()
            .strip_prefix(PREAMBLE)
            .and_then(|v| v.parse::<u32>().ok());
        match version {
            Some(VERSION) => Ok(()),
            Some(other) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it speaks protocol {other}, this kiln {VERSION}"),
            )),
            None if line.is_empty() => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "it closed the connection at once",
            )),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "it does not speak kiln's engine protocol",
            )),
        }
    }

    /// The peer is trusted now (it gave the token): larger frames are read.
    pub fn trust(&mut self) {
        self.limit = TRUSTED_FRAME;
    }

    /// Reads the next message; `None` at the end of the connection.
    pub async fn read<T: Message>(&mut self) -> io::Result<Option<T>> {
        let mut header = [0u8; 8];
        match self.reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let json_len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let payload_len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        let malformed =
            |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("a malformed message: {what}"));
        if json_len + payload_len > self.limit {
            return Err(malformed(format!(
                "{} bytes, over the limit of {}",
                json_len + payload_len,
                self.limit
            )));
        }
        let mut json = vec![0; json_len];
        self.reader.read_exact(&mut json).await?;
        let mut message: T = serde_json::from_slice(&json).map_err(|e| malformed(e.to_string()))?;
        let mut payload = vec![0; payload_len];
        self.reader.read_exact(&mut payload).await?;
        match message.payload() {
            Some(slot) => *slot = payload,
            None if payload.is_empty() => {}
            None => return Err(malformed("raw bytes with a message that carries none".into())),
        }
        Ok(Some(message))
    }
}

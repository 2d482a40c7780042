//! What an engine (`kiln engine`) and its clients say to each other over
//! the Unix socket in the state dir: JSON messages, one per line, both
//! ways. One connection is one session; closing it ends the session.

use std::io;
use std::path::PathBuf;

use kiln_solver::explain::Explanation;
use kiln_solver::{Event, SessionOptions, Stats};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cache_cmd::CacheCommand;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Lines, ReadHalf};
use tokio::sync::mpsc;

/// The socket's name in the state dir.
pub const SOCKET: &str = "engine.sock";

/// The protocol's version; an engine refuses clients of another.
pub const VERSION: u32 = 1;

/// From a client to its engine.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToEngine {
    /// The engine's token (the first message over TCP).
    Auth { token: String },
    /// Opens the session (the first message).
    Hello {
        version: u32,
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
    Event { event: Event },
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
    },
    /// The contents of files of a host directory (relative paths).
    ReadFiles { root: PathBuf, rels: Vec<PathBuf> },
}

/// The answer to a [`HostRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostReply {
    Env(Option<String>),
    ReadFile(Result<String, String>),
    Command(Result<CommandOutput, String>),
    /// User name and password; `None`: anonymous.
    RegistryCredentials(Result<Option<(String, String)>, String>),
    /// `missing`, `directory`, `file` or `other`.
    Kind(String),
    ScanDir(Result<Vec<ScannedEntry>, String>),
    /// The contents, base64, in the order asked.
    ReadFiles(Result<Vec<String>, String>),
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
    /// `dir`, `file` or `symlink`.
    pub kind: String,
    /// A file's size.
    pub size: u64,
    /// A symlink's target.
    pub target: Option<PathBuf>,
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

/// A connection to or from an engine: the Unix socket, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for S {}

/// The messages arriving on a connection, a line each.
pub type Incoming = Lines<BufReader<ReadHalf<Box<dyn Stream>>>>;

/// A connection's two directions: the messages arriving, and a sender of
/// messages written in order by a task of their own (which ends when every
/// sender is gone or the peer is).
pub fn split<T: Serialize + Send + 'static>(stream: Box<dyn Stream>) -> (Incoming, mpsc::UnboundedSender<T>) {
    let (read, mut write) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<T>();
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let mut line = serde_json::to_vec(&message).expect("messages serialize");
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    (BufReader::new(read).lines(), tx)
}

/// Reads the next message; `None` at the end of the connection.
pub async fn read<T: DeserializeOwned>(lines: &mut Incoming) -> io::Result<Option<T>> {
    match lines.next_line().await? {
        None => Ok(None),
        Some(line) => serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("a malformed message: {e}"))),
    }
}

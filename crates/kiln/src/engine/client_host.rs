//! A client's host, as its session on the engine sees it. Its environment,
//! the files it reads as its user, its commands and its registry
//! credentials are asked of the client. A local client shares the file
//! system (the socket admits only the engine's user), so its scans,
//! uploads and exports go to it directly; a remote client scans its own
//! directories, sends the contents the engine lacks, and receives exports
//! as a tar stream, all over its connection.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kiln_oci::Credentials;
use kiln_solver::{Export, ExportError, HostAccess, HostPathKind, LocalHost};
use kiln_store::host::{FileSource, HostEntry, HostKind};
use kiln_store::{CopyOptions, CopyStats, HostError, HostTree, MergedView, PathFilter, Staged, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use super::answers::EXPORTED;
use super::protocol::{self, ExportTo, HostReply, HostRequest, Piece, ScannedEntry, ToClient};

/// The selection last uploaded from each directory of remote clients (its
/// digest finds its snapshot while it is stored).
pub type Uploads = Arc<Mutex<HashMap<PathBuf, Arc<HostTree>>>>;

/// The most file content one request asks of a client (larger files come
/// in pieces of this size), and the most of an export's stream one
/// request carries.
const PIECE: u64 = 4 << 20;

/// Requests carrying file contents that may be on their way at once, each
/// way: enough to keep the client reading (or writing) while the engine
/// writes (or reads), and a bound on the memory they take.
const IN_FLIGHT: usize = 4;

/// A client's host, as its session on the engine sees it.
pub struct ClientHost {
    local: LocalHost,
    remote: bool,
    /// The selection last uploaded from each directory of remote clients.
    uploads: Uploads,
    /// Where exports to remote clients are assembled (the store's
    /// temporary directory: files are linked, not copied).
    tmp: PathBuf,
    out: mpsc::UnboundedSender<ToClient>,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<HostReply>>>,
}

impl ClientHost {
    pub fn new(out: mpsc::UnboundedSender<ToClient>, remote: bool, uploads: Uploads, store: &Store) -> Self {
        Self {
            local: LocalHost::default(),
            remote,
            uploads,
            tmp: store.root().join("tmp"),
            out,
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Asks the client, without waiting for its answer.
    fn send(&self, request: HostRequest) -> io::Result<oneshot::Receiver<HostReply>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        self.out.send(ToClient::Host { id, request }).map_err(|_| gone())?;
        Ok(rx)
    }

    /// Waits for an answer (these calls are blocking, and come from the
    /// engine's worker threads).
    fn wait(answer: oneshot::Receiver<HostReply>) -> io::Result<HostReply> {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(answer)).map_err(|_| gone())
    }

    /// Asks the client and waits for its answer.
    fn ask(&self, request: HostRequest) -> io::Result<HostReply> {
        Self::wait(self.send(request)?)
    }

    /// Hands the client's answer to whoever waits for it.
    pub fn answered(&self, id: u64, reply: HostReply) {
        if let Some(tx) = self.pending.lock().expect("pending lock").remove(&id) {
            let _ = tx.send(reply);
        }
    }

    /// Waits for the answer to an export's request.
    fn done(answer: oneshot::Receiver<HostReply>) -> io::Result<()> {
        match Self::wait(answer)? {
            HostReply::Done(result) => result.map_err(io::Error::other),
            _ => Err(unexpected()),
        }
    }

    /// Exports to a client on another machine: the tree is linked into a
    /// directory of the store (applying the export's policy), sent as a tar
    /// stream, and put in place by the client.
    fn export_remote(&self, view: &MergedView, export: &Export) -> Result<CopyStats, ExportError> {
        let failed = |source: io::Error| ExportError::Create {
            path: export.dest.clone(),
            source,
        };
        let tmp = tempfile::Builder::new()
            .prefix("export-")
            .tempdir_in(&self.tmp)
            .map_err(failed)?;
        let filter = PathFilter::default();
        let opts = CopyOptions {
            hardlink: true,
            to_host: Some(export.policy),
            ..CopyOptions::new(&filter)
        };
        let stats = kiln_store::copy_tree(view, Path::new(&export.src), &tmp.path().join(EXPORTED), &opts)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let to = ExportTo {
            dest: export.dest.clone(),
            dir: export.dir.clone(),
            wipe: export.wipe,
            policy: export.policy,
        };
        Self::done(self.send(HostRequest::ExportBegin { export: id, to }).map_err(failed)?)
            .map_err(|e| ExportError::Client(e.to_string()))?;
        let mut stream = ExportStream {
            host: self,
            export: id,
            buf: Vec::new(),
            in_flight: VecDeque::new(),
        };
        let sent = kiln_oci::diff_to_layer(tmp.path(), kiln_oci::Compression::None, &mut stream)
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|_| stream.finish());
        // The client's account of the end says best what went wrong.
        let end = self.send(HostRequest::ExportEnd { export: id }).and_then(Self::done);
        end.map_err(|e| ExportError::Client(e.to_string()))?;
        sent.map_err(failed)?;
        Ok(stats)
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client went away")
}

fn unexpected() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the client answered another question")
}

/// An export's tar stream, sent to the client in pieces, at most
/// [`IN_FLIGHT`] of them unacknowledged.
struct ExportStream<'a> {
    host: &'a ClientHost,
    export: u64,
    buf: Vec<u8>,
    in_flight: VecDeque<oneshot::Receiver<HostReply>>,
}

impl ExportStream<'_> {
    fn send(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        let answer = self.host.send(HostRequest::ExportData {
            export: self.export,
            data,
        })?;
        self.in_flight.push_back(answer);
        while self.in_flight.len() > IN_FLIGHT {
            ClientHost::done(self.in_flight.pop_front().expect("in flight"))?;
        }
        Ok(())
    }

    /// Sends the rest and waits until the client took everything.
    fn finish(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        while let Some(answer) = self.in_flight.pop_front() {
            ClientHost::done(answer)?;
        }
        Ok(())
    }
}

impl Write for ExportStream<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(PIECE as usize);
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() as u64 >= PIECE {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An entry a client scanned, as the store knows entries.
fn reported(e: ScannedEntry) -> io::Result<HostEntry> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", e.rel.display()));
    if !protocol::plain_relative(&e.rel) {
        return Err(bad("not a plain relative path"));
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&e.digest, &mut digest).map_err(|_| bad("a malformed digest"))?;
    Ok(HostEntry::reported(e.rel, e.kind, e.mode, digest))
}

/// Files of a client's host directory, asked of the client in pieces and
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

/// The pieces of `files`, in batches of at most [`PIECE`] bytes (and a
/// bounded number of pieces), each piece with the index of its file.
fn batches(files: &[&HostEntry]) -> Vec<Vec<(usize, Piece)>> {
    const MAX_PIECES: usize = 4096;
    let mut batches = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for (i, e) in files.iter().enumerate() {
        let mut offset = 0;
        loop {
            let len = (e.stat.size - offset).min(PIECE);
            if !batch.is_empty() && (bytes + len > PIECE || batch.len() == MAX_PIECES) {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            let rel = e.rel.clone();
            batch.push((i, Piece { rel, offset, len }));
            bytes += len;
            offset += len;
            if offset >= e.stat.size {
                break;
            }
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// A file of an upload being written, piece after piece.
struct Writing {
    file: std::fs::File,
    hasher: blake3::Hasher,
    written: u64,
}

impl FileSource for ClientFiles<'_> {
    fn write(&self, files: &[&HostEntry], dest: &Path) -> Result<(), HostError> {
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
        let failed_on = |rel: &Path| {
            let path = self.root.join(rel);
            move |source: io::Error| HostError { path, source }
        };
        let mut in_flight = VecDeque::new();
        let mut writing: Option<Writing> = None;
        let mut batches = batches(&wanted).into_iter().peekable();
        while batches.peek().is_some() || !in_flight.is_empty() {
            if in_flight.len() < IN_FLIGHT
                && let Some(batch) = batches.next()
            {
                let request = HostRequest::ReadFiles {
                    root: self.root.to_path_buf(),
                    pieces: batch.iter().map(|(_, piece)| piece.clone()).collect(),
                };
                let answer = self.host.send(request).map_err(failed_on(&batch[0].1.rel))?;
                in_flight.push_back((batch, answer));
                continue;
            }
            let (batch, answer) = in_flight.pop_front().expect("in flight");
            let expected: u64 = batch.iter().map(|(_, piece)| piece.len).sum();
            let data = ClientHost::wait(answer)
                .and_then(|reply| match reply {
                    HostReply::ReadFiles { result: Ok(()), data } if data.len() as u64 == expected => Ok(data),
                    HostReply::ReadFiles {
                        result: Err(message), ..
                    } => Err(io::Error::other(message)),
                    _ => Err(unexpected()),
                })
                .map_err(failed_on(&batch[0].1.rel))?;
            let mut at = 0;
            for (i, piece) in &batch {
                let e = wanted[*i];
                let bytes = &data[at..at + piece.len as usize];
                at += piece.len as usize;
                write_piece(&mut writing, e, piece, bytes, dest).map_err(failed_on(&e.rel))?;
            }
        }
        Ok(())
    }
}

/// Writes a piece of the file `e` into `dest`: a first piece creates it, a
/// last one checks its digest.
fn write_piece(
    writing: &mut Option<Writing>,
    e: &HostEntry,
    piece: &Piece,
    bytes: &[u8],
    dest: &Path,
) -> io::Result<()> {
    if piece.offset == 0 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest.join(&e.rel))?;
        *writing = Some(Writing {
            file,
            hasher: blake3::Hasher::new(),
            written: 0,
        });
    }
    let Some(w) = writing.as_mut() else {
        return Err(unexpected());
    };
    w.file.write_all(bytes)?;
    w.hasher.update(bytes);
    w.written += bytes.len() as u64;
    if w.written == e.stat.size {
        let done = writing.take().expect("writing");
        if *done.hasher.finalize().as_bytes() != e.digest {
            return Err(io::Error::other("changed while kiln was reading it; run again"));
        }
    }
    Ok(())
}

impl HostAccess for ClientHost {
    fn kind(&self, path: &Path) -> HostPathKind {
        if !self.remote {
            return self.local.kind(path);
        }
        match self.ask(HostRequest::Kind { path: path.into() }) {
            Ok(HostReply::Kind(kind)) => kind,
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

    fn shares_network(&self) -> bool {
        !self.remote
    }

    fn export(&self, view: &MergedView, export: &Export) -> Result<CopyStats, ExportError> {
        if self.remote {
            return self.export_remote(view, export);
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
            gitignore: filter.gitignore(),
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
            HostReply::RegistryCredentials(result) => result.map_err(refused),
            _ => Err(refused(unexpected().to_string())),
        }
    }

    fn warn(&self, message: &str) {
        let _ = self.out.send(ToClient::Warning {
            message: message.to_string(),
        });
    }
}

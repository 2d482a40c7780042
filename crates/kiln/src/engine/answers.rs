//! A client's answers to its engine's questions about this host, given in
//! this process's environment and with its user's permissions: environment
//! variables, files, commands, registry credentials, scans and contents of
//! host directories, and exports written here.

use std::collections::HashMap;
use std::io::{self, Read, Seek};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc as std_mpsc;

use anyhow::Context as _;
use kiln_solver::{HostAccess, LocalHost};
use kiln_store::{CopyOptions, MergedView, PathFilter};
use tokio::sync::mpsc;

use super::protocol::{self, CommandOutput, ExportTo, HostReply, HostRequest, Piece, ScannedEntry, ToEngine};

/// The name under which an export's tree travels (its only top entry).
pub const EXPORTED: &str = "exported";

/// Answers the engine's questions, each on a blocking thread of its own,
/// except the pieces of an export's stream, which are taken in order.
pub struct Answers {
    host: LocalHost,
    out: mpsc::UnboundedSender<ToEngine>,
    /// Exports being received, by the engine's number.
    exports: HashMap<u64, Receiving>,
}

/// An export being received: its stream's pieces go to the thread that
/// extracts them.
struct Receiving {
    pieces: std_mpsc::Sender<(u64, Vec<u8>)>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Answers {
    pub fn new(host: LocalHost, out: mpsc::UnboundedSender<ToEngine>) -> Self {
        Self {
            host,
            out,
            exports: HashMap::new(),
        }
    }

    /// Answers the engine's request `id`.
    pub fn handle(&mut self, id: u64, request: HostRequest) {
        let out = self.out.clone();
        let reply = move |reply| {
            let _ = out.send(ToEngine::Host { id, reply });
        };
        match request {
            HostRequest::ExportBegin { export, to } => {
                let (pieces, received) = std_mpsc::channel();
                let out = self.out.clone();
                let thread = std::thread::spawn(move || receive_export(&to, received, &out));
                self.exports.insert(export, Receiving { pieces, thread });
                reply(HostReply::Done(Ok(())));
            }
            HostRequest::ExportData { export, data } => match self.exports.get(&export) {
                // Acknowledged by the extracting thread once it took them.
                Some(receiving) if receiving.pieces.send((id, data)).is_ok() => {}
                // The extraction stopped: the end of the export says why.
                _ => reply(HostReply::Done(Err("the export stopped".into()))),
            },
            HostRequest::ExportEnd { export } => {
                let receiving = self.exports.remove(&export);
                tokio::task::spawn_blocking(move || {
                    let result = match receiving {
                        Some(Receiving { pieces, thread }) => {
                            drop(pieces);
                            thread
                                .join()
                                .unwrap_or_else(|_| Err(anyhow::anyhow!("the export's thread panicked")))
                        }
                        None => Err(anyhow::anyhow!("no such export")),
                    };
                    reply(HostReply::Done(result.map_err(|e| format!("{e:#}"))));
                });
            }
            request => {
                let host = self.host.clone();
                tokio::task::spawn_blocking(move || reply(answer(&host, request)));
            }
        }
    }
}

/// Answers a question that needs nothing but this host.
fn answer(host: &LocalHost, request: HostRequest) -> HostReply {
    let failed = |e: anyhow::Error| format!("{e:#}");
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
        HostRequest::Kind { path } => HostReply::Kind(host.kind(&path)),
        HostRequest::ScanDir {
            root,
            include,
            exclude,
            gitignore,
        } => HostReply::ScanDir(scan(&root, &include, &exclude, gitignore).map_err(failed)),
        HostRequest::ReadFiles { root, pieces } => {
            let mut data = Vec::new();
            let result = read_pieces(&root, &pieces, &mut data).map_err(failed);
            HostReply::ReadFiles { result, data }
        }
        HostRequest::RegistryCredentials { registry } => {
            HostReply::RegistryCredentials(host.registry_credentials(&registry).map_err(|e| e.to_string()))
        }
        HostRequest::ExportBegin { .. } | HostRequest::ExportData { .. } | HostRequest::ExportEnd { .. } => {
            HostReply::Done(Err("an export's request out of its order".into()))
        }
    }
}

/// Scans a directory of this host for an engine elsewhere, with this
/// user's stat cache (`~/.cache/kiln/host-stat`): only new or changed files
/// are read.
fn scan(root: &Path, include: &[String], exclude: &[String], gitignore: bool) -> anyhow::Result<Vec<ScannedEntry>> {
    let filter = PathFilter::new(include, exclude)?.with_gitignore(gitignore);
    let cache = dirs::cache_dir().map(|d| d.join("kiln/host-stat"));
    if let Some(dir) = &cache {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    let tree = kiln_store::host::scan_with(root, &filter, &kiln_store::host::RealFs, cache.as_deref())?;
    tracing::debug!(root = %root.display(), stats = ?tree.stats, "scanned for the engine");
    Ok(tree
        .entries
        .into_iter()
        .map(|e| ScannedEntry {
            rel: e.rel,
            kind: e.kind,
            mode: e.mode,
            digest: hex::encode(e.digest),
        })
        .collect())
}

/// Reads pieces of files of a directory of this host for an engine
/// elsewhere into `data`, one after another; only plain relative paths
/// under `root`, never through a final symlink. A file shorter than a
/// piece says is an error (it changed since the scan).
fn read_pieces(root: &Path, pieces: &[Piece], data: &mut Vec<u8>) -> anyhow::Result<()> {
    data.reserve(pieces.iter().map(|p| p.len as usize).sum());
    for piece in pieces {
        if !protocol::plain_relative(&piece.rel) {
            anyhow::bail!(
                "the engine asked for {}, which is not under {}",
                piece.rel.display(),
                root.display()
            );
        }
        let path = root.join(&piece.rel);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if piece.offset > 0 {
            file.seek(io::SeekFrom::Start(piece.offset))
                .with_context(|| format!("reading {}", path.display()))?;
        }
        let before = data.len();
        file.take(piece.len)
            .read_to_end(data)
            .with_context(|| format!("reading {}", path.display()))?;
        if (data.len() - before) as u64 != piece.len {
            anyhow::bail!("{} changed while kiln was reading it; run again", path.display());
        }
    }
    tracing::debug!(root = %root.display(), pieces = pieces.len(), bytes = data.len(), "sent file contents to the engine");
    Ok(())
}

/// Reads an export's tar stream from `pieces` (acknowledging each piece to
/// the engine as it is taken) and puts the tree in place: extracted with
/// the checks of image layers into a private directory inside the
/// export's directory, then linked into place with the semantics of a
/// local export (nothing written through a symlink, entries of the wrong
/// kind replaced, what the policy withholds withheld).
fn receive_export(
    to: &ExportTo,
    pieces: std_mpsc::Receiver<(u64, Vec<u8>)>,
    out: &mpsc::UnboundedSender<ToEngine>,
) -> anyhow::Result<()> {
    let mut stream = Pieces {
        pieces,
        out: out.clone(),
        current: io::Cursor::new(Vec::new()),
    };
    let result = place_export(to, &mut stream);
    // Whatever the engine still sends is taken (and refused), so that it
    // stops and ends the export.
    stream.refuse_rest(result.as_ref().err().map(|e| format!("{e:#}")));
    result
}

fn place_export(to: &ExportTo, stream: &mut Pieces) -> anyhow::Result<()> {
    if to.wipe && std::fs::symlink_metadata(&to.dest).is_ok() {
        std::fs::remove_dir_all(&to.dest).with_context(|| format!("wiping {}", to.dest.display()))?;
    }
    std::fs::create_dir_all(&to.dir).with_context(|| format!("creating {}", to.dir.display()))?;
    // Inside the export's directory: the same filesystem, so that files
    // are linked into place rather than copied again.
    let staging = tempfile::Builder::new()
        .prefix(".kiln-export-")
        .tempdir_in(&to.dir)
        .with_context(|| format!("creating a directory in {}", to.dir.display()))?;
    kiln_oci::apply_layer(stream, "", staging.path(), &[], kiln_oci::ExtractLimits::default())
        .context("reading the export from the engine")?;
    let filter = PathFilter::default();
    let opts = CopyOptions {
        hardlink: true,
        to_host: Some(to.policy),
        ..CopyOptions::new(&filter)
    };
    let view = MergedView::new(vec![staging.path().to_path_buf()]);
    kiln_store::copy_tree(&view, Path::new(EXPORTED), &to.dest, &opts)?;
    Ok(())
}

/// An export's stream, read from the pieces the engine sends.
struct Pieces {
    pieces: std_mpsc::Receiver<(u64, Vec<u8>)>,
    out: mpsc::UnboundedSender<ToEngine>,
    current: io::Cursor<Vec<u8>>,
}

impl Pieces {
    fn ack(&self, id: u64, result: Result<(), String>) {
        let _ = self.out.send(ToEngine::Host {
            id,
            reply: HostReply::Done(result),
        });
    }

    /// Refuses the pieces still coming (the extraction ended early).
    fn refuse_rest(self, error: Option<String>) {
        let error = error.unwrap_or_else(|| "the export's stream went on after its end".into());
        for (id, _) in self.pieces.iter() {
            self.ack(id, Err(error.clone()));
        }
    }
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.pieces.recv() {
                Ok((id, data)) => {
                    self.ack(id, Ok(()));
                    self.current = io::Cursor::new(data);
                }
                Err(_) => return Ok(0),
            }
        }
    }
}

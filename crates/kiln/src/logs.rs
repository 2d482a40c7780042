//! The log index of each run, and `kiln logs`.
//!
//! Every exec's stdout and stderr are blobs in the store (scrubbed of
//! secrets before they were written, failed commands' output included).
//! Each kiln process that serves pipelines writes an index of the execs it
//! saw under `<state dir>/logs/`, one JSON object per line, as they end:
//!
//! ```text
//! {"record":"run","started_ms":1767000000000,"command":["kiln","run","--","python3","ci.py"]}
//! {"record":"exec","node":"1f3a…","description":"exec make test","status":"failed","exit_code":2,
//!  "duration_ms":3120,"stdout":"sha256:…","stderr":"sha256:…"}
//! ```
//!
//! Written line by line, an index survives an interrupted run. The newest
//! [`KEEP_RUNS`] indexes are kept. `kiln logs` prints the last run's output
//! (or the execs whose id or description matches a filter). The blobs are
//! the cache's own: an index names them, it does not keep them alive.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use kiln_solver::{Event, EventKind};
use kiln_store::{BlobStore, Digest};
use serde::{Deserialize, Serialize};

/// Run indexes kept in the logs directory.
pub const KEEP_RUNS: usize = 20;

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It ran (and its exit code was accepted).
    Ran,
    /// Its result came from the cache (the output of the run that made it).
    Cached,
    /// It failed.
    Failed,
}

/// One line of a run index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// The first line: what ran.
    Run {
        /// Start, milliseconds since the Unix epoch.
        started_ms: u64,
        /// kiln's command line.
        command: Vec<String>,
    },
    /// An exec that ended.
    Exec {
        /// Definition digest of the node (hex).
        node: String,
        /// Its description (`exec make test`).
        description: String,
        /// How it ended.
        status: Status,
        /// The process's exit code.
        exit_code: i32,
        /// Run time (for a cached exec: when it ran).
        duration_ms: u64,
        /// Blob holding stdout.
        stdout: Digest,
        /// Blob holding stderr.
        stderr: Digest,
    },
}

/// The index of the current run, written as execs end.
pub struct RunLog {
    file: File,
    path: PathBuf,
}

impl RunLog {
    /// Starts the index of a new run of `command` in `<state_dir>/logs`,
    /// removing the oldest beyond [`KEEP_RUNS`].
    pub fn create(state_dir: &Path, command: Vec<String>) -> anyhow::Result<Self> {
        let dir = state_dir.join("logs");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let path = dir.join(format!("{started_ms:016}-{}.jsonl", std::process::id()));
        let file = File::options()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut log = Self { file, path };
        log.write(&Record::Run { started_ms, command })?;
        let mut runs = runs(&dir)?;
        while runs.len() > KEEP_RUNS {
            let old = runs.remove(0);
            match fs::remove_file(&old) {
                // Another client on the same state dir removed it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                removed => removed.with_context(|| format!("removing {}", old.display()))?,
            }
        }
        Ok(log)
    }

    /// Records `ev` if it is the end of an exec. Failing to write only warns:
    /// the index must not stop a run.
    pub fn record(&mut self, ev: &Event) {
        let Some(exec) = &ev.exec else { return };
        let (status, duration) = match &ev.kind {
            EventKind::Done { duration } => (Status::Ran, *duration),
            EventKind::Cached { duration } => (Status::Cached, *duration),
            EventKind::Failed { .. } => (Status::Failed, Duration::ZERO),
            EventKind::Started | EventKind::Output { .. } | EventKind::Notice { .. } => return,
        };
        let record = Record::Exec {
            node: ev.node.to_string(),
            description: ev.description.clone(),
            status,
            exit_code: exec.exit_code,
            duration_ms: duration.as_millis() as u64,
            stdout: exec.stdout,
            stderr: exec.stderr,
        };
        if let Err(e) = self.write(&record) {
            tracing::warn!("{e:#}");
        }
    }

    fn write(&mut self, record: &Record) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(record).context("encoding a log record")?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The run indexes in `dir`, oldest first.
fn runs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut runs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    runs.sort();
    Ok(runs)
}

/// Reads a run index.
pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&line).with_context(|| format!("{} line {}: not a log record", path.display(), i + 1))
        })
        .collect()
}

/// Prints the output of the last run's execs (those whose id starts with
/// `filter` or whose description contains it, when given) to `out`.
pub fn show(state_dir: &Path, filter: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
    let dir = state_dir.join("logs");
    let last = match runs(&dir) {
        Ok(runs) => runs.into_iter().next_back(),
        Err(_) => None,
    };
    let Some(last) = last else {
        bail!("no run recorded in {} yet", dir.display());
    };
    let blobs = BlobStore::open(state_dir.join("blobs"), state_dir.join("tmp/blobs"))
        .with_context(|| format!("opening the blob store of {}", state_dir.display()))?;
    let mut shown = 0;
    for record in read(&last)? {
        match record {
            Record::Run { command, .. } => {
                writeln!(out, "last run: {} ({})", command.join(" "), last.display())?;
            }
            Record::Exec {
                node,
                description,
                status,
                exit_code,
                duration_ms,
                stdout,
                stderr,
            } => {
                if filter.is_some_and(|f| !node.starts_with(f) && !description.contains(f)) {
                    continue;
                }
                shown += 1;
                let how = match status {
                    Status::Ran => format!("ran in {:.1}s", duration_ms as f64 / 1000.0),
                    Status::Cached => "cached".to_string(),
                    Status::Failed => "FAILED".to_string(),
                };
                writeln!(
                    out,
                    "\n==> [{}] {description} ({how}, exit code {exit_code})",
                    &node[..12]
                )?;
                for (name, digest) in [("stdout", stdout), ("stderr", stderr)] {
                    match blobs.read(&digest) {
                        Ok(bytes) if bytes.is_empty() => {}
                        Ok(bytes) => {
                            writeln!(out, "--- {name} ---")?;
                            out.write_all(&bytes)?;
                            if !bytes.ends_with(b"\n") {
                                writeln!(out)?;
                            }
                        }
                        Err(_) => writeln!(out, "--- {name}: no longer in the store ({digest}) ---")?,
                    }
                }
            }
        }
    }
    if shown == 0 {
        match filter {
            Some(f) => bail!("no exec of the last run matches {f:?} ({})", last.display()),
            None => writeln!(out, "(no exec ran in the last run)")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kiln_graph::Key;
    use kiln_solver::ExecMeta;

    use super::*;

    #[test]
    fn records_execs_as_they_end_and_shows_the_last_run() {
        let state = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(state.path().join("blobs"), state.path().join("tmp/blobs")).unwrap();
        let meta = |out: &str, err: &str, exit_code| ExecMeta {
            exit_code,
            stdout: blobs.put(out.as_bytes()).unwrap(),
            stderr: blobs.put(err.as_bytes()).unwrap(),
            combined: None,
        };
        let ev = |n: u8, description: &str, kind, exec| Event {
            node: Key([n; 32]),
            description: description.into(),
            kind,
            inputs: vec![],
            image: None,
            exec,
        };
        let mut log = RunLog::create(state.path(), vec!["kiln".into(), "query".into()]).unwrap();
        log.record(&ev(
            1,
            "pull busybox",
            EventKind::Cached {
                duration: Duration::ZERO,
            },
            None,
        ));
        log.record(&ev(
            2,
            "exec echo hi",
            EventKind::Cached {
                duration: Duration::from_secs(2),
            },
            Some(meta("hi\n", "", 0)),
        ));
        log.record(&ev(
            3,
            "exec make",
            EventKind::Failed {
                message: "exit code: 2".into(),
            },
            Some(meta("building\n", "make: error", 2)),
        ));

        let mut out = Vec::new();
        show(state.path(), None, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("last run: kiln query ("), "{text}");
        assert!(
            text.ends_with(
                "\n==> [020202020202] exec echo hi (cached, exit code 0)\n--- stdout ---\nhi\n\
                 \n==> [030303030303] exec make (FAILED, exit code 2)\n--- stdout ---\nbuilding\n\
                 --- stderr ---\nmake: error\n"
            ),
            "{text}"
        );

        let mut out = Vec::new();
        show(state.path(), Some("make"), &mut out).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("echo hi"));
        assert!(show(state.path(), Some("nothing like it"), &mut Vec::new()).is_err());
    }

    #[test]
    fn keeps_the_newest_runs_only() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("logs");
        fs::create_dir_all(&dir).unwrap();
        for i in 0..KEEP_RUNS + 3 {
            fs::write(dir.join(format!("{i:016}-1.jsonl")), "").unwrap();
        }
        RunLog::create(state.path(), vec![]).unwrap();
        let left = runs(&dir).unwrap();
        assert_eq!(left.len(), KEEP_RUNS);
        assert!(left[0].ends_with(format!("{:016}-1.jsonl", 4)));
    }
}

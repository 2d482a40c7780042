//! An operation while it runs: its output goes out as events to the
//! sessions waiting for it as it arrives (scrubbed of secrets), and the
//! time it waits for an exec slot is kept apart from the time it runs.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_exec::{ExecError, ExecOutput, RunSpec, Runtime, Stream};
use tokio::time::Instant;

use crate::events::EventKind;
use crate::report::Audience;
use crate::secrets::Secrets;

/// One running operation.
pub(crate) struct Running {
    audience: Arc<Audience>,
    secrets: Arc<Secrets>,
    queued: Mutex<Duration>,
    /// Output not passed on yet, per stream (stdout, stderr).
    pending: Mutex<[Vec<u8>; 2]>,
}

impl Running {
    /// A function that reports notices about this operation (see
    /// [`EventKind::Notice`]) from anywhere, for as long as it lives.
    pub(crate) fn notifier(&self) -> impl Fn(String) + Send + Sync + 'static {
        let audience = self.audience.clone();
        move |message| audience.emit(EventKind::Notice { message }, None)
    }

    /// An operation starts running; its events go to `audience`.
    pub(crate) fn new(audience: &Arc<Audience>, secrets: &Arc<Secrets>) -> Self {
        Self {
            audience: audience.clone(),
            secrets: secrets.clone(),
            queued: Mutex::new(Duration::ZERO),
            pending: Mutex::new([Vec::new(), Vec::new()]),
        }
    }

    /// Awaits `wait` (for an exec slot), counting the time as queued rather
    /// than running.
    pub(crate) async fn queue<F: Future>(&self, wait: F) -> F::Output {
        let started = Instant::now();
        let out = wait.await;
        *self.queued.lock().expect("queued lock") += started.elapsed();
        out
    }

    /// How long the operation waited in [`Running::queue`].
    pub(crate) fn queued(&self) -> Duration {
        *self.queued.lock().expect("queued lock")
    }

    /// The reports of the sessions waiting for the operation.
    pub(crate) fn reports(&self) -> Vec<Arc<crate::report::Report>> {
        self.audience.reports()
    }

    /// Counts a container started, for every session waiting.
    pub(crate) fn started_exec(&self) {
        self.audience.count_exec();
    }

    /// Runs a container, passing its output on as events as it arrives.
    pub(crate) async fn exec(&self, runtime: &Runtime, spec: &RunSpec) -> Result<ExecOutput, ExecError> {
        let result = runtime
            .run_with_output(spec, &|stream, bytes| self.output(stream, bytes, false))
            .await;
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.output(stream, &[], true);
        }
        result
    }

    /// Passes output on (`end`: the stream ended, hold nothing back).
    pub(crate) fn output(&self, stream: Stream, bytes: &[u8], end: bool) {
        let ready = {
            let mut pending = self.pending.lock().expect("output lock");
            let pending = &mut pending[stream as usize];
            pending.extend_from_slice(bytes);
            release(pending, &self.secrets, end)
        };
        if !ready.is_empty() {
            self.audience.emit(
                EventKind::Output {
                    stream,
                    bytes: ready.into(),
                },
                None,
            );
        }
    }
}

/// Takes from `pending` the output that can be shown now, scrubbed: all of
/// it at the `end`; otherwise all but an incomplete UTF-8 sequence at its
/// end and, while secrets are known, the last bytes that may be the start
/// of a secret value whose rest has not arrived yet.
fn release(pending: &mut Vec<u8>, secrets: &Secrets, end: bool) -> Vec<u8> {
    let longest = secrets.longest();
    if end {
        let all = std::mem::take(pending);
        return if longest == 0 { all } else { secrets.scrub_bytes(&all) };
    }
    let complete = match std::str::from_utf8(pending) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => pending.len(),
    };
    let incomplete = pending.split_off(complete);
    if longest == 0 {
        return std::mem::replace(pending, incomplete);
    }
    let text = String::from_utf8(secrets.scrub_bytes(pending)).expect("scrubbed output is UTF-8");
    let mut split = text.len().saturating_sub(longest - 1);
    while !text.is_char_boundary(split) {
        split -= 1;
    }
    let mut held = text.as_bytes()[split..].to_vec();
    held.extend_from_slice(&incomplete);
    *pending = held;
    text.as_bytes()[..split].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(secrets: &Secrets, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut pending = Vec::new();
        let mut out: Vec<Vec<u8>> = chunks
            .iter()
            .map(|c| {
                pending.extend_from_slice(c);
                release(&mut pending, secrets, false)
            })
            .collect();
        out.push(release(&mut pending, secrets, true));
        out
    }

    #[tokio::test(start_paused = true)]
    async fn time_waiting_for_a_slot_is_queued_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Arc::new(Secrets::open(dir.path()).unwrap());
        let running = Running::new(&Arc::default(), &secrets);
        assert_eq!(running.queued(), Duration::ZERO);
        running.queue(tokio::time::sleep(Duration::from_secs(2))).await;
        running.queue(tokio::time::sleep(Duration::from_millis(500))).await;
        assert_eq!(running.queued(), Duration::from_millis(2500));
    }

    #[test]
    fn output_without_secrets_passes_at_once_but_never_splits_a_character() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::open(dir.path()).unwrap();
        let e_acute = "é".as_bytes();
        let out = released(&secrets, &[b"line 1\nli", &[b'x', e_acute[0]], &[e_acute[1], b'\n']]);
        assert_eq!(
            out,
            vec![b"line 1\nli".to_vec(), b"x".to_vec(), "é\n".as_bytes().to_vec(), vec![]]
        );
    }

    #[test]
    fn a_secret_split_across_chunks_is_still_masked() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::open(dir.path()).unwrap();
        secrets.add("token", "hunter2".into());
        let out = released(&secrets, &[b"token=hun", b"ter2 done\n", b"tail"]);
        let all: Vec<u8> = out.concat();
        assert_eq!(String::from_utf8(all).unwrap(), "token=*** done\ntail");
        assert!(out.iter().all(|c| !String::from_utf8_lossy(c).contains("hun")));
        // All but the last `len - 1` bytes go out as soon as they arrive.
        assert_eq!(out[0], b"tok".to_vec());
    }
}

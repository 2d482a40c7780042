//! What a session is told about its work, and how a job shared by several
//! sessions tells each of them.
//!
//! Each session has a [`Report`]: its progress events, its counters, its
//! cache explanations and the options that decide them. A job (one cache
//! key being computed) has an [`Audience`]: the sessions waiting for it,
//! each with the node it knows the job by. Every event of the job goes to
//! every member, and to nobody else, so a session sees its own operations
//! (including those another session started and it joined) and none of
//! another session's.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use kiln_graph::Key;
use kiln_store::HostPolicy;
use serde::{Deserialize, Serialize};

use crate::events::{EventKind, Events, Subject};
use crate::explain::Explanation;
use crate::result::ExecMeta;

/// How a session wants its cache misses handled, and what of its client's
/// host it works with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOptions {
    /// Explain every cache miss (see [`crate::Session::explanations`]).
    pub explain_cache: bool,
    /// Fail an operation instead of running it when it misses the cache.
    pub fail_on_cache_miss: bool,
    /// What exports to the client's host may create of what grants
    /// privileges there (device nodes, setuid/setgid files): nothing unless
    /// asked.
    pub export: HostPolicy,
    /// The client's `DOCKER_HOST`: the Docker that `exportImage` loads
    /// images into (Docker's default socket when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
}

/// Counters of what a session's operations did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Operations that ran.
    pub ran: u64,
    /// Operations answered from the cache.
    pub cached: u64,
    /// Containers started.
    pub execs: u64,
    /// Operations that failed.
    pub failed: u64,
    /// Milliseconds the cached operations took when they ran.
    pub saved_ms: u64,
}

#[derive(Default)]
struct Counters {
    ran: AtomicU64,
    cached: AtomicU64,
    execs: AtomicU64,
    failed: AtomicU64,
    saved_ms: AtomicU64,
}

/// One session's progress, counters and explanations.
#[derive(Default)]
pub(crate) struct Report {
    events: Events,
    counters: Counters,
    explanations: Mutex<Vec<Explanation>>,
    /// The services the session started, by host name, with a number per
    /// registration: every container of the session can reach them.
    names: Mutex<Vec<(u64, String, Ipv4Addr)>>,
    next_name: AtomicU64,
    pub options: SessionOptions,
}

/// A service's name in a session, until dropped.
pub(crate) struct Named {
    report: Arc<Report>,
    id: u64,
}

impl Drop for Named {
    fn drop(&mut self) {
        let mut names = self.report.names.lock().expect("names lock");
        names.retain(|(id, ..)| *id != self.id);
    }
}

impl Report {
    pub(crate) fn new(options: SessionOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            ..Self::default()
        })
    }

    pub(crate) fn events(&self) -> &Events {
        &self.events
    }

    /// Names a service the session started, until the guard is dropped.
    pub(crate) fn name(self: &Arc<Self>, hostname: &str, address: Ipv4Addr) -> Named {
        let id = self.next_name.fetch_add(1, Ordering::Relaxed);
        let entry = (id, hostname.to_string(), address);
        self.names.lock().expect("names lock").push(entry);
        Named {
            report: self.clone(),
            id,
        }
    }

    /// `/etc/hosts` lines for the services the session started.
    pub(crate) fn hosts(&self) -> Vec<String> {
        let names = self.names.lock().expect("names lock");
        names
            .iter()
            .map(|(_, name, address)| format!("{address}\t{name}\n"))
            .collect()
    }

    /// Runs `work` as a progress step of its own about `subject` (a publish,
    /// a download): started, then failed with the error, or a notice with
    /// the line `work` gives and done with its duration.
    pub(crate) async fn step<T, E: std::fmt::Display>(
        &self,
        subject: &Subject,
        work: impl std::future::Future<Output = Result<(T, String), E>>,
    ) -> Result<T, E> {
        self.emit(subject, EventKind::Started, None);
        let started = std::time::Instant::now();
        match work.await {
            Ok((value, message)) => {
                self.emit(subject, EventKind::Notice { message }, None);
                let duration = started.elapsed();
                self.emit(subject, EventKind::Done { duration }, None);
                Ok(value)
            }
            Err(e) => {
                let message = e.to_string();
                self.emit(subject, EventKind::Failed { message }, None);
                Err(e)
            }
        }
    }

    /// Emits an event and counts what it tells.
    pub(crate) fn emit(&self, subject: &Subject, kind: EventKind, exec: Option<ExecMeta>) {
        let c = &self.counters;
        match &kind {
            _ if !subject.is_counted() => {}
            EventKind::Cached { duration } => {
                c.cached.fetch_add(1, Ordering::Relaxed);
                c.saved_ms.fetch_add(duration.as_millis() as u64, Ordering::Relaxed);
            }
            EventKind::Done { .. } => {
                c.ran.fetch_add(1, Ordering::Relaxed);
            }
            EventKind::Failed { .. } => {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
            EventKind::Started | EventKind::Notice { .. } | EventKind::Output { .. } => {}
        }
        self.events.emit(subject, kind, exec);
    }

    fn count_exec(&self) {
        self.counters.execs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn explained(&self, explanation: Explanation) {
        self.explanations.lock().expect("explanations lock").push(explanation);
    }

    pub(crate) fn take_explanations(&self) -> Vec<Explanation> {
        std::mem::take(&mut *self.explanations.lock().expect("explanations lock"))
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            ran: c.ran.load(Ordering::Relaxed),
            cached: c.cached.load(Ordering::Relaxed),
            execs: c.execs.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            saved_ms: c.saved_ms.load(Ordering::Relaxed),
        }
    }
}

/// The sessions waiting for one job.
#[derive(Default)]
pub(crate) struct Audience {
    state: Mutex<Members>,
}

#[derive(Default)]
struct Members {
    next: u64,
    members: Vec<(u64, Arc<Report>, Subject)>,
    started: bool,
    /// Containers the job started so far.
    execs: u64,
}

impl Audience {
    /// Adds a session, which knows the job as `subject`, until the returned
    /// membership is dropped. A session that joins a job already running
    /// is told it started, and counts the containers it started.
    pub(crate) fn join(self: &Arc<Self>, report: &Arc<Report>, subject: Subject) -> Membership {
        let mut state = self.state.lock().expect("audience lock");
        if state.started {
            report.emit(&subject, EventKind::Started, None);
        }
        for _ in 0..state.execs {
            report.count_exec();
        }
        let id = state.next;
        state.next += 1;
        state.members.push((id, report.clone(), subject));
        Membership {
            audience: self.clone(),
            id,
        }
    }

    /// Tells every member.
    pub(crate) fn emit(&self, kind: EventKind, exec: Option<ExecMeta>) {
        let mut state = self.state.lock().expect("audience lock");
        state.started |= kind == EventKind::Started;
        for (_, report, subject) in &state.members {
            report.emit(subject, kind.clone(), exec.clone());
        }
    }

    /// The reports of the sessions waiting now.
    pub(crate) fn reports(&self) -> Vec<Arc<Report>> {
        let state = self.state.lock().expect("audience lock");
        state.members.iter().map(|(_, report, _)| report.clone()).collect()
    }

    /// Counts a container started for every member.
    pub(crate) fn count_exec(&self) {
        let mut state = self.state.lock().expect("audience lock");
        state.execs += 1;
        for (_, report, _) in &state.members {
            report.count_exec();
        }
    }
}

/// A session's place in an [`Audience`]; dropping it leaves.
pub(crate) struct Membership {
    audience: Arc<Audience>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = self.audience.state.lock().expect("audience lock");
        state.members.retain(|(id, _, _)| *id != self.id);
    }
}

/// The audiences of the jobs in flight, by cache key.
#[derive(Default)]
pub(crate) struct Audiences(Mutex<HashMap<Key, Weak<Audience>>>);

impl Audiences {
    /// The audience of the job of `key` (a new one when none is running).
    pub(crate) fn of(&self, key: Key) -> Arc<Audience> {
        let mut map = self.0.lock().expect("audiences lock");
        if let Some(audience) = map.get(&key).and_then(Weak::upgrade) {
            return audience;
        }
        map.retain(|_, a| a.strong_count() > 0);
        let audience = Arc::new(Audience::default());
        map.insert(key, Arc::downgrade(&audience));
        audience
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn subject(name: &str) -> Subject {
        Subject::new(Key([0; 32]), name.into(), vec![], None)
    }

    #[test]
    fn a_job_tells_its_members_and_nobody_else() {
        let (a, b, c) = (
            Report::new(SessionOptions::default()),
            Report::new(SessionOptions::default()),
            Report::new(SessionOptions::default()),
        );
        let (mut rx_a, mut rx_b, mut rx_c) = (a.events().subscribe(), b.events().subscribe(), c.events().subscribe());
        let audiences = Audiences::default();
        let job = audiences.of(Key([1; 32]));
        let _in_a = job.join(&a, subject("as a knows it"));
        job.emit(EventKind::Started, None);
        // b joins late: it is told the job started.
        let in_b = job.join(&b, subject("as b knows it"));
        assert!(Arc::ptr_eq(&job, &audiences.of(Key([1; 32]))), "one audience per job");
        job.count_exec();
        drop(in_b);
        job.emit(
            EventKind::Done {
                duration: Duration::from_secs(1),
            },
            None,
        );

        let kinds = |rx: &mut tokio::sync::broadcast::Receiver<Arc<crate::Event>>| {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|e| (e.description.clone(), e.kind.clone()))
                .collect::<Vec<_>>()
        };
        let done = EventKind::Done {
            duration: Duration::from_secs(1),
        };
        assert_eq!(
            kinds(&mut rx_a),
            vec![
                ("as a knows it".into(), EventKind::Started),
                ("as a knows it".into(), done)
            ]
        );
        assert_eq!(
            kinds(&mut rx_b),
            vec![("as b knows it".into(), EventKind::Started)],
            "b left before the end"
        );
        assert!(kinds(&mut rx_c).is_empty(), "c never joined");
        assert_eq!((a.stats().ran, a.stats().execs), (1, 1));
        assert_eq!((b.stats().ran, b.stats().execs), (0, 1));
        let late = Report::new(SessionOptions::default());
        let _in_late = job.join(&late, subject("late"));
        assert_eq!(
            late.stats().execs,
            1,
            "a late member counts the containers already started"
        );
        assert_eq!(c.stats(), Stats::default());
    }
}

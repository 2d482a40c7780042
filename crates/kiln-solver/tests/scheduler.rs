//! The scheduler with fake operations (no containers, no root): dedupe
//! across sessions, parallelism, cancellation when the last waiter leaves,
//! exec slots that a dropped request gives back, failures, and sessions
//! that see only their own secrets and events.
//!
//! The fake operation is defined here, outside kiln-solver, through the
//! public [`Operation`] trait alone: what a new operation needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kiln_graph::SecretRef;
use kiln_solver::ops::{Context, Definition, OpOutput, Operation, Prepared};
use kiln_solver::{Engine, EngineConfig, Event, EventKind, Node, Session, SolveError};
use kiln_store::SnapshotId;
use serde::Serialize;
use tokio::sync::{Notify, broadcast};

/// What the fake operations of a test did.
#[derive(Debug, Default)]
struct Probe {
    /// Runs started.
    runs: AtomicUsize,
    /// Runs going on now.
    running: AtomicUsize,
    /// The most runs that went on at once.
    most: AtomicUsize,
    /// Runs dropped before they finished (cancelled).
    cancelled: AtomicUsize,
    /// Lets held runs finish.
    release: Notify,
}

/// How a fake operation behaves.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Finishes at once.
    Quick,
    /// Finishes when the probe releases it.
    Held,
    /// Fails.
    Fails,
}

/// An operation that takes an exec slot and does what its behaviour says.
#[derive(Debug, Serialize)]
struct Fake {
    name: String,
    secret: Option<SecretRef>,
    #[serde(skip)]
    behaviour: Behaviour,
    #[serde(skip)]
    probe: Arc<Probe>,
}

impl Definition for Fake {
    const KIND: &'static str = "fake";
}

/// Counts a run as going on until it is dropped.
struct Run<'a>(&'a Probe, bool);

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Operation for Fake {
    fn describe(&self) -> String {
        format!("fake {}", self.name)
    }

    fn secrets(&self) -> Vec<&SecretRef> {
        self.secret.iter().collect()
    }

    async fn run(&self, cx: &Context<'_>, _: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let _slot = cx.exec_slot().await?;
        let probe = &self.probe;
        probe.runs.fetch_add(1, Ordering::SeqCst);
        let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
        probe.most.fetch_max(now, Ordering::SeqCst);
        let mut run = Run(probe, false);
        match self.behaviour {
            Behaviour::Quick => {}
            Behaviour::Held => probe.release.notified().await,
            Behaviour::Fails => {
                run.1 = true;
                return Err(cx.error("the fake failed as asked"));
            }
        }
        run.1 = true;
        Ok(OpOutput::unchanged(None))
    }
}

struct Setup {
    _state: tempfile::TempDir,
    engine: Arc<Engine>,
    probe: Arc<Probe>,
}

impl Setup {
    fn new(parallelism: usize) -> Self {
        let state = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig {
            state_dir: state.path().join("state"),
            parallelism,
            ..Default::default()
        })
        .expect("engine opens");
        Self {
            _state: state,
            engine,
            probe: Arc::default(),
        }
    }

    fn op(&self, name: &str, behaviour: Behaviour) -> Fake {
        Fake {
            name: name.into(),
            secret: None,
            behaviour,
            probe: self.probe.clone(),
        }
    }

    fn node(&self, name: &str, behaviour: Behaviour) -> Arc<Node> {
        Node::new(self.op(name, behaviour), vec![])
    }

    /// Solves `node` in a task of its own.
    fn spawn(&self, session: &Session, node: &Arc<Node>) -> tokio::task::JoinHandle<Result<(), SolveError>> {
        let (session, node) = (session.clone(), node.clone());
        tokio::spawn(async move { session.solve(&node).await.map(|_| ()) })
    }

    /// Releases held runs until the condition holds (a run may start
    /// waiting just after a release).
    async fn release_until(&self, what: &str, cond: impl Fn() -> bool) {
        until(what, || {
            self.probe.release.notify_waiters();
            cond()
        })
        .await
    }
}

fn count(n: &AtomicUsize) -> usize {
    n.load(Ordering::SeqCst)
}

/// Waits until `cond` holds; fails after a minute (a hang, not a timing).
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..6000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

fn descriptions(events: &mut broadcast::Receiver<std::sync::Arc<Event>>) -> Vec<String> {
    std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| format!("{} {}", e.description, kind(&e.kind)))
        .collect()
}

fn kind(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Started => "started",
        EventKind::Cached { .. } => "cached",
        EventKind::Done { .. } => "done",
        EventKind::Failed { .. } => "failed",
        EventKind::Notice { .. } => "notice",
        EventKind::Output { .. } => "output",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_share_work_but_not_secrets_or_events() {
    let s = Setup::new(4);
    let (a, b) = (s.engine.session(), s.engine.session());
    let (mut events_a, mut events_b) = (a.events().subscribe(), b.events().subscribe());

    // The shared step runs once, for both.
    let shared = s.node("shared", Behaviour::Held);
    let (ta, tb) = (s.spawn(&a, &shared), s.spawn(&b, &shared));
    until("both sessions wait for one job", || s.engine.waiting_requests() == 2).await;
    s.release_until("the job finished", || ta.is_finished() && tb.is_finished())
        .await;
    ta.await.unwrap().unwrap();
    tb.await.unwrap().unwrap();
    assert_eq!(count(&s.probe.runs), 1);
    assert_eq!(
        (a.stats().ran, b.stats().ran),
        (1, 1),
        "each is told of the work it waited for"
    );

    // Each session's own step is its own.
    a.solve(&s.node("only a", Behaviour::Quick)).await.unwrap();
    b.solve(&s.node("only b", Behaviour::Quick)).await.unwrap();
    assert_eq!(
        descriptions(&mut events_a),
        [
            "fake shared started",
            "fake shared done",
            "fake only a started",
            "fake only a done"
        ]
    );
    assert_eq!(
        descriptions(&mut events_b),
        [
            "fake shared started",
            "fake shared done",
            "fake only b started",
            "fake only b done"
        ]
    );

    // B cannot use A's secret, even knowing its ID.
    let secret = a.add_secret("token", "hunter2".into());
    let mut op = s.op("with a's secret", Behaviour::Quick);
    op.secret = Some(secret.clone());
    let node = Node::new(op, vec![]);
    let err = b.solve(&node).await.unwrap_err().to_string();
    assert!(err.contains("secret \"token\" was not set in this session"), "{err}");
    assert!(b.secret(&secret).is_none());
    assert_eq!(a.secret(&secret).as_deref().map(String::as_str), Some("hunter2"));
    a.solve(&node).await.unwrap();
    assert!(descriptions(&mut events_b).is_empty(), "b saw none of a's work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_operations_run_in_parallel_up_to_the_exec_slots() {
    let s = Setup::new(2);
    let session = s.engine.session();
    let leaves: Vec<_> = (0..3).map(|i| s.node(&format!("leaf {i}"), Behaviour::Held)).collect();
    let top = Node::new(
        s.op("top", Behaviour::Quick),
        leaves.iter().map(|l| l.output(0)).collect(),
    );
    let task = s.spawn(&session, &top);
    until("two leaves run at once", || count(&s.probe.running) == 2).await;
    s.release_until("everything finished", || task.is_finished()).await;
    task.await.unwrap().unwrap();
    assert_eq!(count(&s.probe.runs), 4);
    assert_eq!(count(&s.probe.most), 2, "never more than the two exec slots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_waiter_leaving_cancels_the_work_and_frees_its_slot() {
    let s = Setup::new(1);
    let (a, b) = (s.engine.session(), s.engine.session());
    let held = s.node("held", Behaviour::Held);
    let (ta, tb) = (s.spawn(&a, &held), s.spawn(&b, &held));
    until("the work runs for both", || {
        count(&s.probe.running) == 1 && s.engine.waiting_requests() == 2
    })
    .await;

    // One request goes: the work goes on for the other.
    ta.abort();
    until("one waiter left", || s.engine.waiting_requests() == 1).await;
    assert_eq!(count(&s.probe.cancelled), 0);

    // The last goes: the work is cancelled.
    tb.abort();
    until("the run was dropped", || count(&s.probe.cancelled) == 1).await;
    assert_eq!(s.engine.waiting_requests(), 0);

    // Its one exec slot is free for the next operation.
    let next = tokio::time::timeout(Duration::from_secs(60), a.solve(&s.node("next", Behaviour::Quick)));
    next.await.expect("the slot was given back").unwrap();

    // Nothing of the cancelled work was recorded: asked again, it runs.
    let again = s.spawn(&b, &held);
    until("it runs again", || count(&s.probe.runs) == 3).await;
    s.release_until("it finished", || again.is_finished()).await;
    again.await.unwrap().unwrap();
    assert!(!b.solve(&held).await.unwrap().cached, "b's memo keeps its result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_to_the_session_and_never_cached() {
    let s = Setup::new(2);
    let session = s.engine.session();
    let mut events = session.events().subscribe();
    let failing = s.node("broken", Behaviour::Fails);
    let err = session.solve(&failing).await.unwrap_err().to_string();
    assert!(
        err.contains("fake broken") && err.contains("the fake failed as asked"),
        "{err}"
    );
    assert_eq!(descriptions(&mut events), ["fake broken started", "fake broken failed"]);
    assert_eq!(session.stats().failed, 1);

    let other = s.engine.session();
    assert!(other.solve(&failing).await.is_err());
    assert_eq!(count(&s.probe.runs), 2, "a failure is not cached");

    // A success is: a new session finds it.
    let fine = s.node("fine", Behaviour::Quick);
    assert!(!session.solve(&fine).await.unwrap().cached);
    assert!(other.solve(&fine).await.unwrap().cached);
    assert_eq!((other.stats().cached, count(&s.probe.runs)), (1, 3));
}

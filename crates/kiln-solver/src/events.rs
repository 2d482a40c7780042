//! Progress events the solver emits while it works.
//!
//! Everything an event carries that comes from a pipeline (descriptions,
//! failure messages, output) is scrubbed of secret values before it is
//! emitted: descriptions and messages by the engine, output by the
//! `running` module. Listeners (progress display, logs, traces) can print
//! and record events as they are.

use std::sync::Arc;
use std::time::Duration;

pub use kiln_exec::Stream;
use kiln_graph::Key;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::result::ExecMeta;

/// What happened to one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// It started running.
    Started,
    /// Its result came from the cache.
    Cached {
        /// How long it took when it ran: the time the cache saved.
        duration: Duration,
    },
    /// It ran and succeeded.
    Done {
        /// How long it ran (not counting time spent waiting for an exec slot).
        duration: Duration,
    },
    /// It failed.
    Failed {
        /// The error for people: first line the error, then details (the
        /// tail of a failed command's output).
        message: String,
    },
    /// Something worth telling about a running operation that is not its
    /// output: waiting for a registry that does not answer, retrying.
    Notice {
        /// One line for people.
        message: String,
    },
    /// A running exec wrote output.
    Output {
        /// Which stream.
        stream: Stream,
        /// The bytes, as they came (a chunk may end inside a line or a UTF-8
        /// sequence).
        bytes: Arc<[u8]>,
    },
}

/// One progress event (serializable: an engine sends them to its clients).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Definition digest of the node.
    pub node: Key,
    /// Human description (`exec make test`).
    pub description: String,
    /// What happened.
    pub kind: EventKind,
    /// Definition digests of the node's inputs, in order (an exec's first
    /// input is its root filesystem). Inputs are solved first, so their own
    /// events came before: a listener can show the chain that led here.
    pub inputs: Vec<Key>,
    /// The image the node's tree starts from (following first inputs), if
    /// any: `busybox` for an exec on busybox, the reference for a pull.
    pub image: Option<String>,
    /// For execs, on `Cached`, `Done` and `Failed`: the exit code and the
    /// blobs holding the (scrubbed) stdout and stderr.
    pub exec: Option<ExecMeta>,
}

/// Fan-out of events to any number of listeners (progress display, logs).
/// Shared, not copied: a channel's slots are made when it is, so small
/// slots keep a session cheap to open.
#[derive(Debug, Clone)]
pub struct Events(broadcast::Sender<Arc<Event>>);

impl Default for Events {
    fn default() -> Self {
        Self(broadcast::channel(4096).0)
    }
}

impl Events {
    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.0.subscribe()
    }

    /// Passes on an event received from elsewhere (an engine's, to its
    /// client's listeners).
    pub fn send(&self, event: impl Into<Arc<Event>>) {
        // No listener is fine.
        let _ = self.0.send(event.into());
    }

    pub(crate) fn emit(&self, subject: &Subject, kind: EventKind, exec: Option<ExecMeta>) {
        // No listener is fine.
        let _ = self.0.send(Arc::new(Event {
            node: subject.node,
            description: subject.description.clone(),
            kind,
            inputs: subject.inputs.clone(),
            image: subject.image.clone(),
            exec,
        }));
    }
}

/// The operation a series of events is about.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    node: Key,
    description: String,
    inputs: Vec<Key>,
    image: Option<String>,
    /// An operation of the cache's: its events count in stats (not those
    /// of services and publishes).
    counted: bool,
}

impl Subject {
    /// Node `node` with `inputs`, described as `description` (already
    /// scrubbed), whose tree starts from `image`.
    pub(crate) fn new(node: Key, description: String, inputs: Vec<Key>, image: Option<String>) -> Self {
        Self {
            node,
            description,
            inputs,
            image,
            counted: true,
        }
    }

    /// Something that is not an operation of the cache's (a service, a
    /// publish), known by `id` and described as `description`: its events
    /// show in progress but do not count in stats.
    pub(crate) fn uncounted(id: Key, description: String) -> Self {
        Self {
            counted: false,
            ..Self::new(id, description, Vec::new(), None)
        }
    }

    /// Whether its events count in stats.
    pub(crate) fn is_counted(&self) -> bool {
        self.counted
    }
}

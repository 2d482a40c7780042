//! Progress events the solver emits while it works.

use std::time::Duration;

use kiln_graph::Key;
use tokio::sync::broadcast;

/// What happened to one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// It started running.
    Started,
    /// Its result came from the cache.
    Cached,
    /// It ran and succeeded.
    Done {
        /// How long it ran.
        duration: Duration,
    },
    /// It failed.
    Failed {
        /// The error, one line.
        message: String,
    },
}

/// One progress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Definition digest of the node.
    pub node: Key,
    /// Human description (`exec make test`).
    pub description: String,
    /// What happened.
    pub kind: EventKind,
}

/// Fan-out of events to any number of listeners (progress display, logs).
#[derive(Debug, Clone)]
pub struct Events(broadcast::Sender<Event>);

impl Default for Events {
    fn default() -> Self {
        Self(broadcast::channel(4096).0)
    }
}

impl Events {
    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }

    pub(crate) fn emit(&self, node: Key, description: &str, kind: EventKind) {
        // No listener is fine.
        let _ = self.0.send(Event {
            node,
            description: description.to_string(),
            kind,
        });
    }
}

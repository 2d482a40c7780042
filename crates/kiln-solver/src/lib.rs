//! Evaluation of kiln's operation graph.
//!
//! An [`Engine`] owns what every client shares: the store, the OCI runtime,
//! the registry client, the exec slots and the work in flight. A
//! [`Session`] solves nodes for one client: inputs first (independent
//! branches run in parallel), then the operation's cache key (see
//! [`ops::Operation`]), a lookup, and only on a miss the operation itself,
//! run as a job the engine owns and recorded. The same work requested twice
//! at once (in one session or across sessions) runs once; each session is
//! told about its own operations only.

mod engine;
mod error;
mod events;
pub mod explain;
pub mod git;
mod graph;
pub mod host_access;
mod http;
mod once_map;
pub mod ops;
mod per_key;
mod report;
mod result;
mod running;
pub mod secrets;
pub mod services;
pub mod volumes;

pub use engine::{Engine, EngineConfig, Session, remove_leftovers};
pub use error::{Cause, GraphError, SolveError};
pub use events::{Event, EventKind, Events, Stream};
pub use graph::{Input, Node};
pub use host_access::{Export, ExportError, HostAccess, HostPathKind, LocalHost};
pub use http::{Fetched, display_url};
/// Whether containers of an architecture (GOARCH name) run here without emulation.
pub use kiln_exec::emulation::is_native as arch_is_native;
pub use ops::resolve_owner;
pub use report::{SessionOptions, Stats};
pub use result::{ExecMeta, Solved};
pub use secrets::Secrets;

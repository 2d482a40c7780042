//! Evaluation of kiln's operation graph.
//!
//! An [`Engine`] owns the store, the OCI runtime and the registry client.
//! A [`Session`] solves nodes: inputs first (independent branches run in
//! parallel), then a cache lookup by the node's cache key, and only on a
//! miss the operation itself, whose result is recorded. The same work
//! requested twice at once (in one session or across sessions) runs once.

mod engine;
mod error;
mod events;
pub mod explain;
pub mod host_access;
mod once_map;
mod ops;
mod result;
mod running;
pub mod secrets;
pub mod volumes;

pub use engine::{Engine, EngineConfig, Session, Stats, remove_leftovers};
pub use error::{Cause, SolveError};
pub use events::{Event, EventKind, Events, Stream};
pub use host_access::{Export, ExportError, HostAccess, HostPathKind, LocalHost};
pub use ops::files::resolve_owner;
pub use result::{ExecMeta, Solved};
pub use secrets::Secrets;

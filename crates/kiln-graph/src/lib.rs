//! The operation graph that kiln evaluates.
//!
//! A [`Node`] is one operation ([`Op`]) applied to the filesystem trees its
//! [`Input`]s produce. Each node has two identities:
//! - its *definition digest* ([`Node::digest`]): the canonical encoding of the
//!   op and its inputs' definition digests. It names the node (API IDs).
//! - its *cache key* ([`cache_key`]): the op plus the cache keys of its
//!   inputs, where sources are keyed by their content. It is what persists.
//!
//! This crate does no I/O.

mod key;
mod node;
mod op;

pub use key::{Key, KeyBuilder};
pub use node::{GraphError, Input, Node, cache_key, canonical};
pub use op::{CacheSharing, Exec, ExitExpectation, Mount, Op, Owner, SecretEnv, SecretRef, SourcePolicy};

//! The vocabulary of kiln's operation graph.
//!
//! [`Key`]s name nodes (definition digests) and cache entries (cache keys);
//! [`KeyBuilder`] makes them from length-prefixed parts in a domain. The
//! values here ([`Owner`], [`Mount`], [`SecretRef`], ...) are shared by the
//! operations, which live beside their implementations in kiln-solver.
//!
//! This crate does no I/O.

mod key;
mod values;

pub use key::{Key, KeyBuilder};
pub use values::{CacheSharing, ExitExpectation, Mount, Owner, SecretEnv, SecretRef};

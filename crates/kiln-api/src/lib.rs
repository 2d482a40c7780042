//! kiln's Dagger-compatible API: the GraphQL schema (Dagger's names, types
//! and defaults), resolvers over the solver, IDs that survive sessions, and
//! the HTTP server the SDKs talk to.

pub mod api;
pub mod args;
pub mod error;
pub mod nodes;
pub mod resolvers;
pub mod schema;
pub mod server;
pub mod values;

pub use api::Api;
pub use error::ApiError;
pub use server::{Server, ServerHandle};

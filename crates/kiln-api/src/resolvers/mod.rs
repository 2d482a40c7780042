//! Field resolvers, one module per GraphQL type family.

mod container;
mod directory;
mod docker;
mod dockerfile;
mod file;
mod git;
mod healthcheck;
mod host;
mod http;
mod image;
mod query;
pub mod secret;
pub mod service;

use crate::api::Registry;

/// Registers every implemented field.
pub fn register(r: &mut Registry) {
    query::register(r);
    container::register(r);
    directory::register(r);
    docker::register(r);
    dockerfile::register(r);
    file::register(r);
    git::register(r);
    healthcheck::register(r);
    http::register(r);
    host::register(r);
    image::register(r);
    secret::register(r);
    service::register(r);
}

/// The Dagger API version kiln serves.
pub const API_VERSION: &str = "v0.21.8";

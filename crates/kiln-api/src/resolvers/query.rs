//! `Query`: the root fields.

use std::sync::Arc;

use async_graphql::Value;
use kiln_solver::ops;

use crate::api::{Api, Output, Registry};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{Container, Directory, File, Object, TreeRef};

/// The version string kiln reports (the Dagger API it speaks, then kiln's own).
pub const VERSION: &str = concat!("v0.21.8+kiln.", env!("CARGO_PKG_VERSION"));

pub fn register(r: &mut Registry) {
    r.add("Query", "container", resolver!(container));
    r.add("Query", "directory", resolver!(directory));
    r.add("Query", "file", resolver!(file));
    r.add("Query", "host", resolver!(host));
    r.add("Query", "node", resolver!(node));
    r.add("Query", "version", resolver!(version));
    r.add("Query", "defaultPlatform", resolver!(default_platform));
    r.add("Query", "cacheVolume", resolver!(cache_volume));
    r.add("CacheVolume", "id", resolver!(object_id));
    r.add("EnvVariable", "id", resolver!(object_id));
    r.add("EnvVariable", "name", resolver!(pair_name));
    r.add("EnvVariable", "value", resolver!(pair_value));
    r.add("Label", "id", resolver!(object_id));
    r.add("Label", "name", resolver!(pair_name));
    r.add("Label", "value", resolver!(pair_value));
}

async fn container(_: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    let platform = platform_arg(&args)?;
    Ok(Output::Object(Object::Container(Box::new(Container::empty(platform)))))
}

/// The `platform` argument (`os/arch[/variant]`), else the host's.
pub(super) fn platform_arg(args: &Args) -> Result<String, ApiError> {
    Ok(match args.opt_string("platform") {
        Some(p) => kiln_oci::Platform::parse(&p)
            .map_err(|e| ApiError::invalid(e.to_string()))?
            .to_string(),
        None => kiln_oci::Platform::host().to_string(),
    })
}

async fn directory(_: Arc<Api>, _: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::Object(Object::Directory(Directory {
        tree: None,
        path: "/".into(),
    })))
}

async fn file(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    let name = args.string("name")?;
    if name.contains('/') {
        return Err(ApiError::invalid(format!(
            "file name {name:?} must not contain a slash"
        )));
    }
    let path = format!("/{name}");
    let scratch = api.nodes.input(None)?;
    let node = api.nodes.add(
        ops::MkFile {
            path: path.clone(),
            contents: args.string("contents").unwrap_or_default(),
            mode: args.int("permissions").unwrap_or(0o644) as u32,
            owner: None,
        },
        vec![scratch],
    );
    Ok(Output::Object(Object::File(File {
        tree: Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path,
    })))
}

async fn host(_: Arc<Api>, _: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::Object(Object::Host))
}

async fn node(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    api.load_id(&args, None)
}

async fn version(_: Arc<Api>, _: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(VERSION))
}

async fn default_platform(_: Arc<Api>, _: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(kiln_oci::Platform::host().to_string()))
}

async fn cache_volume(_: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    Ok(Output::Object(Object::CacheVolume {
        key: args.string("key")?,
    }))
}

async fn object_id(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    api.id(&obj)
}

async fn pair_name(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    match obj {
        Object::EnvVariable { name, .. } | Object::Label { name, .. } => Ok(Output::Value(Value::String(name))),
        other => Err(ApiError::internal(format!("name of a {}", other.type_name()))),
    }
}

async fn pair_value(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    match obj {
        Object::EnvVariable { value, .. } | Object::Label { value, .. } => Ok(Output::Value(Value::String(value))),
        other => Err(ApiError::internal(format!("value of a {}", other.type_name()))),
    }
}

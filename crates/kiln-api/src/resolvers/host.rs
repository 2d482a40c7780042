//! `Host`: directories and files of the client's machine.

use std::path::Path;
use std::sync::Arc;

use kiln_graph::Op;

use crate::api::{Api, Output, Registry};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{Directory, File, Object, TreeRef};

pub fn register(r: &mut Registry) {
    r.add("Host", "directory", resolver!(directory));
    r.add("Host", "file", resolver!(file));
}

async fn directory(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    let path = api.host_path(&args.string("path")?);
    if args.bool("gitignore") {
        return Err(ApiError::NotImplemented(
            "the gitignore argument of Host.directory".into(),
        ));
    }
    if !path.is_dir() {
        let why = if path.exists() {
            "it is a file, not a directory (use Host.file for a file)"
        } else {
            "no such directory"
        };
        return Err(ApiError::invalid(format!("host directory {}: {why}", path.display())));
    }
    let node = api.nodes.add(
        Op::HostDir {
            path: path.display().to_string(),
            include: args.strings("include"),
            exclude: args.strings("exclude"),
        },
        vec![],
    );
    Ok(Output::Object(Object::Directory(Directory {
        tree: Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path: "/".into(),
    })))
}

async fn file(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    let path = api.host_path(&args.string("path")?);
    if !path.is_file() {
        let why = if path.is_dir() {
            "it is a directory, not a file (use Host.directory for a directory)"
        } else if path.exists() {
            "it is not a regular file"
        } else {
            "no such file"
        };
        return Err(ApiError::invalid(format!("host file {}: {why}", path.display())));
    }
    let (parent, name) = (
        path.parent().unwrap_or(Path::new("/")),
        path.file_name().unwrap_or_default(),
    );
    let name = name.to_string_lossy().into_owned();
    let node = api.nodes.add(
        Op::HostDir {
            path: parent.display().to_string(),
            include: vec![globset::escape(&name)],
            exclude: vec![],
        },
        vec![],
    );
    Ok(Output::Object(Object::File(File {
        tree: Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path: format!("/{name}"),
    })))
}

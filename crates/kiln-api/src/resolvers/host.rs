//! `Host`: directories and files of the client's machine.

use std::path::Path;
use std::sync::Arc;

use kiln_solver::ops;

use kiln_solver::HostPathKind;

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
    let why = match api.session.host().kind(&path) {
        HostPathKind::Directory => None,
        HostPathKind::Missing => Some("no such directory"),
        _ => Some("it is a file, not a directory (use Host.file for a file)"),
    };
    if let Some(why) = why {
        return Err(ApiError::invalid(format!("host directory {}: {why}", path.display())));
    }
    let node = api.nodes.add(
        ops::HostDir {
            path: path.display().to_string(),
            include: args.strings("include"),
            exclude: args.strings("exclude"),
            gitignore: args.bool("gitignore"),
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
    let why = match api.session.host().kind(&path) {
        HostPathKind::File => None,
        HostPathKind::Directory => Some("it is a directory, not a file (use Host.directory for a directory)"),
        HostPathKind::Other => Some("it is not a regular file"),
        HostPathKind::Missing => Some("no such file"),
    };
    if let Some(why) = why {
        return Err(ApiError::invalid(format!("host file {}: {why}", path.display())));
    }
    let (parent, name) = (
        path.parent().unwrap_or(Path::new("/")),
        path.file_name().unwrap_or_default(),
    );
    let name = name.to_string_lossy().into_owned();
    let node = api.nodes.add(
        ops::HostDir {
            path: parent.display().to_string(),
            include: vec![globset::escape(&name)],
            exclude: vec![],
            gitignore: false,
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

//! `File`: reading files back and exporting them.

use std::path::Path;
use std::sync::Arc;

use async_graphql::Value;
use kiln_store::Digest;

use crate::api::{Api, Output, Registry, file};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{File, Object};

pub fn register(r: &mut Registry) {
    r.add("File", "id", resolver!(id));
    r.add("File", "sync", resolver!(sync));
    r.add("File", "contents", resolver!(contents));
    r.add("File", "size", resolver!(size));
    r.add("File", "name", resolver!(name));
    r.add("File", "export", resolver!(export));
    r.add("File", "digest", resolver!(digest));
    r.add("File", "withName", resolver!(with_name));
}

/// Reads a blob as text (exec output).
pub fn read_blob(api: &Api, digest: &Digest) -> Result<String, ApiError> {
    let bytes = api.engine.store().blobs().read(digest).map_err(ApiError::internal)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Solves the file's tree and finds the file (symlinks followed).
async fn locate(api: &Api, f: &File) -> Result<kiln_store::merged::Entry, ApiError> {
    let view = api.view(f.tree).await?;
    let rel = view.resolve(&f.path, true).map_err(ApiError::internal)?;
    match view.lookup(&rel).map_err(ApiError::internal)? {
        Some(e) if e.meta.is_file() => Ok(e),
        Some(_) => Err(ApiError::invalid(format!("{} is not a regular file", f.path))),
        None => Err(ApiError::invalid(format!("{}: no such file or directory", f.path))),
    }
}

/// Checks that `f` exists and is a file, then returns it.
pub async fn checked_file(api: &Api, f: File) -> Result<Output, ApiError> {
    locate(api, &f).await?;
    Ok(Output::Object(Object::File(f)))
}

async fn id(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    api.id(&obj)
}

async fn sync(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    locate(&api, &file(obj.clone())?).await?;
    api.id(&obj)
}

async fn contents(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let f = file(obj)?;
    let entry = locate(&api, &f).await?;
    let bytes = tokio::task::spawn_blocking(move || entry.read())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (offset, limit) = (args.int("offsetLines"), args.int("limitLines"));
    if offset.is_none() && limit.is_none() {
        return Ok(Output::string(text));
    }
    let lines = text.split_inclusive('\n').skip(offset.unwrap_or(0).max(0) as usize);
    let selected: String = match limit {
        Some(l) => lines.take(l.max(0) as usize).collect(),
        None => lines.collect(),
    };
    Ok(Output::string(selected))
}

async fn size(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let entry = locate(&api, &file(obj)?).await?;
    Ok(Output::Value(Value::from(entry.meta.len())))
}

async fn name(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let f = file(obj)?;
    Ok(Output::string(
        Path::new(&f.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ))
}

async fn export(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let f = file(obj)?;
    let target = api.host_path(&args.string("path")?);
    let dest = export_file(&api, f, target, args.bool("allowParentDirPath")).await?;
    Ok(Output::string(dest.display().to_string()))
}

/// Exports a file to `target` on the client's host (into it, if it is a
/// directory and `allow_parent` is set); the path written.
pub(super) async fn export_file(
    api: &Arc<Api>,
    f: File,
    target: std::path::PathBuf,
    allow_parent: bool,
) -> Result<std::path::PathBuf, ApiError> {
    let target_is_dir = api.session.host().kind(&target) == kiln_solver::HostPathKind::Directory;
    if target_is_dir && !allow_parent {
        return Err(ApiError::invalid(format!(
            "export: {} is a directory; give a file path (or set allowParentDirPath to export into it)",
            target.display()
        )));
    }
    let dest = if target_is_dir {
        target.join(Path::new(&f.path).file_name().unwrap_or_default())
    } else {
        target
    };
    let view = api.view(f.tree).await?;
    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| dest.clone());
    super::directory::export_to_host(api, view, f.path, dest.clone(), dir, false).await?;
    Ok(dest)
}

async fn digest(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let f = file(obj)?;
    super::directory::content_digest(&api, f.tree, &f.path).await
}

async fn with_name(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let f = file(obj)?;
    let name = args.string("name")?;
    if name.contains('/') || name == "." || name == ".." {
        return Err(ApiError::invalid(format!("file name {name:?} must be a plain name")));
    }
    let path = format!("/{name}");
    let op = kiln_solver::ops::Copy {
        src_path: f.path,
        dest_path: path.clone(),
        contents_only: true,
        include: vec![],
        exclude: vec![],
        owner: None,
        mode: None,
    };
    let inputs = vec![api.nodes.input(None)?, api.nodes.input(f.tree)?];
    let node = api.nodes.add(op, inputs);
    Ok(Output::Object(Object::File(File {
        tree: Some(crate::values::TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path,
    })))
}

//! `Directory`: building trees and reading them back.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_graphql::Value;
use kiln_solver::Export;
use kiln_solver::ops;

use crate::api::{Api, Output, Registry, directory, join_path};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{Directory, File, Object, TreeRef};

pub fn register(r: &mut Registry) {
    r.add("Directory", "id", resolver!(id));
    r.add("Directory", "sync", resolver!(sync));
    r.add("Directory", "entries", resolver!(entries));
    r.add("Directory", "file", resolver!(file));
    r.add("Directory", "directory", resolver!(subdirectory));
    r.add("Directory", "withNewFile", resolver!(with_new_file));
    r.add("Directory", "withNewDirectory", resolver!(with_new_directory));
    r.add("Directory", "withFile", resolver!(with_file));
    r.add("Directory", "withDirectory", resolver!(with_directory));
    r.add("Directory", "withoutFile", resolver!(without));
    r.add("Directory", "withoutDirectory", resolver!(without));
    r.add("Directory", "export", resolver!(export));
    r.add("Directory", "glob", resolver!(glob));
    r.add("Directory", "exists", resolver!(exists));
    r.add("Directory", "digest", resolver!(digest));
    r.add("Directory", "name", resolver!(name));
    r.add("Directory", "filter", resolver!(filter));
    r.add("Directory", "withFiles", resolver!(with_files));
    r.add("Directory", "withoutFiles", resolver!(without_files));
    r.add("Directory", "diff", resolver!(diff));
}

fn out(d: Directory) -> Result<Output, ApiError> {
    Ok(Output::Object(Object::Directory(d)))
}

/// Checks that `d` exists and is a directory, then returns it.
pub async fn checked_directory(api: &Api, d: Directory) -> Result<Output, ApiError> {
    let view = api.view(d.tree).await?;
    let rel = view.resolve(&d.path, true).map_err(ApiError::internal)?;
    match view.lookup(&rel).map_err(ApiError::internal)? {
        Some(e) if e.is_dir() => out(d),
        Some(_) => Err(ApiError::invalid(format!("{} is a file, not a directory", d.path))),
        None if rel.as_os_str().is_empty() => out(d),
        None => Err(ApiError::invalid(format!("{}: no such file or directory", d.path))),
    }
}

async fn id(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    api.id(&obj)
}

async fn sync(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    checked_directory(&api, directory(obj.clone())?).await?;
    api.id(&obj)
}

async fn entries(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let path = join_path(&d.path, &args.opt_string("path").unwrap_or_default());
    let view = api.view(d.tree).await?;
    let rel = view.resolve(&path, true).map_err(ApiError::internal)?;
    let Some(listing) = view.read_dir(&rel).map_err(ApiError::internal)? else {
        return Err(match view.lookup(&rel).map_err(ApiError::internal)? {
            Some(_) => ApiError::invalid(format!("{path} is a file, not a directory")),
            None => ApiError::invalid(format!("{path}: no such directory")),
        });
    };
    let names = listing
        .into_iter()
        .map(|(name, e)| {
            let mut n = name.to_string_lossy().into_owned();
            if e.is_dir() {
                n.push('/');
            }
            Value::String(n)
        })
        .collect();
    Ok(Output::Value(Value::List(names)))
}

async fn file(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let path = join_path(&d.path, &args.string("path")?);
    super::file::checked_file(&api, File { tree: d.tree, path }).await
}

async fn subdirectory(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let path = join_path(&d.path, &args.string("path")?);
    checked_directory(&api, Directory { tree: d.tree, path }).await
}

/// Applies a file operation to the directory's tree.
fn apply(api: &Api, d: Directory, op: impl ops::Operation, src: Option<Option<TreeRef>>) -> Result<Output, ApiError> {
    let mut inputs = vec![api.nodes.input(d.tree)?];
    if let Some(src) = src {
        inputs.push(api.nodes.input(src)?);
    }
    let node = api.nodes.add(op, inputs);
    out(Directory {
        tree: Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path: d.path,
    })
}

async fn with_new_file(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let op = ops::MkFile {
        path: join_path(&d.path, &args.string("path")?),
        contents: args.opt_string("contents").unwrap_or_default(),
        mode: args.int("permissions").unwrap_or(0o644) as u32,
        owner: None,
    };
    apply(&api, d, op, None)
}

async fn with_new_directory(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let op = ops::MkDir {
        path: join_path(&d.path, &args.string("path")?),
        mode: args.int("permissions").map(|p| p as u32).unwrap_or(0o755),
        owner: None,
    };
    apply(&api, d, op, None)
}

async fn with_file(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let src = api.arg_file(&args, "source")?;
    let op = ops::Copy {
        src_path: src.path,
        dest_path: join_path(&d.path, &args.string("path")?),
        contents_only: true,
        include: vec![],
        exclude: vec![],
        owner: args.owner(),
        mode: args.int("permissions").map(|p| p as u32),
    };
    apply(&api, d, op, Some(src.tree))
}

async fn with_directory(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let src = api.arg_directory(&args, "source")?;
    let op = ops::Copy {
        src_path: src.path,
        dest_path: join_path(&d.path, &args.string("path")?),
        contents_only: true,
        include: args.strings("include"),
        exclude: args.strings("exclude"),
        owner: args.owner(),
        mode: args.int("permissions").map(|p| p as u32),
    };
    apply(&api, d, op, Some(src.tree))
}

async fn without(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let op = ops::Rm {
        path: join_path(&d.path, &args.string("path")?),
        allow_not_found: true,
    };
    apply(&api, d, op, None)
}

async fn export(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let target = api.host_path(&args.string("path")?);
    let wipe = args.bool("wipe");
    let view = api.view(d.tree).await?;
    export_to_host(&api, view, d.path, target.clone(), target.clone(), wipe).await?;
    Ok(Output::string(target.display().to_string()))
}

/// Copies `src` of a solved tree to the host path `dest` (real copies, never
/// through a symlink), after creating the directory `dir` (and removing
/// `dest` first when `wipe`). Device nodes and setuid/setgid bits are
/// withheld unless the session allows them; the client is told what was
/// withheld.
pub async fn export_to_host(
    api: &Api,
    view: kiln_store::MergedView,
    src: String,
    dest: PathBuf,
    dir: PathBuf,
    wipe: bool,
) -> Result<(), ApiError> {
    let export = Export {
        src,
        dest,
        dir,
        wipe,
        policy: api.session.options().export,
    };
    let host = api.session.host();
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        let stats = host
            .export(&view, &export)
            .map_err(|e| ApiError::invalid(format!("export to {}: {e}", export.dest.display())))?;
        if !stats.withheld.is_empty() {
            host.warn(&withheld_message(&export.dest, &stats.withheld));
        }
        Ok(())
    })
    .await
    .map_err(ApiError::internal)?
}

/// Says what an export withheld (the first few paths) and how to allow it.
fn withheld_message(dest: &Path, withheld: &[kiln_store::Withheld]) -> String {
    const SHOWN: usize = 5;
    let mut list: Vec<String> = withheld.iter().take(SHOWN).map(ToString::to_string).collect();
    if withheld.len() > SHOWN {
        list.push(format!("and {} more", withheld.len() - SHOWN));
    }
    format!(
        "export to {}: {} (they could grant privileges on this host; \
         pass --export-special-files or set [export] in kiln.toml to keep them)",
        dest.display(),
        list.join(", ")
    )
}

async fn glob(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let pattern = args.string("pattern")?;
    let matcher = globset::GlobBuilder::new(pattern.trim_start_matches("./"))
        .literal_separator(true)
        .build()
        .map_err(|e| ApiError::invalid(format!("invalid glob pattern {pattern:?}: {}", e.kind())))?
        .compile_matcher();
    let view = api.view(d.tree).await?;
    let root = view.resolve(&d.path, true).map_err(ApiError::internal)?;
    let mut found = Vec::new();
    view.walk(&root, &mut |rel, e| {
        if matcher.is_match(rel) {
            let mut name = rel.to_string_lossy().into_owned();
            if e.is_dir() {
                name.push('/');
            }
            found.push(Value::String(name));
        }
        Ok(true)
    })
    .map_err(ApiError::internal)?;
    Ok(Output::Value(Value::List(found)))
}

async fn exists(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let path = join_path(&d.path, &args.string("path")?);
    let view = api.view(d.tree).await?;
    let rel = view
        .resolve(&path, !args.bool("doNotFollowSymlinks"))
        .map_err(ApiError::internal)?;
    let entry = view.lookup(&rel).map_err(ApiError::internal)?;
    let found = match (entry, args.opt_string("expectedType").as_deref()) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(e), Some("REGULAR_TYPE")) => e.meta.is_file(),
        (Some(e), Some("DIRECTORY_TYPE")) => e.is_dir(),
        (Some(e), Some("SYMLINK_TYPE")) => e.meta.file_type().is_symlink(),
        (Some(_), Some(other)) => return Err(ApiError::invalid(format!("unknown expectedType {other}"))),
    };
    Ok(Output::Value(Value::Boolean(found)))
}

/// The content digest of a path of a tree, as `sha256:<hex>`.
pub async fn content_digest(api: &Api, tree: Option<TreeRef>, path: &str) -> Result<Output, ApiError> {
    let view = api.view(tree).await?;
    let p = path.to_string();
    let digest = tokio::task::spawn_blocking(move || kiln_store::tree_digest(&view, &p))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::invalid(format!("{path}: no such file or directory")))?;
    Ok(Output::string(digest.to_string()))
}

async fn digest(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    content_digest(&api, d.tree, &d.path).await
}

async fn name(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let base = Path::new(&d.path)
        .file_name()
        .map(|n| format!("{}/", n.to_string_lossy()));
    Ok(Output::string(base.unwrap_or_else(|| "/".into())))
}

async fn filter(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    if args.bool("gitignore") {
        return Err(ApiError::NotImplemented(
            "the gitignore argument of Directory.filter".into(),
        ));
    }
    let op = ops::Copy {
        src_path: d.path.clone(),
        dest_path: "/".into(),
        contents_only: true,
        include: args.strings("include"),
        exclude: args.strings("exclude"),
        owner: None,
        mode: None,
    };
    apply(
        &api,
        Directory {
            tree: None,
            path: "/".into(),
        },
        op,
        Some(d.tree),
    )
}

async fn with_files(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut d = directory(obj)?;
    let dest = join_path(&d.path, &args.string("path")?);
    let mode = args.int("permissions").map(|p| p as u32);
    for id in args.strings("sources") {
        let f = match api.nodes.load(&id)? {
            Object::File(f) => f,
            other => {
                return Err(ApiError::invalid(format!(
                    "sources must be File IDs, got a {}",
                    other.type_name()
                )));
            }
        };
        let name = Path::new(&f.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let op = ops::Copy {
            src_path: f.path,
            dest_path: join_path(&dest, &name),
            contents_only: true,
            include: vec![],
            exclude: vec![],
            owner: None,
            mode,
        };
        d = match apply(&api, d, op, Some(f.tree))? {
            Output::Object(Object::Directory(next)) => next,
            _ => return Err(ApiError::internal("withFiles built no directory")),
        };
    }
    out(d)
}

async fn without_files(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut d = directory(obj)?;
    for path in args.strings("paths") {
        let op = ops::Rm {
            path: join_path(&d.path, &path),
            allow_not_found: true,
        };
        d = match apply(&api, d, op, None)? {
            Output::Object(Object::Directory(next)) => next,
            _ => return Err(ApiError::internal("withoutFiles built no directory")),
        };
    }
    out(d)
}

async fn diff(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let d = directory(obj)?;
    let other = api.arg_directory(&args, "other")?;
    let op = ops::Diff {
        lower_path: d.path.clone(),
        upper_path: other.path,
    };
    let inputs = vec![api.nodes.input(d.tree)?, api.nodes.input(other.tree)?];
    let node = api.nodes.add(op, inputs);
    out(Directory {
        tree: Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path: "/".into(),
    })
}

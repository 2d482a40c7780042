//! File operations: copy between trees, new files and directories, removal.
//! Each writes one new layer on top of the destination tree.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_graph::{Op, Owner};
use kiln_store::merged::{Entry, clean};
use kiln_store::{CopyOptions, MergedView, PathFilter, SnapshotId, Store, copy_tree, prepare_parents, whiteout};

use super::{OpOutput, blocking};
use crate::engine::Engine;
use crate::error::Context;
use crate::{Cause, SolveError};

/// Reads a small text file of a tree (`/etc/passwd`), empty when absent.
pub(crate) fn read_text(view: &MergedView, path: &str) -> String {
    view.resolve(path, true)
        .ok()
        .and_then(|p| view.lookup(p).ok().flatten())
        .filter(|e| e.meta.is_file())
        .and_then(|e| fs::read_to_string(e.real).ok())
        .unwrap_or_default()
}

/// Resolves an owner against the tree's `/etc/passwd` and `/etc/group`.
pub fn resolve_owner(view: &MergedView, owner: &Owner) -> Result<(u32, u32), Cause> {
    let spec = match &owner.group {
        Some(g) => format!("{}:{g}", owner.user),
        None => owner.user.clone(),
    };
    let id = kiln_exec::user::resolve(&spec, &read_text(view, "/etc/passwd"), &read_text(view, "/etc/group"))?;
    Ok((id.uid, id.gid))
}

pub(crate) async fn run(
    engine: &Arc<Engine>,
    desc: &str,
    op: Op,
    dest: Option<SnapshotId>,
    src: Option<SnapshotId>,
) -> Result<OpOutput, SolveError> {
    blocking(engine.store(), desc, move |store| apply(store, &op, dest, src)).await
}

/// Whether two entries hold the same thing (kind, bits, owner, content).
fn same_entry(a: &Entry, b: &Entry) -> Result<bool, Cause> {
    let (ma, mb) = (&a.meta, &b.meta);
    if ma.file_type() != mb.file_type() || ma.mode() != mb.mode() || (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
        return Ok(false);
    }
    if ma.is_file() {
        if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
            return Ok(true);
        }
        if ma.len() != mb.len() {
            return Ok(false);
        }
        let read = |e: &Entry| fs::read(&e.real).map_err(|err| format!("{}: {err}", e.real.display()));
        return Ok(read(a)? == read(b)?);
    }
    if ma.file_type().is_symlink() {
        return Ok(fs::read_link(&a.real).ok() == fs::read_link(&b.real).ok());
    }
    Ok(true)
}

/// Copies into `diff` what `upper` holds under `upper_path` that `lower`
/// lacks or holds differently under `lower_path`.
fn diff_trees(
    lower: &MergedView,
    lower_path: &str,
    upper: &MergedView,
    upper_path: &str,
    diff: &Path,
) -> Result<(), Cause> {
    let lower_root = lower.resolve(lower_path, true)?;
    let upper_root = upper.resolve(upper_path, true)?;
    let filter = PathFilter::default();
    let opts = CopyOptions {
        hardlink: true,
        ..CopyOptions::new(&filter)
    };
    let mut changed: Vec<PathBuf> = Vec::new();
    upper.walk(&upper_root, &mut |rel, e| {
        let old = lower.lookup(lower_root.join(rel))?;
        let same = match &old {
            Some(o) if o.is_dir() && e.is_dir() => true,
            Some(o) => same_entry(o, e).map_err(std::io::Error::other)?,
            None => false,
        };
        if !same {
            changed.push(rel.to_path_buf());
        }
        // A new directory is copied whole; a kept one is looked into.
        Ok(same || !e.is_dir())
    })?;
    for rel in changed {
        let view_parent = MergedView::new(vec![]);
        prepare_parents(&view_parent, diff, &rel)?;
        copy_tree(upper, &upper_root.join(&rel), &diff.join(&rel), &opts)?;
    }
    Ok(())
}

fn apply(store: &Store, op: &Op, dest: Option<SnapshotId>, src: Option<SnapshotId>) -> Result<OpOutput, Cause> {
    if let Op::Diff { lower_path, upper_path } = op {
        let (lower, upper) = (store.view(dest)?, store.view(src)?);
        let staged = store.stage(None)?;
        diff_trees(&lower, lower_path, &upper, upper_path, &staged.diff())?;
        return Ok(OpOutput::single(staged));
    }
    let view = store.view(dest)?;
    let staged = store.stage(dest)?;
    let diff = staged.diff();
    // Paths are resolved in the destination tree, so that a symlinked
    // parent (e.g. /var/run -> /run) leads where it leads in a container.
    let target = |path: &str| -> Result<PathBuf, Cause> {
        let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
        let name = Path::new(path).file_name();
        let dir = view.resolve(parent, true)?;
        Ok(match name {
            Some(n) => dir.join(n),
            None => dir,
        })
    };
    match op {
        Op::Copy {
            src_path,
            dest_path,
            contents_only,
            include,
            exclude,
            owner,
            mode,
        } => {
            let src_view = store.view(src)?;
            let src_rel = src_view.resolve(src_path, true)?;
            let entry = src_view
                .lookup(&src_rel)?
                .ok_or_else(|| format!("{src_path}: no such file or directory in the source"))?;
            let mut rel = target(dest_path)?;
            if entry.is_dir()
                && !contents_only
                && let Some(name) = src_rel.file_name()
            {
                rel = rel.join(name);
            }
            let filter = PathFilter::new(include, exclude)?;
            let owner = owner.as_ref().map(|o| resolve_owner(&view, o)).transpose()?;
            prepare_parents(&view, &diff, &rel)?;
            let opts = CopyOptions {
                owner,
                file_mode: *mode,
                hardlink: true,
                ..CopyOptions::new(&filter)
            };
            copy_tree(&src_view, &src_rel, &diff.join(&rel), &opts)?;
        }
        Op::MkFile {
            path,
            contents,
            mode,
            owner,
        } => {
            let rel = target(path)?;
            if view.lookup(&rel)?.is_some_and(|e| e.is_dir()) {
                return Err(Cause::Invalid(format!("{path} is a directory")));
            }
            prepare_parents(&view, &diff, &rel)?;
            let file = diff.join(&rel);
            fs::write(&file, contents).context(|| path.clone())?;
            set_meta(&view, &file, *mode, owner.as_ref())?;
        }
        Op::MkDir { path, mode, owner } => {
            let rel = clean(target(path)?);
            let mut cur = PathBuf::new();
            for c in rel.components() {
                cur.push(c);
                match view.lookup(&cur)? {
                    Some(e) if e.is_dir() => {}
                    Some(_) => {
                        return Err(Cause::Invalid(format!(
                            "{path}: {} exists and is not a directory",
                            cur.display()
                        )));
                    }
                    None => {
                        prepare_parents(&view, &diff, &cur)?;
                        fs::create_dir(diff.join(&cur)).context(|| path.clone())?;
                        set_meta(&view, &diff.join(&cur), *mode, owner.as_ref())?;
                    }
                }
            }
        }
        Op::Rm { path, allow_not_found } => {
            let rel = target(path)?;
            if view.lookup(&rel)?.is_none() {
                if *allow_not_found {
                    return Ok(OpOutput {
                        staged: vec![],
                        outputs: vec![dest],
                        meta: serde_json::Value::Null,
                    });
                }
                return Err(Cause::Invalid(format!("{path}: no such file or directory")));
            }
            whiteout(&view, &diff, &rel)?;
        }
        other => return Err(Cause::Invalid(format!("{} is not a file operation", other.describe()))),
    }
    Ok(OpOutput::single(staged))
}

fn set_meta(view: &MergedView, path: &Path, mode: u32, owner: Option<&Owner>) -> Result<(), Cause> {
    let (uid, gid) = owner.map(|o| resolve_owner(view, o)).transpose()?.unwrap_or((0, 0));
    lchown(path, Some(uid), Some(gid)).context(|| format!("chown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).context(|| format!("chmod {}", path.display()))
}

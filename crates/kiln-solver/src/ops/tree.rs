//! Helpers for operations that edit a tree: paths resolved as a container
//! would, owners resolved against the tree's own user database.

use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use kiln_graph::Owner;
use kiln_store::{MergedView, SnapshotId, Store};

use super::OpOutput;
use crate::error::Context as _;
use crate::{Cause, SolveError};

/// Runs `edit` off the async threads to write a new layer over `tree`,
/// which is the operation's output: `edit` gets the store, the tree's view
/// and the layer's directory.
pub(crate) async fn edit_layer(
    cx: &super::Context<'_>,
    tree: Option<SnapshotId>,
    edit: impl FnOnce(&Store, &MergedView, &Path) -> Result<(), Cause> + Send + 'static,
) -> Result<OpOutput, SolveError> {
    cx.blocking(move |store| {
        let view = store.view(tree)?;
        let staged = store.stage(tree)?;
        edit(store, &view, &staged.diff())?;
        Ok(OpOutput::single(staged))
    })
    .await
}

/// `/etc/<name>` of a tree (`passwd`, `group`), empty when absent.
pub(crate) fn etc_file(view: &MergedView, name: &str) -> String {
    read_text(view, &format!("/etc/{name}")).unwrap_or_default()
}

/// Reads a small text file of a tree (`/etc/passwd`, a Dockerfile), if it
/// is one.
pub fn read_text(view: &MergedView, path: &str) -> Option<String> {
    view.resolve(path, true)
        .ok()
        .and_then(|p| view.lookup(p).ok().flatten())
        .filter(|e| e.meta.is_file())
        .and_then(|e| fs::read_to_string(e.real).ok())
}

/// Resolves an owner against the tree's `/etc/passwd` and `/etc/group`.
pub fn resolve_owner(view: &MergedView, owner: &Owner) -> Result<(u32, u32), Cause> {
    let spec = match &owner.group {
        Some(g) => format!("{}:{g}", owner.user),
        None => owner.user.clone(),
    };
    let (passwd, group) = (etc_file(view, "passwd"), etc_file(view, "group"));
    let id = kiln_exec::user::resolve(&spec, &passwd, &group)?;
    Ok((id.uid, id.gid))
}

/// Where `path` leads in the tree: its parent is resolved in the tree, so
/// that a symlinked parent (e.g. /var/run -> /run) leads where it leads in
/// a container; the last component is kept as it is.
pub(crate) fn target(view: &MergedView, path: &str) -> Result<PathBuf, Cause> {
    let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
    let dir = view.resolve(parent, true)?;
    Ok(match Path::new(path).file_name() {
        Some(name) => dir.join(name),
        None => dir,
    })
}

/// Sets the permission bits and owner (root when absent) of a new entry.
pub(crate) fn set_meta(view: &MergedView, path: &Path, mode: u32, owner: Option<&Owner>) -> Result<(), Cause> {
    let (uid, gid) = owner.map(|o| resolve_owner(view, o)).transpose()?.unwrap_or((0, 0));
    lchown(path, Some(uid), Some(gid)).context(|| format!("chown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).context(|| format!("chmod {}", path.display()))
}

/// Whether an operation reading `path` of an input reads only a part of it
/// (see [`super::Operation::selectors`]).
pub(crate) fn is_part(path: &str) -> bool {
    !path.trim_matches('/').is_empty() && path != "."
}

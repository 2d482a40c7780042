//! The difference between two trees, as a new tree.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kiln_store::merged::Entry;
use kiln_store::{CopyOptions, MergedView, PathFilter, SnapshotId, copy_tree, prepare_parents};
use serde::{Deserialize, Serialize};

use super::{Context, Definition, OpOutput, Operation, Prepared};
use crate::{Cause, SolveError};

/// The entries under `upper_path` of input 1 that are new or differ from
/// those under `lower_path` of input 0, as a new tree (deletions are not
/// represented).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// Directory of input 0 to compare against.
    pub lower_path: String,
    /// Directory of input 1 whose changes are kept.
    pub upper_path: String,
}

impl Definition for Diff {
    const KIND: &'static str = "diff";
}

#[async_trait]
impl Operation for Diff {
    fn describe(&self) -> String {
        format!("diff {} {}", self.lower_path, self.upper_path)
    }

    async fn run(&self, cx: &Context<'_>, inputs: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let (op, lower, upper) = (self.clone(), inputs[0], inputs.get(1).copied().flatten());
        cx.blocking(move |store| {
            let (lower, upper) = (store.view(lower)?, store.view(upper)?);
            let staged = store.stage(None)?;
            diff_trees(&lower, &op.lower_path, &upper, &op.upper_path, &staged.diff())?;
            Ok(OpOutput::single(staged))
        })
        .await
    }
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

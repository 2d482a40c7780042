//! Copying a file or directory of one tree into another.

use async_trait::async_trait;
use kiln_graph::Owner;
use kiln_store::{CopyOptions, PathFilter, SnapshotId, copy_tree, prepare_parents};
use serde::{Deserialize, Serialize};

use super::tree::{edit_layer, is_part, resolve_owner, target};
use super::{Context, Definition, OpOutput, Operation, Prepared};
use crate::SolveError;

/// Copies `src_path` of input 1 to `dest_path` of input 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// Path in the source tree (a file or a directory).
    pub src_path: String,
    /// Destination path in input 0's tree.
    pub dest_path: String,
    /// When `src_path` is a directory: copy its contents (true) or the
    /// directory itself under `dest_path` (false).
    pub contents_only: bool,
    /// Glob patterns (relative to `src_path`) to keep.
    pub include: Vec<String>,
    /// Glob patterns (relative to `src_path`) to drop.
    pub exclude: Vec<String>,
    /// New owner of everything copied.
    pub owner: Option<Owner>,
    /// New permission bits of copied files.
    pub mode: Option<u32>,
}

impl Definition for Copy {
    const KIND: &'static str = "copy";
}

#[async_trait]
impl Operation for Copy {
    fn describe(&self) -> String {
        format!("copy {} {}", self.src_path, self.dest_path)
    }

    fn selectors(&self) -> Vec<(usize, &str)> {
        match is_part(&self.src_path) {
            true => vec![(1, self.src_path.as_str())],
            false => Vec::new(),
        }
    }

    async fn run(&self, cx: &Context<'_>, inputs: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let (op, src) = (self.clone(), inputs.get(1).copied().flatten());
        edit_layer(cx, inputs[0], move |store, view, diff| {
            let src_view = store.view(src)?;
            let src_rel = src_view.resolve(&op.src_path, true)?;
            let entry = src_view
                .lookup(&src_rel)?
                .ok_or_else(|| format!("{}: no such file or directory in the source", op.src_path))?;
            let mut rel = target(view, &op.dest_path)?;
            if entry.is_dir()
                && !op.contents_only
                && let Some(name) = src_rel.file_name()
            {
                rel = rel.join(name);
            }
            let filter = PathFilter::new(&op.include, &op.exclude)?;
            let owner = op.owner.as_ref().map(|o| resolve_owner(view, o)).transpose()?;
            prepare_parents(view, diff, &rel)?;
            let opts = CopyOptions {
                owner,
                file_mode: op.mode,
                hardlink: true,
                ..CopyOptions::new(&filter)
            };
            copy_tree(&src_view, &src_rel, &diff.join(&rel), &opts)?;
            Ok(())
        })
        .await
    }
}

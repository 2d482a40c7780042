//! Writing a file into a tree.

use std::fs;

use async_trait::async_trait;
use kiln_graph::Owner;
use kiln_store::{SnapshotId, prepare_parents};
use serde::{Deserialize, Serialize};

use super::tree::{edit_layer, set_meta, target};
use super::{Context, Definition, OpOutput, Operation, Prepared};
use crate::error::Context as _;
use crate::{Cause, SolveError};

/// Writes a file into input 0's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkFile {
    /// Absolute path of the file.
    pub path: String,
    /// Its contents.
    pub contents: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner (root when absent).
    pub owner: Option<Owner>,
}

impl Definition for MkFile {
    const KIND: &'static str = "mk_file";
}

#[async_trait]
impl Operation for MkFile {
    fn describe(&self) -> String {
        format!("write {}", self.path)
    }

    async fn run(&self, cx: &Context<'_>, inputs: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let op = self.clone();
        edit_layer(cx, inputs[0], move |_, view, diff| {
            let rel = target(view, &op.path)?;
            if view.lookup(&rel)?.is_some_and(|e| e.is_dir()) {
                return Err(Cause::Invalid(format!("{} is a directory", op.path)));
            }
            prepare_parents(view, diff, &rel)?;
            let file = diff.join(&rel);
            fs::write(&file, &op.contents).context(|| op.path.clone())?;
            set_meta(view, &file, op.mode, op.owner.as_ref())
        })
        .await
    }
}

//! Creating a directory (and its parents) in a tree.

use std::fs;
use std::path::PathBuf;

use async_trait::async_trait;
use kiln_graph::Owner;
use kiln_store::merged::clean;
use kiln_store::{SnapshotId, prepare_parents};
use serde::{Deserialize, Serialize};

use super::tree::{edit_layer, set_meta, target};
use super::{Context, Definition, OpOutput, Operation, Prepared};
use crate::error::Context as _;
use crate::{Cause, SolveError};

/// Creates a directory (and its parents) in input 0's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkDir {
    /// Absolute path of the directory.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner (root when absent).
    pub owner: Option<Owner>,
}

impl Definition for MkDir {
    const KIND: &'static str = "mk_dir";
}

#[async_trait]
impl Operation for MkDir {
    fn describe(&self) -> String {
        format!("mkdir {}", self.path)
    }

    async fn run(&self, cx: &Context<'_>, inputs: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let op = self.clone();
        edit_layer(cx, inputs[0], move |_, view, diff| {
            let rel = clean(target(view, &op.path)?);
            let mut cur = PathBuf::new();
            for c in rel.components() {
                cur.push(c);
                match view.lookup(&cur)? {
                    Some(e) if e.is_dir() => {}
                    Some(_) => {
                        return Err(Cause::Invalid(format!(
                            "{}: {} exists and is not a directory",
                            op.path,
                            cur.display()
                        )));
                    }
                    None => {
                        prepare_parents(view, diff, &cur)?;
                        fs::create_dir(diff.join(&cur)).context(|| op.path.clone())?;
                        set_meta(view, &diff.join(&cur), op.mode, op.owner.as_ref())?;
                    }
                }
            }
            Ok(())
        })
        .await
    }
}

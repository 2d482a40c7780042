//! Removing a path from a tree.

use async_trait::async_trait;
use kiln_store::{SnapshotId, whiteout};
use serde::{Deserialize, Serialize};

use super::tree::target;
use super::{Context, Definition, OpOutput, Operation, Prepared};
use crate::{Cause, SolveError};

/// Removes a path from input 0's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rm {
    /// Absolute path to remove.
    pub path: String,
    /// Succeed when the path does not exist.
    pub allow_not_found: bool,
}

impl Definition for Rm {
    const KIND: &'static str = "rm";
}

#[async_trait]
impl Operation for Rm {
    fn describe(&self) -> String {
        format!("rm {}", self.path)
    }

    async fn run(&self, cx: &Context<'_>, inputs: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let (op, dest) = (self.clone(), inputs[0]);
        cx.blocking(move |store| {
            let view = store.view(dest)?;
            let rel = target(&view, &op.path)?;
            if view.lookup(&rel)?.is_none() {
                return match op.allow_not_found {
                    true => Ok(OpOutput::unchanged(dest)),
                    false => Err(Cause::Invalid(format!("{}: no such file or directory", op.path))),
                };
            }
            let staged = store.stage(dest)?;
            whiteout(&view, &staged.diff(), &rel)?;
            Ok(OpOutput::single(staged))
        })
        .await
    }
}

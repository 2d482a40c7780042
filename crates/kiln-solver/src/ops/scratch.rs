//! The empty tree.

use async_trait::async_trait;
use kiln_store::SnapshotId;
use serde::{Deserialize, Serialize};

use super::{Context, Definition, OpOutput, Operation, Prepared};
use crate::SolveError;

/// An empty tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scratch;

impl Definition for Scratch {
    const KIND: &'static str = "scratch";
}

#[async_trait]
impl Operation for Scratch {
    fn describe(&self) -> String {
        "scratch".into()
    }

    fn constant(&self) -> bool {
        true
    }

    async fn run(&self, _: &Context<'_>, _: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        Ok(OpOutput::unchanged(None))
    }
}

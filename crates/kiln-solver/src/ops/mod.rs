//! The implementation of each operation.

mod exec;
pub(crate) mod files;
mod host;
mod image;

use std::sync::Arc;

use kiln_graph::{Key, Node, Op};
use kiln_store::{SnapshotId, Staged, Store};

use crate::engine::Engine;
use crate::running::Running;
use crate::{Cause, SolveError, Solved};

/// Work done before the cache key is known (reading content-keyed sources).
pub(crate) enum Prepared {
    /// Nothing to read.
    Nothing,
    /// A scanned host directory.
    Host(kiln_store::host::HostTree),
}

impl Prepared {
    /// The content digest of a content-keyed source.
    pub(crate) fn content_key(&self) -> Option<Key> {
        match self {
            Prepared::Host(tree) => Some(Key(tree.digest)),
            Prepared::Nothing => None,
        }
    }
}

/// What running an op produced, before it is committed.
pub(crate) struct OpOutput {
    /// New snapshots to commit.
    pub staged: Vec<Staged>,
    /// The output trees.
    pub outputs: Vec<Option<SnapshotId>>,
    /// Metadata to record.
    pub meta: serde_json::Value,
}

impl OpOutput {
    /// One new snapshot as the single output.
    fn single(staged: Staged) -> Self {
        let id = staged.id();
        OpOutput {
            staged: vec![staged],
            outputs: vec![Some(id)],
            meta: serde_json::Value::Null,
        }
    }
}

/// Runs blocking filesystem work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    op: &str,
    f: impl FnOnce(&Store) -> Result<T, Cause> + Send + 'static,
) -> Result<T, SolveError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| SolveError::op(op, e))?
        .map_err(|e| SolveError::op(op, e))
}

/// Reads what a content-keyed source needs for its key.
pub(crate) async fn prepare(engine: &Arc<Engine>, node: &Arc<Node>) -> Result<Prepared, SolveError> {
    match node.op() {
        Op::HostDir { path, include, exclude } => host::scan(engine, path, include, exclude).await,
        _ => Ok(Prepared::Nothing),
    }
}

/// Runs an op whose inputs are solved.
pub(crate) async fn run(
    engine: &Arc<Engine>,
    node: &Arc<Node>,
    prepared: Prepared,
    inputs: &[Arc<Solved>],
    running: &Running,
) -> Result<OpOutput, SolveError> {
    let input = |n: usize| inputs[n].output(node.inputs()[n].output);
    let desc = node.op().describe();
    match (node.op(), prepared) {
        (Op::Scratch, _) => Ok(OpOutput {
            staged: vec![],
            outputs: vec![None],
            meta: serde_json::Value::Null,
        }),
        (
            Op::Image {
                reference,
                manifest_digest,
                platform,
            },
            _,
        ) => image::pull(engine, reference, manifest_digest, platform, running).await,
        (
            Op::ImageImport {
                path,
                tag,
                manifest_digest,
                platform,
            },
            _,
        ) => image::import(engine, path, tag.as_deref(), manifest_digest, platform).await,
        (Op::HostDir { .. }, Prepared::Host(tree)) => host::import(engine, tree).await,
        (Op::HostDir { .. }, Prepared::Nothing) => Err(SolveError::op(desc, "host directory was not scanned")),
        (Op::Exec(exec), _) => {
            let mounts: Vec<Option<SnapshotId>> = (0..node.inputs().len()).map(input).collect();
            exec::run(engine, &desc, exec, &mounts, running).await
        }
        (op @ (Op::Copy { .. } | Op::MkFile { .. } | Op::MkDir { .. } | Op::Rm { .. } | Op::Diff { .. }), _) => {
            let src = if node.inputs().len() > 1 { input(1) } else { None };
            files::run(engine, &desc, op.clone(), input(0), src).await
        }
    }
}

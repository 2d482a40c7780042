//! Host directory sources: scanned for their content key (with the state
//! directory's stat cache: only new or changed files are read), imported on
//! a miss (only what changed since the previous upload is written).

use std::path::PathBuf;
use std::sync::Arc;

use kiln_store::{HostTree, PathFilter};

use super::{OpOutput, Prepared, blocking};
use crate::SolveError;
use crate::engine::Engine;

pub(crate) async fn scan(
    engine: &Arc<Engine>,
    path: &str,
    include: &[String],
    exclude: &[String],
) -> Result<Prepared, SolveError> {
    let op = format!("upload {path}");
    let filter = PathFilter::new(include, exclude).map_err(|e| SolveError::op(&op, e))?;
    let root = PathBuf::from(path);
    let tree = blocking(engine.store(), &op, move |store| Ok(store.scan_host(&root, &filter)?)).await?;
    tracing::debug!(path, stats = ?tree.stats, "scanned");
    Ok(Prepared::Host(tree))
}

pub(crate) async fn import(engine: &Arc<Engine>, tree: HostTree) -> Result<OpOutput, SolveError> {
    let op = format!("upload {}", tree.root.display());
    blocking(engine.store(), &op, move |store| {
        let staged = store.import_host(&tree)?;
        Ok(OpOutput::single(staged))
    })
    .await
}

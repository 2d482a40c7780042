//! Host directory sources: scanned for their content key, imported on a miss.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_store::PathFilter;
use kiln_store::host::{self, HostTree};

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
    let tree = blocking(engine.store(), &op, move |_| {
        host::scan(&root, &filter).map_err(|e| e.to_string())
    })
    .await?;
    Ok(Prepared::Host(tree))
}

pub(crate) async fn import(engine: &Arc<Engine>, tree: HostTree) -> Result<OpOutput, SolveError> {
    let op = format!("upload {}", tree.root.display());
    blocking(engine.store(), &op, move |store| {
        let staged = store.stage(None).map_err(|e| e.to_string())?;
        host::import(&tree, &staged.diff()).map_err(|e| e.to_string())?;
        Ok(OpOutput::single(staged))
    })
    .await
}

//! Host directory sources: scanned through the client's host for their
//! content key (with the state directory's stat cache, only new or changed
//! files are read), uploaded on a miss (only what changed since the
//! previous upload is written).

use std::path::PathBuf;

use async_trait::async_trait;
use kiln_graph::Key;
use kiln_store::host::HostKind;
use kiln_store::{HostTree, PathFilter, SnapshotId};
use serde::{Deserialize, Serialize};

use super::{CacheMap, Context, Definition, OpOutput, Operation, Prepared};
use crate::{Cause, SolveError};

/// A directory of the host, filtered by include/exclude patterns. Keyed by
/// the content of the files it selects, never by its path or mtimes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDir {
    /// Absolute host path.
    pub path: String,
    /// Glob patterns of paths to keep (empty: everything).
    pub include: Vec<String>,
    /// Glob patterns of paths to drop.
    pub exclude: Vec<String>,
    /// Also drop what the tree's `.gitignore` files (and those above it in
    /// its git repository) ignore.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gitignore: bool,
}

impl Definition for HostDir {
    const KIND: &'static str = "host_dir";
}

impl HostDir {
    /// The cache map of content whose digest is `content`: the same
    /// wherever it was found and however it was selected.
    pub(crate) fn content_map(content: Key) -> CacheMap {
        CacheMap::from_parts(vec![b"host-content".to_vec(), content.as_bytes().to_vec()])
    }
}

#[async_trait]
impl Operation for HostDir {
    fn describe(&self) -> String {
        format!("upload {}", self.path)
    }

    async fn cache_map(&self, cx: &Context<'_>) -> Result<CacheMap, SolveError> {
        let filter = PathFilter::new(&self.include, &self.exclude)
            .map_err(|e| cx.error(e))?
            .with_gitignore(self.gitignore);
        let (root, host) = (PathBuf::from(&self.path), cx.host().clone());
        let tree = cx
            .blocking(move |store| Ok(host.scan_dir(store, &root, &filter)?))
            .await?;
        tracing::debug!(path = self.path, stats = ?tree.stats, "scanned");
        let files = tree
            .entries
            .iter()
            .filter(|e| !matches!(e.kind, HostKind::Dir))
            .map(|e| (e.rel.to_string_lossy().into_owned(), hex::encode(e.digest)))
            .collect();
        Ok(Self::content_map(Key(tree.digest)).with_files(files).with_prepared(tree))
    }

    async fn run(&self, cx: &Context<'_>, _: &[Option<SnapshotId>], prepared: Prepared) -> Result<OpOutput, SolveError> {
        let tree: HostTree = prepared
            .take()
            .ok_or_else(|| cx.error(Cause::Internal("the host directory was not scanned".into())))?;
        let host = cx.host().clone();
        cx.blocking(move |store| Ok(OpOutput::single(host.upload_dir(store, &tree)?)))
            .await
    }
}

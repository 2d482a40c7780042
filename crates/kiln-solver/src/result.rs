//! What solving a node produces.

use std::sync::Arc;

use kiln_graph::Key;
use kiln_store::{Digest, SnapshotId, Store};
use serde::{Deserialize, Serialize};

use crate::SolveError;

/// The result of a solved node.
#[derive(Debug, Clone)]
pub struct Solved {
    /// Its cache key.
    pub key: Key,
    /// The top snapshot of each output tree (`None`: empty tree).
    pub outputs: Vec<Option<SnapshotId>>,
    /// Op-specific metadata (see [`Solved::exec`], [`Solved::image_config`]).
    pub meta: serde_json::Value,
    /// Whether it came from the cache (in this request).
    pub cached: bool,
}

/// What an exec recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecMeta {
    /// Exit code.
    pub exit_code: i32,
    /// Blob holding stdout.
    pub stdout: Digest,
    /// Blob holding stderr.
    pub stderr: Digest,
    /// Blob holding both, interleaved as they arrived.
    #[serde(default)]
    pub combined: Option<Digest>,
}

impl ExecMeta {
    /// The exec metadata in an op's recorded metadata, if it is an exec's.
    pub(crate) fn from_meta(meta: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(meta.get("exec")?.clone()).ok()
    }

    /// Keeps the output of a command that failed (scrubbed already) as
    /// blobs, so that it can be read back like any exec's output. `None`
    /// for other errors, or when the blobs cannot be written (the output
    /// tail is in the error message anyway).
    pub(crate) async fn of_failure(store: &Arc<Store>, error: &SolveError) -> Option<Self> {
        let SolveError::Exec {
            exit_code,
            stdout,
            stderr,
            ..
        } = error
        else {
            return None;
        };
        Self::keep(
            store,
            *exit_code,
            [stdout.clone().into_bytes(), stderr.clone().into_bytes()],
            None,
        )
        .await
    }

    /// Keeps a process's output (scrubbed already: `[stdout, stderr]`, and
    /// both interleaved) as blobs. `None` when they cannot be written.
    pub(crate) async fn keep(
        store: &Arc<Store>,
        exit_code: i32,
        [out, err]: [Vec<u8>; 2],
        combined: Option<Vec<u8>>,
    ) -> Option<Self> {
        let store = store.clone();
        let kept = tokio::task::spawn_blocking(move || -> Result<Self, kiln_store::BlobError> {
            Ok(Self {
                exit_code,
                stdout: store.blobs().put(&out)?,
                stderr: store.blobs().put(&err)?,
                combined: combined.map(|c| store.blobs().put(&c)).transpose()?,
            })
        })
        .await;
        match kept {
            Ok(Ok(meta)) => Some(meta),
            Ok(Err(e)) => {
                tracing::warn!("could not keep the output of a process: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("could not keep the output of a process: {e}");
                None
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ImageMeta {
    pub config: oci_spec::image::ImageConfiguration,
}

impl Solved {
    /// The tree of output `n`.
    pub fn output(&self, n: usize) -> Option<SnapshotId> {
        self.outputs.get(n).copied().flatten()
    }

    /// Exec metadata, for exec nodes.
    pub fn exec(&self) -> Option<ExecMeta> {
        ExecMeta::from_meta(&self.meta)
    }

    /// The image configuration, for image nodes.
    pub fn image_config(&self) -> Option<oci_spec::image::ImageConfiguration> {
        serde_json::from_value::<ImageMeta>(self.meta.get("image")?.clone())
            .ok()
            .map(|m| m.config)
    }
}

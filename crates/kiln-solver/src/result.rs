//! What solving a node produces.

use kiln_graph::Key;
use kiln_store::{Digest, SnapshotId};
use serde::{Deserialize, Serialize};

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
        serde_json::from_value(self.meta.get("exec")?.clone()).ok()
    }

    /// The image configuration, for image nodes.
    pub fn image_config(&self) -> Option<oci_spec::image::ImageConfiguration> {
        serde_json::from_value::<ImageMeta>(self.meta.get("image")?.clone())
            .ok()
            .map(|m| m.config)
    }
}

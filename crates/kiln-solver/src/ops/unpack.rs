//! Extracting a tar archive of one tree into another (the Dockerfile's
//! `ADD` of a local archive: plain, gzip, zstd, bzip2 or xz).

use std::fs;

use async_trait::async_trait;
use kiln_store::{SnapshotId, prepare_parents};
use serde::{Deserialize, Serialize};

use super::image::bounded_limits;
use super::tree::{edit_layer, is_part, target};
use super::{Context, Definition, OpOutput, Operation, Prepared};
use crate::SolveError;
use crate::error::Context as _;

/// Extracts the tar archive (plain or compressed) at `src_path` of input 1
/// into the directory `dest_path` of input 0, as an image layer is
/// extracted: with its limits, and nothing written outside `dest_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpack {
    /// The archive, in the source tree.
    pub src_path: String,
    /// The directory it is extracted into (made when missing).
    pub dest_path: String,
}

impl Definition for Unpack {
    const KIND: &'static str = "unpack";
}

#[async_trait]
impl Operation for Unpack {
    fn describe(&self) -> String {
        format!("unpack {} into {}", self.src_path, self.dest_path)
    }

    fn selectors(&self) -> Vec<(usize, &str)> {
        match is_part(&self.src_path) {
            true => vec![(1, self.src_path.as_str())],
            false => Vec::new(),
        }
    }

    async fn run(&self, cx: &Context<'_>, inputs: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let (op, tree, src, limits) = (self.clone(), inputs[0], inputs.get(1).copied().flatten(), cx.layer_limits());
        edit_layer(cx, tree, move |store, view, diff| {
            let src_view = store.view(src)?;
            let src_rel = src_view.resolve(&op.src_path, true)?;
            let archive = src_view
                .lookup(&src_rel)?
                .filter(|e| e.meta.is_file())
                .ok_or_else(|| format!("{}: no such file in the source", op.src_path))?;
            let rel = target(view, &op.dest_path)?;
            prepare_parents(view, diff, &rel.join("x"))?;
            let dest = diff.join(&rel);
            fs::create_dir_all(&dest).context(|| op.dest_path.clone())?;
            let lowers: Vec<_> = store.chain(tree)?.iter().map(|layer| layer.join(&rel)).collect();
            let file = fs::File::open(&archive.real).context(|| op.src_path.clone())?;
            let (_, tar) = kiln_oci::archive_reader(file).context(|| op.src_path.clone())?;
            kiln_oci::apply_layer(
                tar,
                "application/x-tar",
                &dest,
                &lowers,
                bounded_limits(store, limits),
            )
            .context(|| format!("extracting {}", op.src_path))?;
            Ok(())
        })
        .await
    }
}

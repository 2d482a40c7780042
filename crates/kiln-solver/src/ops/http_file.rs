//! A file whose content is a blob of the store: a URL's content, fetched
//! by `Query.http` (see [`crate::http`]).

use std::fs;

use async_trait::async_trait;
use kiln_store::{Digest, SnapshotId, prepare_parents};
use serde::{Deserialize, Serialize};

use super::tree::{edit_layer, set_meta, target};
use super::{Context, Definition, OpOutput, Operation, Prepared};
use crate::error::Context as _;
use crate::{Cause, SolveError};

/// `/name`, holding the blob `digest`, in a tree of its own. Keyed by the
/// content, never by credentials: `url` is shown without them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFile {
    /// Where the content came from (for people; see `display_url`).
    pub url: String,
    /// The content's digest (`sha256:...`).
    pub digest: String,
    /// The file's name.
    pub name: String,
    /// Its permission bits.
    pub permissions: u32,
}

impl Definition for HttpFile {
    const KIND: &'static str = "http_file";
}

#[async_trait]
impl Operation for HttpFile {
    fn describe(&self) -> String {
        format!("http {}", self.url)
    }

    async fn run(&self, cx: &Context<'_>, _: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let op = self.clone();
        edit_layer(cx, None, move |store, view, diff| {
            let digest: Digest = op
                .digest
                .parse()
                .map_err(|_| Cause::Invalid(format!("{} is not a sha256 digest", op.digest)))?;
            let blob = store.blobs().path(&digest);
            if !blob.is_file() {
                return Err(Cause::Invalid(format!(
                    "the content of {} ({digest}) is no longer in the store: fetch it again in a new session",
                    op.url
                )));
            }
            let rel = target(view, &format!("/{}", op.name))?;
            prepare_parents(view, diff, &rel)?;
            let file = diff.join(&rel);
            fs::copy(&blob, &file).context(|| format!("writing {}", op.name))?;
            set_meta(view, &file, op.permissions, None)
        })
        .await
    }
}

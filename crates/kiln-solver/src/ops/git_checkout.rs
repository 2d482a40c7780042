//! A commit of a git remote, checked out (see [`crate::git`]).

use async_trait::async_trait;
use kiln_graph::SecretRef;
use kiln_store::SnapshotId;
use serde::{Deserialize, Serialize};

use super::tree::edit_layer;
use super::{CacheMap, Context, Definition, OpOutput, Operation, Prepared};
use crate::git::{self, Remote};
use crate::{Cause, SolveError};

/// The tree of `commit` of `remote` (with its `.git`, `depth` commits of
/// history deep, when `keep_git_dir`). Keyed by the commit: fetched once,
/// cached for good; never by credentials or the ref it was reached by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCheckout {
    /// Where from, and how to authenticate.
    pub remote: Remote,
    /// The commit (full hash).
    pub commit: String,
    /// The ref that reaches it (fetched by name; the commit when empty).
    pub fetch_ref: String,
    /// History depth in the kept `.git` (0: all).
    pub depth: u32,
    /// Whether `.git` stays in the tree.
    pub keep_git_dir: bool,
    /// Whether the remote's tags are fetched too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_tags: bool,
}

impl Definition for GitCheckout {
    const KIND: &'static str = "git_checkout";
}

impl GitCheckout {
    /// The checkout as its cache key sees it: the remote without user info
    /// or credentials, and not how the commit was reached.
    fn keyed(&self) -> GitCheckout {
        GitCheckout {
            remote: Remote {
                url: git::display_url(&self.remote.url),
                auth: Default::default(),
                ssh: Default::default(),
            },
            fetch_ref: String::new(),
            ..self.clone()
        }
    }
}

#[async_trait]
impl Operation for GitCheckout {
    fn describe(&self) -> String {
        let short = self.commit.get(..12).unwrap_or(&self.commit);
        format!("git {} {short}", git::display_url(&self.remote.url))
    }

    fn secrets(&self) -> Vec<&SecretRef> {
        self.remote.auth.secrets().collect()
    }

    async fn cache_map(&self, _cx: &Context<'_>) -> Result<CacheMap, SolveError> {
        Ok(CacheMap::definition(&self.keyed()))
    }

    async fn run(&self, cx: &Context<'_>, _: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let (op, secrets, remote) = (self.clone(), cx.secrets().clone(), cx.git_remote(&self.remote));
        let notify = cx.notifier();
        edit_layer(cx, None, move |_, _, diff| {
            let what = git::Checkout {
                commit: &op.commit,
                fetch_ref: if op.fetch_ref.is_empty() { &op.commit } else { &op.fetch_ref },
                depth: op.depth,
                keep_git_dir: op.keep_git_dir,
                include_tags: op.include_tags,
            };
            notify(git::checkout(&remote, what, diff, &secrets).map_err(Cause::Invalid)?);
            Ok(())
        })
        .await
    }
}

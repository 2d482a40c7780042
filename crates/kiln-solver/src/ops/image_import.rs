//! Image sources loaded from an OCI layout directory or an OCI/docker
//! archive on the host.

use std::path::PathBuf;

use async_trait::async_trait;
use kiln_store::SnapshotId;
use serde::{Deserialize, Serialize};

use super::image::{load, pinned, unpack};
use super::{CacheMap, Context, Definition, OpOutput, Operation, Prepared};
use crate::SolveError;

/// The root filesystem of an image loaded from an OCI layout directory or
/// an OCI/docker-archive tarball on the host, pinned to its manifest digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageImport {
    /// Host path of the layout or tarball.
    pub path: String,
    /// Tag to select, when the layout holds several images.
    pub tag: Option<String>,
    /// Digest of the platform-specific manifest.
    pub manifest_digest: String,
    /// `os/arch[/variant]`.
    pub platform: String,
}

impl Definition for ImageImport {
    const KIND: &'static str = "image_import";
}

#[async_trait]
impl Operation for ImageImport {
    fn describe(&self) -> String {
        format!("import {}", self.path)
    }

    fn image(&self) -> Option<String> {
        Some(match &self.tag {
            Some(tag) => format!("{}:{tag}", self.path),
            None => self.path.clone(),
        })
    }

    async fn cache_map(&self, _: &Context<'_>) -> Result<CacheMap, SolveError> {
        Ok(pinned(&self.manifest_digest, &self.platform))
    }

    async fn run(&self, cx: &Context<'_>, _: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        let (path, tag, platform) = (PathBuf::from(&self.path), self.tag.clone(), self.platform.clone());
        let image = cx
            .blocking(move |store| load(store, &path, tag.as_deref(), Some(&platform)))
            .await?;
        if image.manifest_digest.to_string() != self.manifest_digest {
            return Err(cx.error(format!(
                "the image there is now {} but the pipeline was built with {}; load it again",
                image.manifest_digest, self.manifest_digest
            )));
        }
        unpack(cx, image).await
    }
}

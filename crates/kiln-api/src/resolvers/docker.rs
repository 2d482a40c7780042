//! The client's Docker as an image store: `Container.exportImage` loads an
//! image into it (`docker load`) and `Host.containerImage` takes one from
//! it (`docker save`), through the docker CLI with the client's
//! `DOCKER_HOST` (sent with its session options). Only for engines on the
//! client's host.

use std::ffi::OsStr;
use std::sync::Arc;

use kiln_solver::ops;

use super::container::image_container;
use super::image::{stored_path, tarball};
use crate::api::{Api, Output, Registry, container};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::Object;

pub fn register(r: &mut Registry) {
    r.add("Container", "exportImage", resolver!(export_image));
    r.add("Host", "containerImage", resolver!(container_image));
}

/// Runs `docker ARGS` as the client would; `what` names the API call in
/// errors, which carry docker's own message.
async fn docker(api: &Api, what: &str, args: &[&OsStr]) -> Result<(), ApiError> {
    let fail = |why: String| ApiError::invalid(format!("{what}: {why}"));
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(args);
    if let Some(docker_host) = &api.session.options().docker_host {
        cmd.env("DOCKER_HOST", docker_host);
    }
    let done = cmd.output().await.map_err(|e| {
        fail(format!(
            "cannot run the docker CLI ({e}): {what} needs it and a Docker daemon (DOCKER_HOST) on this host"
        ))
    })?;
    if !done.status.success() {
        let command = args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        return Err(fail(format!(
            "`docker {command}` failed ({}): {}",
            done.status,
            String::from_utf8_lossy(&done.stderr).trim()
        )));
    }
    Ok(())
}

/// The image, tagged `name`, loaded into the client's Docker.
async fn export_image(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    super::service::local_only(&api, "exportImage")?;
    let name = args.string("name")?;
    let file = tarball(&api, container(obj)?, &args, Some(name.clone()))?;
    let path = stored_path(&api, &file)
        .await?
        .ok_or_else(|| ApiError::internal("the image tarball is missing"))?;
    let what = format!("exportImage {name}");
    docker(&api, &what, &["load".as_ref(), "--input".as_ref(), path.as_os_str()]).await?;
    // `Void!`: GraphQL wants a value where Dagger sends none; the SDKs
    // ignore what it is.
    Ok(Output::string(String::new()))
}

/// The image `name` of the client's Docker, as a container (saved with
/// `docker save`, then imported like `Container.import`, its layers
/// unpacked at once so that the saved file can go).
async fn container_image(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    super::service::local_only(&api, "containerImage")?;
    let name = args.string("name")?;
    let what = format!("containerImage {name}");
    // In the store's tmp (the engine empties it on start); removed when
    // dropped, whatever happens.
    let saved = tempfile::Builder::new()
        .prefix("docker-save-")
        .suffix(".tar")
        .tempfile_in(api.engine.store().root().join("tmp"))
        .map_err(|e| ApiError::internal(format!("{what}: {e}")))?;
    let args = [
        "save".as_ref(),
        "--output".as_ref(),
        saved.path().as_os_str(),
        name.as_ref(),
    ];
    docker(&api, &what, &args).await?;
    let path = saved.path().display().to_string();
    let platform = kiln_oci::Platform::host().to_string();
    let image = api.engine.load_image(&path, None, Some(&platform)).await?;
    let node = api.nodes.add(
        ops::ImageImport {
            path,
            tag: None,
            manifest_digest: image.manifest_digest.to_string(),
            platform: image.platform().to_string(),
        },
        vec![],
    );
    api.session.solve(&node).await?;
    let c = image_container(node.digest(), &image, Some(name));
    Ok(Output::Object(Object::Container(Box::new(c))))
}

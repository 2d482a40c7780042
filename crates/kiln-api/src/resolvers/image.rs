//! Images in and out: `Container.asTarball`, `Container.export` (one
//! tarball that is both an OCI layout and a Docker archive, several
//! platforms at once), `Container.import`, `publish`, registry auth and
//! annotations.

use std::sync::Arc;

use kiln_oci::{Compression, MediaTypes, RunConfig};
use kiln_solver::ops::{self, ARCHIVE_NAME, ImageArchive, ImageSpec};

use super::container::image_container;
use crate::api::{Api, Output, Registry, container, expand};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{Container, File, Object, TreeRef};

pub fn register(r: &mut Registry) {
    r.add("Container", "asTarball", resolver!(as_tarball));
    r.add("Container", "export", resolver!(export));
    r.add("Container", "import", resolver!(import));
    r.add("Container", "publish", resolver!(publish));
    r.add("Container", "withRegistryAuth", resolver!(with_registry_auth));
    r.add("Container", "withAnnotation", resolver!(with_annotation));
    r.add("Container", "withoutAnnotation", resolver!(without_annotation));
    r.add("Container", "withoutRegistryAuth", resolver!(without_registry_auth));
}

/// An annotation of the manifest the container exports or publishes as
/// (one value per name: a new one replaces the old).
async fn with_annotation(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let name = args.string("name")?;
    c.annotations.retain(|(n, _)| *n != name);
    c.annotations.push((name, args.opt_string("value").unwrap_or_default()));
    Ok(Output::Object(Object::Container(Box::new(c))))
}

async fn without_annotation(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let name = args.string("name")?;
    c.annotations.retain(|(n, _)| *n != name);
    Ok(Output::Object(Object::Container(Box::new(c))))
}

/// Credentials for the registry of `address`, for this session's pulls and
/// pushes (Dagger keeps them per session too, whatever the container).
async fn with_registry_auth(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let secret = api.arg_secret(&args, "secret")?;
    let secret = api.secret_ref(&secret)?;
    let password = api
        .session
        .secret(&secret)
        .ok_or_else(|| ApiError::invalid(format!("secret {:?} is not set in this session", secret.name)))?;
    let login = (args.string("username")?, password.to_string());
    api.session.set_registry_auth(&args.string("address")?, Some(login))?;
    Ok(Output::Object(obj))
}

async fn without_registry_auth(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    api.session.set_registry_auth(&args.string("address")?, None)?;
    Ok(Output::Object(obj))
}

/// What an image's config says of how to run a container.
fn run_config(c: &Container) -> RunConfig {
    RunConfig {
        env: c.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.default_args.clone(),
        user: c.user.clone(),
        workdir: c.workdir.clone(),
        labels: c.labels.clone(),
        exposed_ports: c
            .exposed_ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect(),
        volumes: c.volumes.clone(),
        stop_signal: c.stop_signal.clone(),
        healthcheck: c.healthcheck.clone(),
        annotations: c.annotations.clone(),
    }
}

/// The images of `c` and its `platformVariants` as the arguments ask for
/// them: one per platform, with the inputs of their root filesystems.
struct Images {
    specs: Vec<ImageSpec>,
    inputs: Vec<kiln_solver::Input>,
    compression: Compression,
    media_types: MediaTypes,
}

fn images(api: &Api, c: Container, args: &Args) -> Result<Images, ApiError> {
    let compression = match args.opt_string("forcedCompression").as_deref() {
        None | Some("Gzip" | "GZIP") => Compression::Gzip,
        Some("Zstd" | "ZSTD") => Compression::Zstd,
        Some("Uncompressed" | "UNCOMPRESSED") => Compression::None,
        Some(other) => return Err(ApiError::NotImplemented(format!("{other} layer compression"))),
    };
    let media_types = match args.opt_string("mediaTypes").as_deref() {
        Some("DockerMediaTypes" | "DOCKER") => MediaTypes::Docker,
        _ => MediaTypes::Oci,
    };
    if (media_types, compression) == (MediaTypes::Docker, Compression::Zstd) {
        return Err(ApiError::invalid(
            "Docker media types have no zstd layers: use OCI media types, or gzip",
        ));
    }
    let mut containers = vec![c];
    for id in args.strings("platformVariants") {
        match api.nodes.load(&id)? {
            Object::Container(variant) => containers.push(*variant),
            other => {
                return Err(ApiError::invalid(format!(
                    "platformVariants must be Container IDs, got a {}",
                    other.type_name()
                )));
            }
        }
    }
    // As in Dagger, a container without a root filesystem (`container()`
    // itself, when the variants are the images) is no image of its own.
    containers.retain(|c| c.rootfs.is_some());
    if containers.is_empty() {
        return Err(ApiError::invalid(
            "nothing to make an image of: the container and its platformVariants have no root filesystem \
             (start from an image with from(), or write files into it)",
        ));
    }
    let mut platforms: Vec<&str> = containers.iter().map(|c| c.platform.as_str()).collect();
    platforms.sort();
    if let Some(twice) = platforms.windows(2).find(|w| w[0] == w[1]) {
        return Err(ApiError::invalid(format!(
            "platform {} is given twice: one container per platform",
            twice[0]
        )));
    }
    let specs = containers
        .iter()
        .map(|c| ImageSpec {
            platform: c.platform.clone(),
            run: run_config(c),
        })
        .collect();
    let inputs = containers
        .iter()
        .map(|c| api.nodes.input(c.rootfs))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Images {
        specs,
        inputs,
        compression,
        media_types,
    })
}

/// The image tarball of `c` and its `platformVariants`, as a file.
/// The image tarball of `c` as the arguments ask for it, its images
/// tagged `name` in its Docker manifest.
pub(super) fn tarball(api: &Api, c: Container, args: &Args, name: Option<String>) -> Result<File, ApiError> {
    let images = images(api, c, args)?;
    let op = ImageArchive {
        images: images.specs,
        compression: images.compression,
        media_types: images.media_types,
        name,
    };
    let node = api.nodes.add(op, images.inputs);
    Ok(File {
        tree: Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path: format!("/{ARCHIVE_NAME}"),
    })
}

async fn as_tarball(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let file = tarball(&api, container(obj)?, &args, None)?;
    Ok(Output::Object(Object::File(file)))
}

async fn export(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let mut path = args.string("path")?;
    if args.bool("expand") {
        path = expand(&path, &c.env);
    }
    let file = tarball(&api, c, &args, None)?;
    let dest = super::file::export_file(&api, file, api.host_path(&path), false).await?;
    Ok(Output::string(dest.display().to_string()))
}

async fn publish(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let address = args.string("address")?;
    let images = images(&api, container(obj)?, &args)?;
    let published = api
        .session
        .publish(
            &address,
            images.specs,
            &images.inputs,
            images.compression,
            images.media_types,
        )
        .await?;
    Ok(Output::string(published))
}

async fn import(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let source = api.arg_file(&args, "source")?;
    let tag = args.opt_string("tag");
    // The file's own path in the store: its snapshot is pinned by the session.
    let path = stored_path(&api, &source)
        .await?
        .ok_or_else(|| ApiError::invalid(format!("import: {} is not a file", source.path)))?;
    let path = path.display().to_string();
    let image = api.engine.load_image(&path, tag.as_deref(), Some(&c.platform)).await?;
    let node = api.nodes.add(
        ops::ImageImport {
            path,
            tag,
            manifest_digest: image.manifest_digest.to_string(),
            platform: image.platform().to_string(),
        },
        vec![],
    );
    Ok(Output::Object(Object::Container(Box::new(image_container(
        node.digest(),
        &image,
        None,
    )))))
}

/// Where the file `f` is in the store (solved first); `None` if it is not a
/// regular file.
pub(super) async fn stored_path(api: &Api, f: &File) -> Result<Option<std::path::PathBuf>, ApiError> {
    let view = api.view(f.tree).await?;
    let rel = view.resolve(&f.path, true).map_err(ApiError::internal)?;
    let entry = view.lookup(&rel).map_err(ApiError::internal)?;
    Ok(entry.filter(|e| e.meta.is_file()).map(|e| e.real))
}

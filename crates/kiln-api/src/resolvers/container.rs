//! `Container`: image, configuration, mounts, execs and their results.

use std::path::Path;
use std::sync::Arc;

use async_graphql::Value;
use kiln_graph::{CacheSharing, ExitExpectation, Mount, Owner, SecretEnv};
use kiln_solver::Input;
use kiln_solver::ops::{self, Exec};
use kiln_solver::services::Binding;

use super::file::read_blob;
use crate::api::{Api, Output, Registry, container, expand, join_path};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{Container, ContainerMount, Directory, File, MountSource, Object, TreeRef};

pub fn register(r: &mut Registry) {
    r.add("Container", "id", resolver!(id));
    r.add("Container", "sync", resolver!(sync));
    r.add("Container", "from", resolver!(from));
    r.add("Container", "withExec", resolver!(with_exec));
    r.add("Container", "stdout", resolver!(stdout));
    r.add("Container", "stderr", resolver!(stderr));
    r.add("Container", "exitCode", resolver!(exit_code));
    r.add("Container", "withEnvVariable", resolver!(with_env_variable));
    r.add("Container", "withoutEnvVariable", resolver!(without_env_variable));
    r.add("Container", "envVariable", resolver!(env_variable));
    r.add("Container", "envVariables", resolver!(env_variables));
    r.add("Container", "withWorkdir", resolver!(with_workdir));
    r.add("Container", "workdir", resolver!(workdir));
    r.add("Container", "withUser", resolver!(with_user));
    r.add("Container", "user", resolver!(user));
    r.add("Container", "withEntrypoint", resolver!(with_entrypoint));
    r.add("Container", "entrypoint", resolver!(entrypoint));
    r.add("Container", "withDefaultArgs", resolver!(with_default_args));
    r.add("Container", "withoutDefaultArgs", resolver!(without_default_args));
    r.add("Container", "defaultArgs", resolver!(default_args));
    r.add("Container", "withLabel", resolver!(with_label));
    r.add("Container", "label", resolver!(label));
    r.add("Container", "labels", resolver!(labels));
    r.add("Container", "withDirectory", resolver!(with_directory));
    r.add("Container", "withFile", resolver!(with_file));
    r.add("Container", "withNewFile", resolver!(with_new_file));
    r.add("Container", "withoutFile", resolver!(without_path));
    r.add("Container", "withoutDirectory", resolver!(without_path));
    r.add("Container", "withMountedDirectory", resolver!(with_mounted_directory));
    r.add("Container", "withMountedFile", resolver!(with_mounted_file));
    r.add("Container", "withMountedTemp", resolver!(with_mounted_temp));
    r.add("Container", "withoutMount", resolver!(without_mount));
    r.add("Container", "mounts", resolver!(mounts));
    r.add("Container", "directory", resolver!(directory));
    r.add("Container", "file", resolver!(file));
    r.add("Container", "rootfs", resolver!(rootfs));
    r.add("Container", "withRootfs", resolver!(with_rootfs));
    r.add("Container", "platform", resolver!(platform));
    r.add("Container", "imageRef", resolver!(image_ref));
    r.add("Container", "withMountedCache", resolver!(with_mounted_cache));
    r.add("Container", "withMountedSecret", resolver!(with_mounted_secret));
    r.add("Container", "withSecretVariable", resolver!(with_secret_variable));
    r.add("Container", "withoutSecretVariable", resolver!(without_secret_variable));
    r.add("Container", "combinedOutput", resolver!(combined_output));
}

fn out(c: Container) -> Result<Output, ApiError> {
    Ok(Output::Object(Object::Container(Box::new(c))))
}

fn strings(v: &[String]) -> Output {
    Output::Value(Value::List(v.iter().map(|s| Value::String(s.clone())).collect()))
}

/// The container's path for a user path (relative to the workdir), with
/// `$VAR`/`${VAR}` expanded from the container's env when `expand` is set.
fn path_arg(c: &Container, args: &Args, name: &str) -> Result<String, ApiError> {
    let mut path = args.string(name)?;
    if args.bool("expand") {
        path = expand(&path, &c.env);
    }
    Ok(join_path(&c.workdir, &path))
}

async fn id(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    api.id(&obj)
}

async fn sync(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let c = container(obj.clone())?;
    api.solve_tree(c.rootfs).await?;
    for m in &c.mounts {
        if let MountSource::Tree { tree, .. } = &m.source {
            api.solve_tree(*tree).await?;
        }
    }
    api.id(&obj)
}

async fn from(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    out(pulled(&api, &args.string("address")?, &c.platform).await?)
}

/// The container of the image `address` for `platform` (resolved now).
pub(crate) async fn pulled(api: &Api, address: &str, platform: &str) -> Result<Container, ApiError> {
    let address = address.to_string();
    let image = api.session.resolve_image(&address, Some(platform)).await?;
    let reference = image
        .reference
        .as_ref()
        .map(|r| r.name())
        .unwrap_or_else(|| address.clone());
    let node = api.nodes.add(
        ops::Image {
            reference: reference.clone(),
            manifest_digest: image.manifest_digest.to_string(),
            platform: image.platform().to_string(),
        },
        vec![],
    );
    let image_ref = format!("{reference}@{}", image.manifest_digest);
    Ok(image_container(node.digest(), &image, Some(image_ref)))
}

/// The container an image's root filesystem (the tree of `node`) and config make.
pub(super) fn image_container(
    node: kiln_graph::Key,
    image: &kiln_oci::ResolvedImage,
    image_ref: Option<String>,
) -> Container {
    let config = image.config.config().clone().unwrap_or_default();
    let env = config
        .env()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv, String::new()),
        })
        .collect();
    Container {
        rootfs: Some(TreeRef { node, output: 0 }),
        env,
        workdir: config
            .working_dir()
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: config.user().clone().unwrap_or_default(),
        entrypoint: config.entrypoint().clone().unwrap_or_default(),
        default_args: config.cmd().clone().unwrap_or_default(),
        labels: config.labels().clone().unwrap_or_default().into_iter().collect(),
        image_ref,
        volumes: config.volumes().clone().unwrap_or_default(),
        stop_signal: config.stop_signal().clone(),
        healthcheck: image.healthcheck.clone(),
        ..Container::empty(image.platform().to_string())
    }
}

async fn with_exec(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let mut argv = args.strings("args");
    if argv.is_empty() {
        // As in Dagger: no args means the container's default args.
        argv = c.default_args.clone();
    }
    if args.bool("expand") {
        argv = argv.iter().map(|a| expand(a, &c.env)).collect();
    }
    if args.bool("useEntrypoint") {
        argv = c.entrypoint.iter().cloned().chain(argv).collect();
    }
    if argv.is_empty() {
        return Err(ApiError::invalid(
            "withExec needs a command: args is empty and the container has no default args (withDefaultArgs)",
        ));
    }
    let expect = match args.opt_string("expect").as_deref() {
        Some("FAILURE") => ExitExpectation::Failure,
        Some("ANY") => ExitExpectation::Any,
        _ => ExitExpectation::Success,
    };
    let (mut exec, inputs) = exec_of(&api, &c, argv)?;
    exec.stdin = args.opt_string("stdin");
    exec.expect = expect;
    exec.stdin_path = args.opt_string("redirectStdin");
    exec.redirect_stdout = args.opt_string("redirectStdout");
    exec.redirect_stderr = args.opt_string("redirectStderr");
    let node = api.nodes.add(exec, inputs);
    let digest = node.digest();
    c.rootfs = Some(TreeRef {
        node: digest,
        output: 0,
    });
    let mut next_output = 1;
    for m in &mut c.mounts {
        if let MountSource::Tree {
            tree, readonly: false, ..
        } = &mut m.source
        {
            *tree = Some(TreeRef {
                node: digest,
                output: next_output,
            });
            next_output += 1;
        }
    }
    c.last_exec = Some(digest);
    out(c)
}

/// The exec of `argv` in container `c` (its mounts, secrets and service
/// bindings) and the node inputs it reads.
pub(super) fn exec_of(api: &Api, c: &Container, argv: Vec<String>) -> Result<(Exec, Vec<Input>), ApiError> {
    let mut inputs = vec![api.nodes.input(c.rootfs)?];
    let mut mounts = Vec::new();
    for m in &c.mounts {
        let target = m.target.clone();
        match &m.source {
            MountSource::Tree { tree, path, readonly } => {
                inputs.push(api.nodes.input(*tree)?);
                mounts.push(Mount::Tree {
                    target,
                    input: inputs.len() - 1,
                    source_path: path.clone(),
                    readonly: *readonly,
                });
            }
            MountSource::Temp => mounts.push(Mount::Tmpfs { target }),
            MountSource::Cache {
                key,
                sharing,
                owner,
                source,
            } => {
                let source = match source {
                    Some(dir) => {
                        inputs.push(api.nodes.input(dir.tree)?);
                        Some((inputs.len() - 1, dir.path.clone()))
                    }
                    None => None,
                };
                let owner = owner.as_deref().map(Owner::parse);
                mounts.push(Mount::Cache {
                    target,
                    key: key.clone(),
                    sharing: *sharing,
                    owner,
                    source,
                });
            }
            MountSource::Secret { secret, owner, mode } => mounts.push(Mount::Secret {
                target,
                secret: api.secret_ref(secret)?,
                mode: *mode,
                owner: owner.as_deref().map(Owner::parse),
            }),
        }
    }
    let secret_env = c
        .secret_env
        .iter()
        .map(|(name, secret)| {
            Ok(SecretEnv {
                name: name.clone(),
                secret: api.secret_ref(secret)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut services = Vec::new();
    for (alias, service) in &c.services {
        let (def, own) = super::service::definition(api, service)?;
        services.push(Binding {
            alias: alias.clone(),
            first_input: inputs.len(),
            inputs: own.len(),
            service: def,
        });
        inputs.extend(own);
    }
    let exec = Exec {
        args: argv,
        env: c.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd: c.workdir.clone(),
        user: c.user.clone(),
        mounts,
        secret_env,
        services,
        foreign_arch: foreign_arch(&c.platform),
        ..Exec::default()
    };
    Ok((exec, inputs))
}

/// The architecture of `platform` when this machine does not run it
/// natively (its execs are emulated).
fn foreign_arch(platform: &str) -> Option<String> {
    let arch = kiln_oci::Platform::parse(platform).ok()?.architecture;
    (!kiln_solver::arch_is_native(&arch)).then_some(arch)
}

/// The exec metadata of the container's last command.
async fn last_exec(api: &Api, c: &Container) -> Result<kiln_solver::ExecMeta, ApiError> {
    let key = c
        .last_exec
        .ok_or_else(|| ApiError::invalid("no command has been executed on this container (use withExec first)"))?;
    let node = api.nodes.get(&key)?;
    let solved = api.session.solve(&node).await?;
    solved
        .exec()
        .ok_or_else(|| ApiError::internal("exec result without exec metadata"))
}

async fn stdout(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let meta = last_exec(&api, &container(obj)?).await?;
    Ok(Output::string(read_blob(&api, &meta.stdout)?))
}

async fn stderr(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let meta = last_exec(&api, &container(obj)?).await?;
    Ok(Output::string(read_blob(&api, &meta.stderr)?))
}

async fn exit_code(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let meta = last_exec(&api, &container(obj)?).await?;
    Ok(Output::Value(Value::from(meta.exit_code)))
}

async fn with_env_variable(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let (name, mut value) = (args.string("name")?, args.opt_string("value").unwrap_or_default());
    if args.bool("expand") {
        value = expand(&value, &c.env);
    }
    match c.env.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = value,
        None => c.env.push((name, value)),
    }
    out(c)
}

async fn without_env_variable(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let name = args.string("name")?;
    c.env.retain(|(k, _)| *k != name);
    out(c)
}

async fn env_variable(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let name = args.string("name")?;
    Ok(match c.env.into_iter().find(|(k, _)| *k == name) {
        Some((_, v)) => Output::string(v),
        None => Output::Null,
    })
}

async fn env_variables(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    Ok(Output::Objects(
        c.env
            .into_iter()
            .map(|(name, value)| Object::EnvVariable { name, value })
            .collect(),
    ))
}

async fn with_workdir(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    c.workdir = path_arg(&c, &args, "path")?;
    out(c)
}

async fn workdir(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(container(obj)?.workdir))
}

async fn with_user(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    c.user = args.opt_string("name").unwrap_or_default();
    out(c)
}

async fn user(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(container(obj)?.user))
}

async fn with_entrypoint(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    c.entrypoint = args.strings("args");
    if !args.bool("keepDefaultArgs") {
        c.default_args.clear();
        c.default_args_set = false;
    }
    out(c)
}

async fn entrypoint(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(strings(&container(obj)?.entrypoint))
}

async fn with_default_args(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    c.default_args = args.strings("args");
    c.default_args_set = true;
    out(c)
}

async fn without_default_args(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    c.default_args.clear();
    c.default_args_set = false;
    out(c)
}

async fn default_args(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(strings(&container(obj)?.default_args))
}

async fn with_label(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let (name, value) = (args.string("name")?, args.opt_string("value").unwrap_or_default());
    match c.labels.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = value,
        None => c.labels.push((name, value)),
    }
    out(c)
}

async fn label(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let name = args.string("name")?;
    Ok(match container(obj)?.labels.into_iter().find(|(k, _)| *k == name) {
        Some((_, v)) => Output::string(v),
        None => Output::Null,
    })
}

async fn labels(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    Ok(Output::Objects(
        c.labels
            .into_iter()
            .map(|(name, value)| Object::Label { name, value })
            .collect(),
    ))
}

/// Applies a file operation to the rootfs.
fn on_rootfs(
    api: &Api,
    mut c: Container,
    op: impl ops::Operation,
    extra: Option<Option<TreeRef>>,
) -> Result<Output, ApiError> {
    let mut inputs = vec![api.nodes.input(c.rootfs)?];
    if let Some(src) = extra {
        inputs.push(api.nodes.input(src)?);
    }
    let node = api.nodes.add(op, inputs);
    c.rootfs = Some(TreeRef {
        node: node.digest(),
        output: 0,
    });
    out(c)
}

async fn with_directory(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let dest = path_arg(&c, &args, "path")?;
    let src = api.arg_directory(&args, "source")?;
    let op = ops::Copy {
        src_path: src.path.clone(),
        dest_path: dest,
        contents_only: true,
        include: args.strings("include"),
        exclude: args.strings("exclude"),
        owner: args.owner(),
        mode: args.int("permissions").map(|p| p as u32),
    };
    on_rootfs(&api, c, op, Some(src.tree))
}

async fn with_file(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let dest = path_arg(&c, &args, "path")?;
    let src = api.arg_file(&args, "source")?;
    let op = ops::Copy {
        src_path: src.path.clone(),
        dest_path: dest,
        contents_only: true,
        include: vec![],
        exclude: vec![],
        owner: args.owner(),
        mode: args.int("permissions").map(|p| p as u32),
    };
    on_rootfs(&api, c, op, Some(src.tree))
}

async fn with_new_file(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let op = ops::MkFile {
        path: path_arg(&c, &args, "path")?,
        contents: args.opt_string("contents").unwrap_or_default(),
        mode: args.int("permissions").unwrap_or(0o644) as u32,
        owner: args.owner(),
    };
    on_rootfs(&api, c, op, None)
}

async fn without_path(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let op = ops::Rm {
        path: path_arg(&c, &args, "path")?,
        allow_not_found: true,
    };
    on_rootfs(&api, c, op, None)
}

fn with_mount(mut c: Container, target: String, source: MountSource) -> Result<Output, ApiError> {
    c.mounts.retain(|m| m.target != target);
    c.mounts.push(ContainerMount { target, source });
    out(c)
}

/// The tree and path to mount for a source, re-owned when `owner` is set
/// (a copy of the source, owned as asked, as Dagger does).
async fn mount_source(
    api: &Api,
    c: &Container,
    tree: Option<TreeRef>,
    path: String,
    owner: Option<Owner>,
    is_file: bool,
) -> Result<(Option<TreeRef>, String), ApiError> {
    let Some(owner) = owner else { return Ok((tree, path)) };
    // Names mean what the container's /etc/passwd says.
    let view = api.view(c.rootfs).await?;
    let (uid, gid) = kiln_solver::resolve_owner(&view, &owner)?;
    let owner = Owner {
        user: uid.to_string(),
        group: Some(gid.to_string()),
    };
    let name = Path::new(&path).file_name().map(|n| n.to_string_lossy().into_owned());
    let dest = match (&name, is_file) {
        (Some(n), true) => format!("/{n}"),
        _ => "/".into(),
    };
    let op = ops::Copy {
        src_path: path,
        dest_path: dest.clone(),
        contents_only: true,
        include: vec![],
        exclude: vec![],
        owner: Some(owner),
        mode: None,
    };
    let inputs = vec![api.nodes.input(None)?, api.nodes.input(tree)?];
    let node = api.nodes.add(op, inputs);
    Ok((
        Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        dest,
    ))
}

async fn with_mounted_directory(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let target = path_arg(&c, &args, "path")?;
    let src = api.arg_directory(&args, "source")?;
    let (tree, path) = mount_source(&api, &c, src.tree, src.path, args.owner(), false).await?;
    with_mount(
        c,
        target,
        MountSource::Tree {
            tree,
            path,
            readonly: args.bool("readOnly"),
        },
    )
}

async fn with_mounted_file(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let target = path_arg(&c, &args, "path")?;
    let src = api.arg_file(&args, "source")?;
    let (tree, path) = mount_source(&api, &c, src.tree, src.path, args.owner(), true).await?;
    with_mount(
        c,
        target,
        MountSource::Tree {
            tree,
            path,
            readonly: false,
        },
    )
}

async fn with_mounted_temp(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let target = path_arg(&c, &args, "path")?;
    with_mount(c, target, MountSource::Temp)
}

async fn without_mount(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let target = path_arg(&c, &args, "path")?;
    c.mounts.retain(|m| m.target != target);
    out(c)
}

async fn mounts(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let targets: Vec<String> = container(obj)?.mounts.into_iter().map(|m| m.target).collect();
    Ok(strings(&targets))
}

/// Where a container path lives: in a mount (longest matching target) or
/// in the rootfs.
fn locate(c: &Container, path: &str) -> Result<(Option<TreeRef>, String), ApiError> {
    let under = |target: &str| path == target || path.starts_with(&format!("{}/", target.trim_end_matches('/')));
    let best = c
        .mounts
        .iter()
        .filter(|m| under(&m.target))
        .max_by_key(|m| m.target.len());
    match best {
        None => Ok((c.rootfs, path.to_string())),
        Some(m) => match &m.source {
            MountSource::Tree { tree, path: base, .. } => {
                let rest = path[m.target.len()..].trim_start_matches('/');
                Ok((*tree, join_path(base, rest)))
            }
            MountSource::Temp | MountSource::Cache { .. } | MountSource::Secret { .. } => {
                Err(ApiError::invalid(format!(
                    "{path} is on the mount at {}, whose contents are not part of the container",
                    m.target
                )))
            }
        },
    }
}

async fn directory(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let (tree, path) = locate(&c, &path_arg(&c, &args, "path")?)?;
    super::directory::checked_directory(&api, Directory { tree, path }).await
}

async fn file(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let (tree, path) = locate(&c, &path_arg(&c, &args, "path")?)?;
    super::file::checked_file(&api, File { tree, path }).await
}

async fn rootfs(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::Object(Object::Directory(Directory {
        tree: container(obj)?.rootfs,
        path: "/".into(),
    })))
}

async fn with_rootfs(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let dir = api.arg_directory(&args, "directory")?;
    if dir.path == "/" {
        c.rootfs = dir.tree;
        c.last_exec = None;
        return out(c);
    }
    c.rootfs = None;
    let op = ops::Copy {
        src_path: dir.path,
        dest_path: "/".into(),
        contents_only: true,
        include: vec![],
        exclude: vec![],
        owner: None,
        mode: None,
    };
    on_rootfs(&api, c, op, Some(dir.tree))
}

async fn platform(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(container(obj)?.platform))
}

async fn image_ref(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    container(obj)?
        .image_ref
        .map(Output::string)
        .ok_or_else(|| ApiError::invalid("the container was not created from an image reference"))
}

async fn with_mounted_cache(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let target = path_arg(&c, &args, "path")?;
    let key = match api.arg_object(&args, "cache")? {
        Object::CacheVolume { key } => key,
        other => {
            return Err(ApiError::invalid(format!(
                "argument cache must be a CacheVolume ID, got a {}",
                other.type_name()
            )));
        }
    };
    let source = match args.opt_string("source") {
        Some(_) => Some(api.arg_directory(&args, "source")?),
        None => None,
    };
    let sharing = match args.opt_string("sharing").as_deref() {
        Some("PRIVATE") => CacheSharing::Private,
        Some("LOCKED") => CacheSharing::Locked,
        _ => CacheSharing::Shared,
    };
    with_mount(
        c,
        target,
        MountSource::Cache {
            key,
            sharing,
            owner: args.opt_string("owner"),
            source,
        },
    )
}

async fn with_mounted_secret(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    let target = path_arg(&c, &args, "path")?;
    let secret = api.arg_secret(&args, "source")?;
    let mode = args.int("mode").unwrap_or(0o400) as u32;
    with_mount(
        c,
        target,
        MountSource::Secret {
            secret,
            owner: args.opt_string("owner"),
            mode,
        },
    )
}

async fn with_secret_variable(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let name = args.string("name")?;
    let secret = api.arg_secret(&args, "secret")?;
    c.env.retain(|(k, _)| *k != name);
    c.secret_env.retain(|(k, _)| *k != name);
    c.secret_env.push((name, secret));
    out(c)
}

async fn without_secret_variable(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let name = args.string("name")?;
    c.secret_env.retain(|(k, _)| *k != name);
    out(c)
}

async fn combined_output(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let meta = last_exec(&api, &container(obj)?).await?;
    let combined = meta.combined.unwrap_or(meta.stdout);
    Ok(Output::string(read_blob(&api, &combined)?))
}

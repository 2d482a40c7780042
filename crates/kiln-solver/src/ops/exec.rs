//! Running a process: the rootfs and tree mounts become overlay stacks whose
//! upper directories are the exec's output snapshots.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::os::unix::fs::PermissionsExt;

use kiln_exec::{Bind, Overlay, ProcessSpec, RunSpec, TreeMount};
use kiln_graph::{Exec, Mount};
use kiln_store::merged::clean;
use kiln_store::{CopyOptions, MergedView, PathFilter, SnapshotId, Staged, Store, copy_tree, prepare_parents};

use super::files::{read_text, resolve_owner};
use super::{OpOutput, blocking};
use crate::engine::Engine;
use crate::error::Context;
use crate::result::ExecMeta;
use crate::running::Running;
use crate::secrets::Secrets;
use crate::volumes::Lease;
use crate::{Cause, SolveError};

/// Mount points the runtime creates in every container.
const RUNTIME_MOUNTS: [&str; 6] = ["/proc", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev", "/sys"];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct Prepared {
    spec: RunSpec,
    root: Staged,
    writable: Vec<Staged>,
    lower: MergedView,
    /// In-memory directory with this exec's secret files (removed after).
    secret_dir: Option<SecretDir>,
}

/// A directory of secret files in the in-memory run dir, removed on drop.
struct SecretDir(PathBuf);

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Host directories of the cache volumes an exec mounts, in mount order.
type VolumePaths = Vec<PathBuf>;

fn overlay(store: &Store, top: Option<SnapshotId>, upper: Option<&Staged>) -> Result<Overlay, Cause> {
    let lowers = store.mount_layers(top)?;
    Ok(Overlay {
        lowers,
        upper: upper.map(|s| (s.diff(), s.work())),
    })
}

fn secret(secrets: &Secrets, r: &kiln_graph::SecretRef) -> Result<Arc<String>, Cause> {
    secrets.get(r).ok_or_else(|| {
        Cause::Invalid(format!(
            "secret {:?} is not known to this engine session: set it again (setSecret or secret(uri))",
            r.name
        ))
    })
}

fn prepare(
    store: &Store,
    runtime: &kiln_exec::Runtime,
    secrets: &Secrets,
    exec: &Exec,
    inputs: &[Option<SnapshotId>],
    volumes: &VolumePaths,
) -> Result<Prepared, Cause> {
    let rootfs = inputs[0];
    let view = store.view(rootfs)?;
    let (passwd, group) = (read_text(&view, "/etc/passwd"), read_text(&view, "/etc/group"));
    let identity = kiln_exec::user::resolve(&exec.user, &passwd, &group)?;
    let root = store.stage(rootfs)?;

    // The working directory exists before the process starts, as in Docker.
    let cwd = view.resolve(&exec.cwd, true)?;
    if view.lookup(&cwd)?.is_none() {
        prepare_parents(&view, &root.diff(), &cwd.join("x"))?;
    }

    let mut trees = Vec::new();
    let mut tmpfs = Vec::new();
    let mut binds = Vec::new();
    let mut writable = Vec::new();
    let mut secret_dir = None;
    let mut volume_paths = volumes.iter();
    for m in &exec.mounts {
        match m {
            Mount::Tree {
                target,
                input,
                source_path,
                readonly,
            } => {
                let top = inputs[*input];
                let tree_view = store.view(top)?;
                let subpath = tree_view.resolve(source_path, true)?;
                if !subpath.as_os_str().is_empty() && tree_view.lookup(&subpath)?.is_none() {
                    return Err(Cause::Invalid(format!(
                        "cannot mount {source_path} at {target}: no such file or directory in the mounted tree"
                    )));
                }
                let staged = if *readonly { None } else { Some(store.stage(top)?) };
                trees.push(TreeMount {
                    overlay: overlay(store, top, staged.as_ref())?,
                    subpath,
                    target: target.clone(),
                });
                writable.extend(staged);
            }
            Mount::Tmpfs { target } => tmpfs.push(target.clone()),
            Mount::Cache { target, .. } => {
                let source = volume_paths.next().ok_or("cache volume was not leased")?.clone();
                binds.push(Bind {
                    source,
                    target: target.clone(),
                    readonly: false,
                });
            }
            Mount::Secret {
                target,
                secret: r,
                mode,
                owner,
            } => {
                if !store.run_dir_in_memory() {
                    return Err(Cause::Invalid(format!(
                        "cannot mount secret {:?}: no in-memory filesystem (tmpfs at /dev/shm) to hold it",
                        r.name
                    )));
                }
                let dir = secret_dir
                    .get_or_insert_with(|| SecretDir(store.run_dir().join(format!("secrets-{}", root.id()))))
                    .0
                    .clone();
                fs::create_dir_all(&dir).context(|| "secret files".to_string())?;
                let file = dir.join(binds.len().to_string());
                fs::write(&file, secret(secrets, r)?.as_bytes()).context(|| "secret file".to_string())?;
                let (uid, gid) = match owner {
                    Some(o) => resolve_owner(&view, o)?,
                    None => (identity.uid, identity.gid),
                };
                std::os::unix::fs::chown(&file, Some(uid), Some(gid)).context(|| "secret file".to_string())?;
                fs::set_permissions(&file, fs::Permissions::from_mode(*mode)).context(|| "secret file".to_string())?;
                binds.push(Bind {
                    source: file,
                    target: target.clone(),
                    readonly: true,
                });
            }
        }
    }

    let mut env = exec.env.clone();
    for se in &exec.secret_env {
        env.retain(|e| !e.starts_with(&format!("{}=", se.name)));
        env.push(format!("{}={}", se.name, secret(secrets, &se.secret)?));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", identity.home));
    }
    let stdin = match &exec.stdin_path {
        Some(path) => Some(read_file(&view, path).context(|| format!("redirectStdin {path}"))?),
        None => exec.stdin.clone().map(String::into_bytes),
    };
    let spec = RunSpec {
        id: runtime.container_id(root.id()),
        bundle: store.run_dir().join(format!("bundle-{}", root.id())),
        rootfs: overlay(store, rootfs, Some(&root))?,
        trees,
        tmpfs,
        binds,
        process: ProcessSpec {
            args: exec.args.clone(),
            env,
            cwd: exec.cwd.clone(),
            identity,
        },
        stdin,
    };
    Ok(Prepared {
        spec,
        root,
        writable,
        lower: view,
        secret_dir,
    })
}

/// Reads a whole file of a tree (symlinks followed inside the tree).
fn read_file(view: &MergedView, path: &str) -> Result<Vec<u8>, Cause> {
    let rel = view.resolve(path, true)?;
    match view.lookup(&rel)? {
        Some(e) if e.meta.is_file() => Ok(fs::read(&e.real)?),
        Some(_) => Err("not a regular file".into()),
        None => Err("no such file".into()),
    }
}

/// Writes captured output into a file of the exec's new layer
/// (redirectStdout / redirectStderr).
fn write_redirect(lower: &MergedView, upper: &Path, cwd: &str, path: &str, bytes: &[u8]) -> Result<(), Cause> {
    let abs = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(cwd).join(path)
    };
    let rel = clean(&abs);
    prepare_parents(lower, upper, &rel)?;
    fs::write(upper.join(&rel), bytes).context(|| format!("redirect to {path}"))
}

/// Removes the empty mount points the runtime had to create in the rootfs,
/// so that they do not become part of the exec's output.
fn prune_mount_points(lower: &MergedView, upper: &Path, targets: &[String]) {
    for target in targets {
        let mut rel: PathBuf = clean(target);
        while !rel.as_os_str().is_empty() {
            if lower.lookup(&rel).ok().flatten().is_some() {
                break;
            }
            let p = upper.join(&rel);
            let empty = match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::read_dir(&p).map(|mut d| d.next().is_none()).unwrap_or(false),
                Ok(m) => m.is_file() && m.len() == 0,
                Err(_) => false,
            };
            if !empty || fs::remove_dir(&p).or_else(|_| fs::remove_file(&p)).is_err() {
                break;
            }
            rel.pop();
        }
    }
}

/// Leases the cache volumes an exec mounts and seeds new ones.
async fn lease_volumes(
    engine: &Arc<Engine>,
    desc: &str,
    exec: &Exec,
    inputs: &[Option<SnapshotId>],
) -> Result<(Vec<Lease>, VolumePaths), SolveError> {
    let mut leases = Vec::new();
    for m in &exec.mounts {
        let Mount::Cache {
            key,
            sharing,
            owner,
            source,
            ..
        } = m
        else {
            continue;
        };
        let lease = engine
            .volumes
            .acquire(key, *sharing)
            .await
            .context(|| format!("cache volume {key:?}"))
            .map_err(|e| SolveError::op(desc, e))?;
        if lease.created {
            let (path, key, owner, source) = (lease.path.clone(), key.clone(), owner.clone(), source.clone());
            let source = source.map(|(input, sub)| (inputs[input], sub));
            let rootfs = inputs[0];
            blocking(engine.store(), desc, move |store| {
                if let Some((tree, sub)) = source {
                    let view = store.view(tree)?;
                    let filter = PathFilter::default();
                    let opts = CopyOptions::new(&filter);
                    copy_tree(&view, Path::new(&sub), &path, &opts)
                        .context(|| format!("seeding cache volume {key:?}"))?;
                }
                if let Some(o) = owner {
                    let view = store.view(rootfs)?;
                    let (uid, gid) = resolve_owner(&view, &o)?;
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                        .context(|| format!("owner of cache volume {key:?}"))?;
                }
                Ok(())
            })
            .await?;
        }
        leases.push(lease);
    }
    let paths = leases.iter().map(|l| l.path.clone()).collect();
    Ok((leases, paths))
}

pub(crate) async fn run(
    engine: &Arc<Engine>,
    desc: &str,
    exec: &Exec,
    inputs: &[Option<SnapshotId>],
    running: &Running,
) -> Result<OpOutput, SolveError> {
    if exec.args.is_empty() {
        return Err(SolveError::op(
            desc,
            "no command to run (empty args and no default args)",
        ));
    }
    let (_leases, volumes) = lease_volumes(engine, desc, exec, inputs).await?;
    let (exec_c, inputs_c) = (exec.clone(), inputs.to_vec());
    let (runtime, secrets) = (engine.runtime.clone(), engine.secrets.clone());
    let prepared = blocking(engine.store(), desc, move |store| {
        prepare(store, &runtime, &secrets, &exec_c, &inputs_c, &volumes)
    })
    .await?;
    let output = {
        let slot = running.queue(engine.exec_slots.acquire()).await;
        let _slot = slot.map_err(|e| SolveError::op(desc, e))?;
        engine.count_exec();
        running
            .exec(&engine.runtime, &prepared.spec)
            .await
            .map_err(|e| SolveError::op(desc, e))?
    };
    // Secret values never leave the container unmasked.
    let stdout = engine.secrets.scrub_bytes(&output.stdout);
    let stderr = engine.secrets.scrub_bytes(&output.stderr);
    let combined = engine.secrets.scrub_bytes(&output.combined);
    if !exec.expect.accepts(output.exit_code) {
        return Err(SolveError::Exec {
            args: exec.args.iter().map(|a| engine.secrets.scrub(a)).collect(),
            exit_code: output.exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        });
    }
    let exec_c = exec.clone();
    blocking(engine.store(), desc, move |store| {
        let mut targets: Vec<String> = RUNTIME_MOUNTS.iter().map(|s| s.to_string()).collect();
        targets.extend(prepared.spec.trees.iter().map(|t| t.target.clone()));
        targets.extend(prepared.spec.tmpfs.iter().cloned());
        targets.extend(prepared.spec.binds.iter().map(|b| b.target.clone()));
        let upper = prepared.root.diff();
        prune_mount_points(&prepared.lower, &upper, &targets);
        let mut shown = (stdout, stderr);
        for (path, bytes) in [
            (&exec_c.redirect_stdout, &mut shown.0),
            (&exec_c.redirect_stderr, &mut shown.1),
        ] {
            if let Some(path) = path {
                write_redirect(&prepared.lower, &upper, &exec_c.cwd, path, bytes)?;
                bytes.clear();
            }
        }
        let meta = ExecMeta {
            exit_code: output.exit_code,
            stdout: store.blobs().put(&shown.0)?,
            stderr: store.blobs().put(&shown.1)?,
            combined: Some(store.blobs().put(&combined)?),
        };
        drop(prepared.secret_dir);
        let mut staged = vec![prepared.root];
        staged.extend(prepared.writable);
        let outputs = staged.iter().map(|s| Some(s.id())).collect();
        Ok(OpOutput {
            staged,
            outputs,
            meta: serde_json::json!({ "exec": meta }),
        })
    })
    .await
}

//! Running a process: the rootfs and tree mounts become overlay stacks whose
//! upper directories are the exec's output snapshots.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use kiln_exec::{Bind, Overlay, ProcessSpec, RunSpec, TreeMount};
use kiln_graph::{ExitExpectation, Mount, SecretEnv, SecretRef};
use kiln_store::merged::clean;
use kiln_store::{CopyOptions, MergedView, PathFilter, SnapshotId, Staged, Store, copy_tree, prepare_parents};
use serde::{Deserialize, Serialize};

use super::network;
use super::tree::{etc_file, is_part, resolve_owner};
use super::{CacheMap, Context, Definition, OpOutput, Operation, Prepared};
use crate::error::Context as _;
use crate::result::ExecMeta;
use crate::secrets::Secrets;
use crate::services::{self, Binding};
use crate::volumes::Lease;
use crate::{Cause, SolveError};

/// Runs a process in a container whose rootfs is input 0.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Exec {
    /// argv; `args[0]` is looked up in `PATH` of `env` when not absolute.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE`, in order.
    pub env: Vec<String>,
    /// Working directory (created if missing).
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; empty means root.
    pub user: String,
    /// Extra mounts, applied in order over the rootfs.
    pub mounts: Vec<Mount>,
    /// Data written to the process's stdin (none: stdin is /dev/null).
    pub stdin: Option<String>,
    /// Which exit codes count as success.
    pub expect: ExitExpectation,
    /// Environment variables whose values are secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<SecretEnv>,
    /// A file of the container whose contents are the process's stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_path: Option<String>,
    /// A file of the container that receives the process's stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_stdout: Option<String>,
    /// A file of the container that receives the process's stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_stderr: Option<String>,
    /// Services started for the process, which reaches them by alias.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Binding>,
    /// The CPU architecture (GOARCH name) of a container that is not of
    /// this machine's: the process runs under emulation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_arch: Option<String>,
    /// No network but loopback (`RUN --network=none`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_network: bool,
}

impl Definition for Exec {
    const KIND: &'static str = "exec";
}

impl Exec {
    /// The writable tree mounts, in output order (output `1 + i`).
    pub fn writable_mounts(&self) -> impl Iterator<Item = &Mount> {
        self.mounts
            .iter()
            .filter(|m| matches!(m, Mount::Tree { readonly: false, .. }))
    }

    /// The exec as its cache key sees it (see [`ServiceDef::keyed`]).
    pub(crate) fn keyed(&self) -> Exec {
        Exec {
            services: self
                .services
                .iter()
                .map(|b| Binding {
                    service: b.service.keyed(),
                    ..b.clone()
                })
                .collect(),
            ..self.clone()
        }
    }
}

#[async_trait]
impl Operation for Exec {
    fn describe(&self) -> String {
        format!("exec {}", shell_words(&self.args))
    }

    fn output_count(&self) -> usize {
        1 + self.writable_mounts().count()
    }

    fn selectors(&self) -> Vec<(usize, &str)> {
        self.mounts
            .iter()
            .filter_map(|m| match m {
                Mount::Tree {
                    input,
                    source_path,
                    readonly: true,
                    ..
                } if is_part(source_path) => Some((*input, source_path.as_str())),
                Mount::Cache {
                    source: Some((input, path)),
                    ..
                } if is_part(path) => Some((*input, path.as_str())),
                _ => None,
            })
            .collect()
    }

    fn secrets(&self) -> Vec<&SecretRef> {
        let mounted = self.mounts.iter().filter_map(|m| match m {
            Mount::Secret { secret, .. } => Some(secret),
            _ => None,
        });
        let bound = self.services.iter().flat_map(|b| b.service.secrets());
        self.secret_env
            .iter()
            .map(|e| &e.secret)
            .chain(mounted)
            .chain(bound)
            .collect()
    }

    async fn cache_map(&self, _cx: &Context<'_>) -> Result<CacheMap, SolveError> {
        Ok(CacheMap::definition(&self.keyed()))
    }

    async fn run(&self, cx: &Context<'_>, inputs: &[Option<SnapshotId>], _: Prepared) -> Result<OpOutput, SolveError> {
        run(cx, self, inputs).await
    }
}

/// `args` as a shell would need them written (quoted where needed).
pub(crate) fn shell_words(args: &[String]) -> String {
    // Only a NUL byte fails to quote, and no process argument holds one.
    shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "))
}

/// Mount points the runtime creates in every container.
const RUNTIME_MOUNTS: [&str; 6] = ["/proc", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev", "/sys"];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A container ready to start: its spec and the snapshots it writes.
pub(crate) struct Setup {
    pub spec: RunSpec,
    pub root: Staged,
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

fn secret(secrets: &Secrets, r: &SecretRef) -> Result<Arc<String>, Cause> {
    secrets.get(r).ok_or_else(|| {
        Cause::Invalid(format!(
            "secret {:?} is not known to this engine session: set it again (setSecret or secret(uri))",
            r.name
        ))
    })
}

/// Stages the snapshots of `exec` over `inputs` and writes its spec.
fn prepare(
    store: &Store,
    runtime: &kiln_exec::Runtime,
    secrets: &Secrets,
    exec: &Exec,
    inputs: &[Option<SnapshotId>],
    volumes: &VolumePaths,
) -> Result<Setup, Cause> {
    let rootfs = inputs[0];
    let view = store.view(rootfs)?;
    let (passwd, group) = (etc_file(&view, "passwd"), etc_file(&view, "group"));
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
        network: None,
    };
    Ok(Setup {
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
/// and the directories copied up only to hold them (unchanged but for
/// their times), so that none of it becomes part of the exec's output: a
/// `true` leaves an empty layer, even where `/etc/hosts` had to be made.
fn prune_mount_points(lower: &MergedView, upper: &Path, targets: &[String]) {
    use std::os::unix::fs::MetadataExt;
    let empty_dir = |p: &Path| fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false);
    for target in targets {
        let mut rel: PathBuf = clean(target);
        while !rel.as_os_str().is_empty() {
            let p = upper.join(&rel);
            let removable = match (fs::symlink_metadata(&p), lower.lookup(&rel).ok().flatten()) {
                (Ok(m), None) => (m.is_dir() && empty_dir(&p)) || (m.is_file() && m.len() == 0),
                (Ok(m), Some(below)) => {
                    let same = |a: &fs::Metadata, b: &fs::Metadata| {
                        (a.mode(), a.uid(), a.gid()) == (b.mode(), b.uid(), b.gid())
                    };
                    m.is_dir() && same(&m, &below.meta) && empty_dir(&p) && !kiln_store::merged::is_opaque(&p)
                }
                (Err(_), _) => false,
            };
            if !removable || fs::remove_dir(&p).or_else(|_| fs::remove_file(&p)).is_err() {
                break;
            }
            rel.pop();
        }
    }
}

/// The container of `exec` over `inputs`, ready to start: its cache
/// volumes leased (held until the leases are dropped), its snapshots
/// staged and its spec written.
pub(crate) async fn stage(
    cx: &Context<'_>,
    exec: &Exec,
    inputs: &[Option<SnapshotId>],
) -> Result<(Vec<Lease>, Setup), SolveError> {
    if let Some(arch) = &exec.foreign_arch {
        let arch = arch.clone();
        cx.blocking(move |_| kiln_exec::emulation::ensure(&arch).map_err(Cause::from))
            .await?;
    }
    let (leases, volumes) = lease_volumes(cx, exec, inputs).await?;
    let (exec, inputs) = (exec.clone(), inputs.to_vec());
    let (runtime, secrets) = (cx.runtime().clone(), cx.secrets().clone());
    let setup = cx
        .blocking(move |store| prepare(store, &runtime, &secrets, &exec, &inputs, &volumes))
        .await?;
    Ok((leases, setup))
}

/// Leases the cache volumes an exec mounts and seeds new ones.
async fn lease_volumes(
    cx: &Context<'_>,
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
        let lease = cx
            .volumes()
            .acquire(key, *sharing)
            .await
            .context(|| format!("cache volume {key:?}"))
            .map_err(|e| cx.error(e))?;
        if lease.created {
            let (path, key, owner, source) = (lease.path.clone(), key.clone(), owner.clone(), source.clone());
            let source = source.map(|(input, sub)| (inputs[input], sub));
            let rootfs = inputs[0];
            cx.blocking(move |store| {
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

async fn run(cx: &Context<'_>, exec: &Exec, inputs: &[Option<SnapshotId>]) -> Result<OpOutput, SolveError> {
    if exec.args.is_empty() {
        return Err(cx.error("no command to run (empty args and no default args)"));
    }
    let reports = cx.reports();
    let bound = services::bind(cx, &exec.services, inputs, &reports).await?;
    let (_leases, mut prepared) = stage(cx, exec, inputs).await?;
    let output = {
        let _slot = cx.exec_slot().await?;
        let _network = match exec.no_network {
            true => None,
            false => network::attach(cx, &mut prepared.spec, prepared.root.id(), bound.hosts_with(&reports), None).await?,
        };
        cx.exec(&prepared.spec).await.map_err(|e| cx.error(e))?
    };
    bound.release().await;
    // Secret values never leave the container unmasked.
    let secrets = cx.secrets();
    let stdout = secrets.scrub_bytes(&output.stdout);
    let stderr = secrets.scrub_bytes(&output.stderr);
    let combined = secrets.scrub_bytes(&output.combined);
    if !exec.expect.accepts(output.exit_code) {
        return Err(SolveError::Exec {
            args: exec.args.iter().map(|a| secrets.scrub(a)).collect(),
            exit_code: output.exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        });
    }
    let exec_c = exec.clone();
    cx.blocking(move |store| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_and_directories_copied_up_for_them_leave_no_trace() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (lower_dir, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for d in [&lower_dir, &upper] {
            fs::create_dir_all(d.join("etc")).unwrap();
            fs::create_dir_all(d.join("opt")).unwrap();
            fs::create_dir_all(d.join("var")).unwrap();
        }
        // /etc was copied up for the runtime's /etc/hosts and /etc/resolv.conf.
        fs::write(upper.join("etc/hosts"), "").unwrap();
        fs::write(upper.join("etc/resolv.conf"), "").unwrap();
        // /opt holds what the process wrote; /var changed its mode.
        fs::write(upper.join("opt/made"), "by the process").unwrap();
        fs::write(upper.join("opt/hosts"), "").unwrap();
        fs::set_permissions(upper.join("var"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(upper.join("var/hosts"), "").unwrap();
        let lower = MergedView::new(vec![lower_dir]);
        let targets = ["/etc/hosts", "/etc/resolv.conf", "/opt/hosts", "/var/hosts"].map(String::from);
        prune_mount_points(&lower, &upper, &targets);
        assert!(!upper.join("etc").exists(), "an unchanged copy-up is dropped");
        assert!(upper.join("opt/made").exists() && !upper.join("opt/hosts").exists());
        assert!(upper.join("var").exists(), "a directory whose mode changed stays");
    }

    #[test]
    fn describes_exec_with_quoting() {
        let op = Exec {
            args: vec!["sh".into(), "-c".into(), "echo 'hi'".into()],
            cwd: "/".into(),
            ..Default::default()
        };
        assert_eq!(op.describe(), r#"exec sh -c "echo 'hi'""#);
        assert_eq!(
            shell_words(&["sh".into(), "-c".into(), "exit 127".into()]),
            "sh -c 'exit 127'"
        );
        assert_eq!(
            shell_words(&["make".into(), "test".into(), String::new()]),
            "make test ''"
        );
    }
}

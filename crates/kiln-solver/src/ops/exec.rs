//! Running a process: the rootfs and tree mounts become overlay stacks whose
//! upper directories are the exec's output snapshots.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_exec::{Overlay, ProcessSpec, RunSpec, TreeMount};
use kiln_graph::{Exec, Mount};
use kiln_store::merged::clean;
use kiln_store::{MergedView, SnapshotId, Staged, Store, prepare_parents};

use super::files::read_text;
use super::{OpOutput, blocking};
use crate::SolveError;
use crate::engine::Engine;
use crate::result::ExecMeta;

/// Mount points the runtime creates in every container.
const RUNTIME_MOUNTS: [&str; 6] = ["/proc", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev", "/sys"];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct Prepared {
    spec: RunSpec,
    root: Staged,
    writable: Vec<Staged>,
    lower: MergedView,
}

fn overlay(store: &Store, top: Option<SnapshotId>, upper: Option<&Staged>) -> Result<Overlay, String> {
    let lowers = store.mount_layers(top).map_err(|e| e.to_string())?;
    Ok(Overlay {
        lowers,
        upper: upper.map(|s| (s.diff(), s.work())),
    })
}

fn prepare(
    store: &Store,
    runtime: &kiln_exec::Runtime,
    exec: &Exec,
    inputs: &[Option<SnapshotId>],
) -> Result<Prepared, String> {
    let rootfs = inputs[0];
    let view = store.view(rootfs).map_err(|e| e.to_string())?;
    let identity = kiln_exec::user::resolve(
        &exec.user,
        &read_text(&view, "/etc/passwd"),
        &read_text(&view, "/etc/group"),
    )
    .map_err(|e| e.to_string())?;
    let root = store.stage(rootfs).map_err(|e| e.to_string())?;

    // The working directory exists before the process starts, as in Docker.
    let cwd = view.resolve(&exec.cwd, true).map_err(|e| e.to_string())?;
    if view.lookup(&cwd).map_err(|e| e.to_string())?.is_none() {
        prepare_parents(&view, &root.diff(), &cwd.join("x")).map_err(|e| e.to_string())?;
    }

    let mut trees = Vec::new();
    let mut tmpfs = Vec::new();
    let mut writable = Vec::new();
    for m in &exec.mounts {
        match m {
            Mount::Tree {
                target,
                input,
                source_path,
                readonly,
            } => {
                let top = inputs[*input];
                let tree_view = store.view(top).map_err(|e| e.to_string())?;
                let subpath = tree_view.resolve(source_path, true).map_err(|e| e.to_string())?;
                if !subpath.as_os_str().is_empty() && tree_view.lookup(&subpath).map_err(|e| e.to_string())?.is_none() {
                    return Err(format!(
                        "cannot mount {source_path} at {target}: no such file or directory in the mounted tree"
                    ));
                }
                let staged = if *readonly {
                    None
                } else {
                    Some(store.stage(top).map_err(|e| e.to_string())?)
                };
                trees.push(TreeMount {
                    overlay: overlay(store, top, staged.as_ref())?,
                    subpath,
                    target: target.clone(),
                });
                writable.extend(staged);
            }
            Mount::Tmpfs { target } => tmpfs.push(target.clone()),
        }
    }

    let mut env = exec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", identity.home));
    }
    let spec = RunSpec {
        id: runtime.container_id(root.id()),
        bundle: store.run_dir().join(format!("bundle-{}", root.id())),
        rootfs: overlay(store, rootfs, Some(&root))?,
        trees,
        tmpfs,
        process: ProcessSpec {
            args: exec.args.clone(),
            env,
            cwd: exec.cwd.clone(),
            identity,
        },
        stdin: exec.stdin.clone().map(String::into_bytes),
    };
    Ok(Prepared {
        spec,
        root,
        writable,
        lower: view,
    })
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

pub(crate) async fn run(
    engine: &Arc<Engine>,
    desc: &str,
    exec: &Exec,
    inputs: &[Option<SnapshotId>],
) -> Result<OpOutput, SolveError> {
    if exec.args.is_empty() {
        return Err(SolveError::op(
            desc,
            "no command to run (empty args and no default args)",
        ));
    }
    let (exec_c, inputs_c) = (exec.clone(), inputs.to_vec());
    let runtime = engine.runtime.clone();
    let prepared = blocking(engine.store(), desc, move |store| {
        prepare(store, &runtime, &exec_c, &inputs_c)
    })
    .await?;
    let output = {
        let _slot = engine.exec_slots.acquire().await.map_err(|e| SolveError::op(desc, e))?;
        engine.count_exec();
        engine
            .runtime
            .run(&prepared.spec)
            .await
            .map_err(|e| SolveError::op(desc, e))?
    };
    if !exec.expect.accepts(output.exit_code) {
        return Err(SolveError::Exec {
            args: exec.args.clone(),
            exit_code: output.exit_code,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    blocking(engine.store(), desc, move |store| {
        let mut targets: Vec<String> = RUNTIME_MOUNTS.iter().map(|s| s.to_string()).collect();
        targets.extend(prepared.spec.trees.iter().map(|t| t.target.clone()));
        targets.extend(prepared.spec.tmpfs.iter().cloned());
        prune_mount_points(&prepared.lower, &prepared.root.diff(), &targets);
        let meta = ExecMeta {
            exit_code: output.exit_code,
            stdout: store.blobs().put(&output.stdout).map_err(|e| e.to_string())?,
            stderr: store.blobs().put(&output.stderr).map_err(|e| e.to_string())?,
        };
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

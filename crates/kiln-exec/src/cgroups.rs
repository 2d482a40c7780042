//! The cgroups that runtimes create for kiln's containers, and their
//! removal once the engine that made them is gone.
//!
//! crun and runc name a container's cgroups after its id, and remove them
//! when `run` ends. A runtime killed while a container starts or runs
//! leaves them behind, with the container's processes in them, and its
//! state directory may be gone with the engine's. Every engine therefore
//! registers its instance tag (the part of container ids that is unique to
//! it) as a lock file it holds while it lives; a sweep kills the processes
//! of cgroups whose tag nobody holds and removes those cgroups.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};

/// Where engines register their instance tags.
const INSTANCES: &str = "/run/kiln/instances";

/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The prefix of kiln's container ids (and so of their cgroups' names).
pub(crate) const ID_PREFIX: &str = "kiln-";

/// Proof that an engine instance is alive: its lock file, held.
#[derive(Debug)]
pub(crate) struct InstanceLock {
    path: PathBuf,
    _file: File,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Still locked here, so no sweep takes it for a dead one meanwhile.
        let _ = fs::remove_file(&self.path);
    }
}

/// Registers the instance `tag` as alive for as long as the returned lock
/// lives. `None` where the registry cannot be written (not root: then no
/// containers run either).
pub(crate) fn register(tag: &str) -> Option<InstanceLock> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(INSTANCES)
        .ok()?;
    let path = Path::new(INSTANCES).join(tag);
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .ok()?;
    flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(InstanceLock { path, _file: file })
}

/// The instance tag in a container id `kiln-<tag>-<n>`.
fn tag_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix(ID_PREFIX)?;
    let (tag, n) = rest.split_once('-')?;
    let hex = !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_hexdigit());
    let numbered = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    (hex && numbered).then_some(tag)
}

/// The cgroup directories of kiln containers under `root`, by instance tag:
/// in `root` itself (cgroup v2) and in each hierarchy mounted below it.
fn container_cgroups(root: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut found: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(entries) = fs::read_dir(root) {
        hierarchies.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for dir in hierarchies {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(tag) = name.to_str().and_then(tag_of)
                && entry.file_type().is_ok_and(|t| t.is_dir())
            {
                found.entry(tag.to_string()).or_default().push(entry.path());
            }
        }
    }
    found
}

/// Whether the instance `tag` is alive; when it is not, its registration
/// (if any) is returned locked so that it stays dead while it is cleaned.
fn claim_dead(registry: &Path, tag: &str) -> Result<Option<File>, ()> {
    match File::open(registry.join(tag)) {
        Ok(f) if flock(f.as_fd(), FlockOperation::NonBlockingLockExclusive).is_ok() => Ok(Some(f)),
        Ok(_) => Err(()),
        Err(_) => Ok(None),
    }
}

/// Kills every process in the cgroup `dir` and removes it (children
/// first). Processes die asynchronously, so removal is retried briefly.
fn remove_cgroup(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for child in entries.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&child.path())?;
            }
        }
    }
    let mut attempts = 0;
    loop {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempts >= 50 => return Err(e),
            Err(_) => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Kills the processes of, and removes, the cgroups of containers whose
/// engine is gone (killed while a container started or ran), and forgets
/// the registrations of dead engines. Cgroups of live engines, on any state
/// directory, are left alone. Returns the cgroup directories removed.
pub fn remove_leaked_cgroups() -> Vec<PathBuf> {
    sweep(Path::new(CGROUP_ROOT), Path::new(INSTANCES))
}

fn sweep(cgroup_root: &Path, registry: &Path) -> Vec<PathBuf> {
    // Cgroups first, liveness second: a cgroup seen here was made by an
    // engine that registered before making it, so a free lock afterwards
    // really means that engine is gone.
    let cgroups = container_cgroups(cgroup_root);
    let mut removed = Vec::new();
    for (tag, dirs) in cgroups {
        let Ok(_claim) = claim_dead(registry, &tag) else {
            continue;
        };
        for dir in dirs {
            match remove_cgroup(&dir) {
                Ok(()) => removed.push(dir),
                Err(e) => tracing::warn!("removing the leaked cgroup {}: {e}", dir.display()),
            }
        }
    }
    if let Ok(entries) = fs::read_dir(registry) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(Some(_claim)) = claim_dead(registry, &name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_from_kiln_container_ids_only() {
        assert_eq!(tag_of("kiln-0a1b2c3d-17"), Some("0a1b2c3d"));
        assert_eq!(tag_of("kiln-0a1b2c3d-x"), None);
        assert_eq!(tag_of("kiln-zz-1"), None);
        assert_eq!(tag_of("docker-0a1b-1"), None);
        assert_eq!(tag_of("kiln-0a1b2c3d"), None);
    }

    /// Plain directories stand in for cgroups (the real thing is tested as
    /// root in kiln-solver's tests/root_crash.rs).
    #[test]
    fn only_cgroups_of_unregistered_or_unlocked_instances_go() {
        let root = tempfile::tempdir().unwrap();
        let registry = tempfile::tempdir().unwrap();
        let live_lock = {
            let f = File::create(registry.path().join("aaaa0001")).unwrap();
            flock(f.as_fd(), FlockOperation::NonBlockingLockExclusive).unwrap();
            f
        };
        File::create(registry.path().join("bbbb0002")).unwrap(); // registered, dead
        for hierarchy in ["memory", "pids"] {
            for id in ["kiln-aaaa0001-1", "kiln-bbbb0002-1", "kiln-cccc0003-4", "other"] {
                fs::create_dir_all(root.path().join(hierarchy).join(id)).unwrap();
            }
        }
        let removed = sweep(root.path(), registry.path());
        assert_eq!(removed.len(), 4, "{removed:?}");
        for hierarchy in ["memory", "pids"] {
            let left: Vec<_> = fs::read_dir(root.path().join(hierarchy))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().into_string().unwrap())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(left, ["kiln-aaaa0001-1", "other"]);
        }
        let registered: Vec<_> = fs::read_dir(registry.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(registered, ["aaaa0001"], "dead registrations are forgotten");
        drop(live_lock);
    }
}

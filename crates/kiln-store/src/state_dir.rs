//! Who may reach a state directory, and what a killed process leaves
//! behind outside it.
//!
//! A state directory holds the contents of images (setuid binaries, device
//! nodes), files pipelines wrote and the cache's records: it must be the
//! engine user's alone. It is created `0700`, and an existing one that
//! another user owns or that others can enter, list or write is refused.
//!
//! The volatile directory of a state directory (in `/dev/shm`, see
//! [`volatile_dir`]) holds bundles, the runtime's state and secret files
//! while an engine runs. It is removed when the store closes; one left by
//! a killed process is removed by the next store that opens, whichever its
//! state directory.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::StoreError;

/// The filesystem magic of tmpfs.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Where volatile directories live when a tmpfs is available.
const SHM: &str = "/dev/shm";

/// The prefix of volatile directory names in [`SHM`].
const VOLATILE_PREFIX: &str = "kiln-";

/// The subdirectory of a volatile directory that holds the OCI runtime's
/// state: left to the runtime to clean (it must kill the containers it
/// names first).
pub const RUNTIME_STATE: &str = "runtime";

/// The file in a volatile directory naming its state directory.
const OWNER_FILE: &str = "state-dir";

/// A volatile directory without an owner file younger than this may be
/// being created right now.
const CREATION_GRACE: Duration = Duration::from_secs(60);

/// Where per-exec runtime state (bundles, runtime state, secret files) of
/// the state directory `root` lives: a directory in /dev/shm (tmpfs) named
/// after the state dir, or `<state>/run` when no tmpfs is available.
pub fn volatile_dir(root: &Path) -> (PathBuf, bool) {
    let shm = Path::new(SHM);
    let in_memory = rustix::fs::statfs(shm).is_ok_and(|s| s.f_type as u64 == TMPFS_MAGIC);
    if in_memory {
        let tag = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
        (shm.join(format!("{VOLATILE_PREFIX}{}", &tag[..16])), true)
    } else {
        (root.join("run"), false)
    }
}

fn unsafe_dir(path: &Path, reason: String) -> StoreError {
    StoreError::UnsafeStateDir {
        path: path.to_path_buf(),
        reason,
    }
}

/// Creates the state directory `root` (mode 0700) or checks an existing
/// one: it must be a directory owned by this process's user that no other
/// user can enter, list or write. An existing empty directory (just made
/// with `mkdir`, say) is made private instead: nothing in it can have been
/// reached yet.
pub fn prepare_root(root: &Path) -> Result<(), StoreError> {
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(StoreError::io(parent))?;
    }
    match DirBuilder::new().mode(0o700).create(root) {
        // The umask may have narrowed the mode further, never widened it.
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::io(root)(e)),
    }
    let meta = fs::metadata(root).map_err(StoreError::io(root))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.is_dir() && meta.uid() == me && meta.mode() & 0o077 != 0 && is_empty(root)? {
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(StoreError::io(root))?;
        // Checked again: someone with write access may have been quicker.
        if !is_empty(root)? {
            return Err(unsafe_dir(
                root,
                "files appeared in it while kiln made it private; choose a directory of your own".into(),
            ));
        }
        tracing::info!(path = %root.display(), "made the new state directory private (mode 0700)");
    }
    check_private(root, "state directory")
}

fn is_empty(dir: &Path) -> Result<bool, StoreError> {
    let mut entries = fs::read_dir(dir).map_err(StoreError::io(dir))?;
    Ok(entries.next().is_none())
}

/// Checks that `dir` is a directory (symlinks followed: callers that must
/// refuse one check first) owned by us, with no access for group or others.
fn check_private(dir: &Path, what: &str) -> Result<(), StoreError> {
    let meta = fs::metadata(dir).map_err(StoreError::io(dir))?;
    if !meta.is_dir() {
        return Err(unsafe_dir(dir, format!("the {what} is not a directory")));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(
            dir,
            format!(
                "the {what} belongs to uid {}, not to kiln's user (uid {me}); \
                 use a directory of your own (--state-dir)",
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(unsafe_dir(
            dir,
            format!(
                "the {what} has mode {mode:04o}, so other users could reach the images, files and \
                 cache it holds; run `chmod 700 {}` or choose another --state-dir",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Creates (or takes over) the volatile directory `dir` of the state
/// directory `root`: mode 0700, ours, not a symlink, emptied of what a
/// killed predecessor left, and labelled with `root` so that it can be
/// removed if its state directory is never opened again.
pub(crate) fn prepare_volatile(dir: &Path, root: &Path) -> Result<(), StoreError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(dir).map_err(StoreError::io(dir))?;
            if meta.file_type().is_symlink() {
                return Err(unsafe_dir(
                    dir,
                    "the runtime directory is a symlink; remove it (another user may have planted it)".into(),
                ));
            }
            check_private(dir, "runtime directory")?;
            // We hold the state directory's lock: anything in it is stale.
            empty_dir(dir, &[RUNTIME_STATE]).map_err(StoreError::io(dir))?;
        }
        Err(e) => return Err(StoreError::io(dir)(e)),
    }
    let owner = dir.join(OWNER_FILE);
    fs::write(&owner, root.as_os_str().as_encoded_bytes()).map_err(StoreError::io(&owner))
}

/// Removes everything inside `dir` but the entries named in `keep`.
fn empty_dir(dir: &Path, keep: &[&str]) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Removes the volatile directories in /dev/shm that belong to no running
/// engine: their state directory is gone, or nobody holds its lock. Skips
/// `ours` and directories of other users. Returns what it removed.
pub(crate) fn remove_abandoned_volatile_dirs(ours: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(SHM) else {
        return Vec::new();
    };
    let me = rustix::process::geteuid().as_raw();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Some(tag) = name.to_str().and_then(|n| n.strip_prefix(VOLATILE_PREFIX)) else {
            continue;
        };
        if tag.len() != 16 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) || path == ours {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != me {
            continue;
        }
        if remove_if_abandoned(&path, &meta) {
            removed.push(path);
        }
    }
    removed
}

/// Removes the volatile directory `dir` if no engine uses it; says whether
/// it did.
fn remove_if_abandoned(dir: &Path, meta: &fs::Metadata) -> bool {
    let Ok(state) = fs::read(dir.join(OWNER_FILE)) else {
        // Unlabelled: being created, or left by an older kiln.
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        return age.is_some_and(|a| a > CREATION_GRACE) && fs::remove_dir_all(dir).is_ok();
    };
    let state = PathBuf::from(std::ffi::OsStr::from_bytes(&state));
    if volatile_dir(&state).0 != dir {
        return false;
    }
    // A free lock means no engine has the state directory open. Holding it
    // while the directory is removed keeps an engine from starting on that
    // state directory meanwhile (it waits, then recreates the directory).
    let _held = match File::open(state.join("lock")) {
        Ok(lock) => {
            use rustix::fs::{FlockOperation, flock};
            if flock(lock.as_fd(), FlockOperation::NonBlockingLockShared).is_err() {
                return false;
            }
            Some(lock)
        }
        Err(_) => None,
    };
    fs::remove_dir_all(dir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_state_dir_is_private() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("a/b/state");
        prepare_root(&root).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        // Opening it again is fine.
        prepare_root(&root).unwrap();
    }

    #[test]
    fn a_state_dir_others_can_enter_is_refused_with_the_fix() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("state");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("db"), "").unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let err = prepare_root(&root).unwrap_err().to_string();
        assert!(err.contains("mode 0755"), "{err}");
        assert!(err.contains(&format!("chmod 700 {}", root.display())), "{err}");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o730)).unwrap();
        assert!(prepare_root(&root).is_err(), "group write is refused too");
    }

    #[test]
    fn an_empty_state_dir_made_by_mkdir_is_made_private() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("state");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_root(&root).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_state_dir_that_is_a_file_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("state");
        fs::write(&root, "").unwrap();
        let err = prepare_root(&root).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn a_volatile_dir_planted_as_a_symlink_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("kiln-0123456789abcdef");
        std::os::unix::fs::symlink(parent.path(), &dir).unwrap();
        let err = prepare_volatile(&dir, parent.path()).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
    }

    #[test]
    fn a_volatile_dir_is_emptied_and_labelled() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("run");
        prepare_volatile(&dir, Path::new("/some/state")).unwrap();
        fs::create_dir_all(dir.join("bundle-1/rootfs")).unwrap();
        fs::create_dir_all(dir.join(RUNTIME_STATE).join("kiln-0a1b2c3d-1")).unwrap();
        fs::write(dir.join("secret"), "x").unwrap();
        prepare_volatile(&dir, Path::new("/some/state")).unwrap();
        let mut left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        left.sort();
        assert_eq!(
            left,
            [RUNTIME_STATE, OWNER_FILE],
            "the runtime's state is the runtime's to clean"
        );
        assert_eq!(fs::read_to_string(dir.join(OWNER_FILE)).unwrap(), "/some/state");
    }
}

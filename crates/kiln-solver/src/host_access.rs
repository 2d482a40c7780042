//! A session's access to its client's host: what is at a path, secret
//! providers (`env://`, `file://`, `cmd://`), registry credentials, uploads
//! of host directories and exports. Behind a trait so
//! that a client on another machine can serve the same over its connection
//! (BuildKit's session attachables are the model); [`LocalHost`] is the
//! host kiln runs on.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_oci::Credentials;
use kiln_store::{
    CopyOptions, CopyStats, HostError, HostPolicy, HostTree, MergedView, PathFilter, Staged, Store, StoreError,
    copy_tree,
};

/// What is at a path of the client's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HostPathKind {
    /// Nothing.
    Missing,
    /// A directory.
    Directory,
    /// A regular file.
    File,
    /// Something else (a socket, a device...).
    Other,
}

/// An export to the host that failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Removing what was at the destination (`wipe`).
    #[error("wiping {}: {source}", path.display())]
    Wipe { path: PathBuf, source: io::Error },
    /// Creating the destination's directory.
    #[error("creating {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    /// Copying.
    #[error(transparent)]
    Copy(#[from] kiln_store::CopyError),
    /// Writing on a client's host on another machine (its account).
    #[error("on the client's host: {0}")]
    Client(String),
}

/// Where an export goes and how.
#[derive(Debug, Clone)]
pub struct Export {
    /// The path in the tree to export.
    pub src: String,
    /// The host path it becomes.
    pub dest: PathBuf,
    /// The host directory to create first.
    pub dir: PathBuf,
    /// Remove `dest` first.
    pub wipe: bool,
    /// What may be created of what grants privileges on the host.
    pub policy: HostPolicy,
}

/// The client's host, as a session sees it. Blocking calls.
pub trait HostAccess: Send + Sync {
    /// What is at `path`.
    fn kind(&self, path: &Path) -> HostPathKind;
    /// The value of the environment variable `name`.
    fn env(&self, name: &str) -> Option<String>;
    /// The contents of the file at `path`.
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// Runs `command` with `sh -c` and returns its output (its stderr goes
    /// to the client's stderr).
    fn command_output(&self, command: &str) -> io::Result<std::process::Output>;
    /// Copies a tree (or file) of `view` to the host.
    fn export(&self, view: &MergedView, export: &Export) -> Result<CopyStats, ExportError>;
    /// Lists the host directory `root` with the content digest of what
    /// `filter` selects (reading only what changed since the last scan that
    /// `store` remembers).
    fn scan_dir(&self, store: &Store, root: &Path, filter: &PathFilter) -> Result<HostTree, HostError>;
    /// Uploads a scanned directory into `store` as a new snapshot (writing
    /// only what changed since the previous upload).
    fn upload_dir(&self, store: &Store, tree: &HostTree) -> Result<Staged, StoreError>;
    /// The client's credentials for the registry `host` (from its docker
    /// config; anonymous when it has none).
    fn registry_credentials(&self, host: &str) -> Result<Credentials, kiln_oci::Error>;
    /// Tells the client something it should know that is not an error (an
    /// export withheld files).
    fn warn(&self, message: &str);

    /// Whether the client's network is the engine's (a local client): then
    /// the engine's loopback is the client's, for `Host.service` and tunnels.
    fn shares_network(&self) -> bool {
        true
    }
}

/// The host kiln runs on.
#[derive(Debug, Clone, Default)]
pub struct LocalHost {
    docker_config: Option<PathBuf>,
}

impl LocalHost {
    /// This host, whose registry credentials are in `docker_config`'s
    /// `config.json` (none: anonymous).
    pub fn new(docker_config: Option<PathBuf>) -> Self {
        Self { docker_config }
    }
}

impl HostAccess for LocalHost {
    fn kind(&self, path: &Path) -> HostPathKind {
        match std::fs::metadata(path) {
            Err(_) => HostPathKind::Missing,
            Ok(m) if m.is_dir() => HostPathKind::Directory,
            Ok(m) if m.is_file() => HostPathKind::File,
            Ok(_) => HostPathKind::Other,
        }
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn command_output(&self, command: &str) -> io::Result<std::process::Output> {
        std::process::Command::new("sh")
            .args(["-c", command])
            .stderr(std::process::Stdio::inherit())
            .output()
    }

    fn export(&self, view: &MergedView, export: &Export) -> Result<CopyStats, ExportError> {
        if export.wipe && std::fs::symlink_metadata(&export.dest).is_ok() {
            std::fs::remove_dir_all(&export.dest).map_err(|source| ExportError::Wipe {
                path: export.dest.clone(),
                source,
            })?;
        }
        std::fs::create_dir_all(&export.dir).map_err(|source| ExportError::Create {
            path: export.dir.clone(),
            source,
        })?;
        let filter = PathFilter::default();
        let opts = CopyOptions {
            to_host: Some(export.policy),
            ..CopyOptions::new(&filter)
        };
        Ok(copy_tree(view, Path::new(&export.src), &export.dest, &opts)?)
    }

    fn scan_dir(&self, store: &Store, root: &Path, filter: &PathFilter) -> Result<HostTree, HostError> {
        store.scan_host(root, filter)
    }

    fn upload_dir(&self, store: &Store, tree: &HostTree) -> Result<Staged, StoreError> {
        store.import_host(tree)
    }

    fn registry_credentials(&self, host: &str) -> Result<Credentials, kiln_oci::Error> {
        Credentials::lookup(self.docker_config.as_deref(), host)
    }

    fn warn(&self, message: &str) {
        tracing::warn!("{message}");
    }
}

/// A client's host with the registry credentials its pipeline gave
/// (`withRegistryAuth`) put before those of its docker config.
pub(crate) struct WithRegistryAuth {
    inner: Arc<dyn HostAccess>,
    given: std::sync::Mutex<std::collections::HashMap<String, Credentials>>,
}

impl WithRegistryAuth {
    pub(crate) fn new(inner: Arc<dyn HostAccess>) -> Self {
        Self {
            inner,
            given: Default::default(),
        }
    }

    /// Uses `credentials` for the registry `host` (`None`: its own again).
    pub(crate) fn set(&self, host: &str, credentials: Option<Credentials>) {
        let mut given = self.given.lock().expect("registry auth lock");
        match credentials {
            Some(c) => given.insert(host.to_string(), c),
            None => given.remove(host),
        };
    }
}

impl HostAccess for WithRegistryAuth {
    fn kind(&self, path: &Path) -> HostPathKind {
        self.inner.kind(path)
    }
    fn env(&self, name: &str) -> Option<String> {
        self.inner.env(name)
    }
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.inner.read_to_string(path)
    }
    fn command_output(&self, command: &str) -> io::Result<std::process::Output> {
        self.inner.command_output(command)
    }
    fn export(&self, view: &MergedView, export: &Export) -> Result<CopyStats, ExportError> {
        self.inner.export(view, export)
    }
    fn scan_dir(&self, store: &Store, root: &Path, filter: &PathFilter) -> Result<HostTree, HostError> {
        self.inner.scan_dir(store, root, filter)
    }
    fn upload_dir(&self, store: &Store, tree: &HostTree) -> Result<Staged, StoreError> {
        self.inner.upload_dir(store, tree)
    }
    fn registry_credentials(&self, host: &str) -> Result<Credentials, kiln_oci::Error> {
        let given = self.given.lock().expect("registry auth lock").get(host).cloned();
        given.map_or_else(|| self.inner.registry_credentials(host), Ok)
    }
    fn warn(&self, message: &str) {
        self.inner.warn(message)
    }
    fn shares_network(&self) -> bool {
        self.inner.shares_network()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_host_tells_kinds_apart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let host = LocalHost::default();
        assert_eq!(host.kind(dir.path()), HostPathKind::Directory);
        assert_eq!(host.kind(&file), HostPathKind::File);
        assert_eq!(host.kind(&dir.path().join("none")), HostPathKind::Missing);
        assert_eq!(host.kind(Path::new("/dev/null")), HostPathKind::Other);
        assert_eq!(host.read_to_string(&file).unwrap(), "x");
        assert_eq!(host.command_output("printf hi").unwrap().stdout, b"hi");
    }
}

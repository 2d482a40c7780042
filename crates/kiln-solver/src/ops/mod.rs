//! Operations: each is one file that holds its definition (the fields of
//! its canonical encoding), how its cache key is made and how it runs (see
//! [`Operation`]). They are listed once, in the `operations!` list below.
//!
//! An operation sees the engine only through a [`Context`]: the store, the
//! runtime, the registry, the secrets, the cache volumes, the client's host,
//! its progress events and its exec slot. It never reaches into the engine,
//! and the engine knows operations only through the trait.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_exec::{ExecError, ExecOutput, RunSpec, Runtime};
use kiln_graph::SecretRef;
use kiln_oci::{ExtractLimits, Registry};
use kiln_store::{SnapshotId, Staged, Store};
use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::host_access::HostAccess;
use crate::report::Report;
use crate::running::Running;
use crate::secrets::Secrets;
use crate::services::Services;
use crate::volumes::VolumeLeases;
use crate::{Cause, SolveError};

pub(crate) mod network;
mod tree;

/// Declares the operations: their modules, their re-exports, and how a
/// stored one is read back. Adding an operation is one line here.
macro_rules! operations {
    ($($module:ident :: $op:ident),* $(,)?) => {
        $(pub(crate) mod $module; pub use $module::$op;)*

        /// Reads an operation back from its canonical encoding (see
        /// [`Encode::encode`]), as stored with API IDs.
        pub fn decode(encoded: &serde_json::Value) -> Result<Arc<dyn Operation>, DecodeError> {
            let (kind, body) = match encoded {
                serde_json::Value::String(kind) => (kind.as_str(), serde_json::Value::Null),
                serde_json::Value::Object(map) if map.len() == 1 => {
                    let (kind, body) = map.iter().next().expect("one entry");
                    (kind.as_str(), body.clone())
                }
                _ => return Err(DecodeError::Shape),
            };
            $(if kind == <$op as Definition>::KIND {
                return serde_json::from_value::<$op>(body)
                    .map(|op| Arc::new(op) as Arc<dyn Operation>)
                    .map_err(|source| DecodeError::Body { kind: kind.to_string(), source });
            })*
            Err(DecodeError::Unknown(kind.to_string()))
        }
    };
}

operations! {
    scratch::Scratch,
    image::Image,
    image_import::ImageImport,
    host_dir::HostDir,
    exec::Exec,
    copy::Copy,
    mk_file::MkFile,
    mk_dir::MkDir,
    rm::Rm,
    diff::Diff,
    image_archive::ImageArchive,
    unpack::Unpack,
    http_file::HttpFile,
    git_checkout::GitCheckout,
}

pub use image_archive::{ARCHIVE_NAME, ImageSpec};
pub use tree::{read_text, resolve_owner};

/// A stored operation that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Neither `"kind"` nor `{"kind": {...}}`.
    #[error("not an encoded operation")]
    Shape,
    /// No operation of that kind (stored by another version of kiln).
    #[error("unknown operation {0:?}")]
    Unknown(String),
    /// The fields do not fit the operation.
    #[error("operation {kind:?}: {source}")]
    Body {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The name and fields of an operation, as serde serializes them.
pub trait Definition: Serialize {
    /// The operation's name in its encoding (`exec`, `copy`).
    const KIND: &'static str;
}

/// The canonical encoding of an operation: what its definition digest and,
/// by default, its cache key hash. Derived from [`Definition`].
pub trait Encode {
    /// `{"kind":{fields in declaration order}}`, or `"kind"` for an
    /// operation without fields. Changing a field's name or order changes
    /// every key: bump the domains in `graph.rs` when doing so.
    fn encode(&self) -> Vec<u8>;
}

impl<T: Definition> Encode for T {
    fn encode(&self) -> Vec<u8> {
        let kind = serde_json::to_vec(T::KIND).expect("a name serializes");
        let body = serde_json::to_vec(self).expect("operations serialize infallibly");
        if body == b"null" {
            return kind;
        }
        [b"{".as_slice(), &kind, b":", &body, b"}"].concat()
    }
}

/// One kind of operation: how its cache key is made and how it runs, side
/// by side (BuildKit's `Op { CacheMap, Exec }`).
#[async_trait]
pub trait Operation: Encode + fmt::Debug + Send + Sync + 'static {
    /// A short human name for progress output, e.g. `exec sh -c make`.
    fn describe(&self) -> String;

    /// How many trees it produces (output 0 is the main one).
    fn output_count(&self) -> usize {
        1
    }

    /// The inputs it reads only a part of, with that part's path: their
    /// cache keys are replaced by the content digest of that part, so that
    /// a change elsewhere in the input does not invalidate the operation.
    fn selectors(&self) -> Vec<(usize, &str)> {
        Vec::new()
    }

    /// The secrets it uses: a session may only use the ones it set.
    fn secrets(&self) -> Vec<&SecretRef> {
        Vec::new()
    }

    /// The image reference its tree is, for a source of one (for progress).
    fn image(&self) -> Option<String> {
        None
    }

    /// Whether its result is known without running it (the empty tree): it
    /// is then neither looked up, recorded nor reported.
    fn constant(&self) -> bool {
        false
    }

    /// What identifies it in its cache key, ahead of its inputs' keys. The
    /// default is its definition; a source keyed by content reads the
    /// content here (and may hand what it read on to [`Operation::run`]).
    async fn cache_map(&self, _cx: &Context<'_>) -> Result<CacheMap, SolveError> {
        Ok(CacheMap::definition(self))
    }

    /// Runs it on its inputs' trees (the output each input edge selects).
    async fn run(
        &self,
        cx: &Context<'_>,
        inputs: &[Option<SnapshotId>],
        prepared: Prepared,
    ) -> Result<OpOutput, SolveError>;
}

/// How an operation's cache key is made: the parts that identify it, and
/// what making them read.
pub struct CacheMap {
    parts: Vec<Vec<u8>>,
    /// Files read, with their digests (shown when a miss is explained).
    files: Option<BTreeMap<String, String>>,
    prepared: Prepared,
}

impl CacheMap {
    /// Identified by its definition.
    pub fn definition<O: Encode + ?Sized>(op: &O) -> Self {
        Self::from_parts(vec![op.encode()])
    }

    /// Identified by these parts (hashed length-prefixed, in order).
    pub fn from_parts(parts: Vec<Vec<u8>>) -> Self {
        Self {
            parts,
            files: None,
            prepared: Prepared(None),
        }
    }

    /// Also lists the files the key was made of, for explanations.
    pub fn with_files(self, files: BTreeMap<String, String>) -> Self {
        Self {
            files: Some(files),
            ..self
        }
    }

    /// Also hands `state` on to [`Operation::run`].
    pub fn with_prepared<T: Any + Send + Sync>(self, state: T) -> Self {
        Self {
            prepared: Prepared(Some(Box::new(state))),
            ..self
        }
    }

    pub(crate) fn parts(&self) -> &[Vec<u8>] {
        &self.parts
    }

    pub(crate) fn files(&self) -> Option<&BTreeMap<String, String>> {
        self.files.as_ref()
    }

    pub(crate) fn into_prepared(self) -> Prepared {
        self.prepared
    }
}

/// What an operation's [`Operation::cache_map`] read, for its run.
#[derive(Default)]
pub struct Prepared(Option<Box<dyn Any + Send + Sync>>);

impl Prepared {
    /// The state of type `T`, if that is what was handed on.
    pub fn take<T: Any>(self) -> Option<T> {
        self.0?.downcast::<T>().ok().map(|b| *b)
    }
}

/// What running an operation produced, before it is committed.
pub struct OpOutput {
    /// New snapshots to commit.
    pub staged: Vec<Staged>,
    /// The output trees.
    pub outputs: Vec<Option<SnapshotId>>,
    /// Metadata to record.
    pub meta: serde_json::Value,
}

impl OpOutput {
    /// One new snapshot as the single output.
    pub fn single(staged: Staged) -> Self {
        let id = staged.id();
        OpOutput {
            staged: vec![staged],
            outputs: vec![Some(id)],
            meta: serde_json::Value::Null,
        }
    }

    /// An existing tree (or the empty one) as the single output.
    pub fn unchanged(tree: Option<SnapshotId>) -> Self {
        OpOutput {
            staged: vec![],
            outputs: vec![tree],
            meta: serde_json::Value::Null,
        }
    }
}

/// What the engine lends every operation.
pub(crate) struct Resources {
    pub store: Arc<Store>,
    pub runtime: Runtime,
    pub registry: Registry,
    pub secrets: Arc<Secrets>,
    pub volumes: Arc<VolumeLeases>,
    pub exec_slots: Semaphore,
    pub layer_limits: ExtractLimits,
    pub network: Option<Arc<kiln_exec::net::Network>>,
    pub services: Services,
    /// Git URL prefixes fetched from elsewhere (prefix, replacement).
    pub git_mirrors: Vec<(String, String)>,
}

/// What an operation may use: the engine's resources, the client's host,
/// and, while it runs, its progress.
pub struct Context<'a> {
    resources: &'a Resources,
    host: &'a Arc<dyn HostAccess>,
    description: &'a str,
    running: Option<&'a Running>,
}

impl<'a> Context<'a> {
    pub(crate) fn new(resources: &'a Resources, host: &'a Arc<dyn HostAccess>, description: &'a str) -> Self {
        Self {
            resources,
            host,
            description,
            running: None,
        }
    }

    /// The same context for a running operation.
    pub(crate) fn running(self, running: &'a Running) -> Self {
        Self {
            running: Some(running),
            ..self
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.resources.store
    }

    /// The registry client, with the client's credentials.
    pub fn registry(&self) -> Registry {
        registry_for(&self.resources.registry, self.host)
    }

    /// The secrets (the session checked that the op may use its own).
    pub fn secrets(&self) -> &Arc<Secrets> {
        &self.resources.secrets
    }

    /// The containers' network, if they have one.
    pub fn network(&self) -> Option<&Arc<kiln_exec::net::Network>> {
        self.resources.network.as_ref()
    }

    /// The services running on the engine.
    pub(crate) fn services(&self) -> &Services {
        &self.resources.services
    }

    /// The reports of the sessions waiting for the running operation.
    pub(crate) fn reports(&self) -> Vec<Arc<Report>> {
        self.running.map(Running::reports).unwrap_or_default()
    }

    /// The cache volumes.
    pub(crate) fn volumes(&self) -> &Arc<VolumeLeases> {
        &self.resources.volumes
    }

    /// Where git fetches `remote` from (its mirror, if one is configured).
    pub fn git_remote(&self, remote: &crate::git::Remote) -> crate::git::Remote {
        remote.mirrored(&self.resources.git_mirrors)
    }

    /// Bounds on what one image layer may write.
    pub fn layer_limits(&self) -> ExtractLimits {
        self.resources.layer_limits
    }

    /// The host of the client that asked.
    pub fn host(&self) -> &Arc<dyn HostAccess> {
        self.host
    }

    /// The operation's description (scrubbed of secrets), for errors.
    pub fn description(&self) -> &str {
        self.description
    }

    /// The error of this operation with `cause`.
    pub fn error(&self, cause: impl Into<Cause>) -> SolveError {
        SolveError::op(self.description, cause)
    }

    /// Runs blocking filesystem work off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Cause> + Send + 'static,
    ) -> Result<T, SolveError> {
        blocking(self.store(), self.description, f).await
    }

    /// Reports notices about this operation (see
    /// [`crate::EventKind::Notice`]) from anywhere, for as long as it lives.
    pub fn notifier(&self) -> Box<dyn Fn(String) + Send + Sync> {
        match self.running {
            Some(running) => Box::new(running.notifier()),
            None => Box::new(|message| tracing::warn!("{message}")),
        }
    }

    /// Waits for one of the engine's exec slots (the time counts as queued,
    /// not running); the slot is held until the permit is dropped.
    pub async fn exec_slot(&self) -> Result<SemaphorePermit<'a>, SolveError> {
        let acquire = self.resources.exec_slots.acquire();
        let permit = match self.running {
            Some(running) => running.queue(acquire).await,
            None => acquire.await,
        };
        permit.map_err(|e| self.error(e))
    }

    /// Runs a container, passing its output on as progress as it arrives.
    pub async fn exec(&self, spec: &RunSpec) -> Result<ExecOutput, ExecError> {
        let runtime = &self.resources.runtime;
        match self.running {
            Some(running) => {
                running.started_exec();
                running.exec(runtime, spec).await
            }
            None => runtime.run_with_output(spec, &|_, _| {}).await,
        }
    }

    /// The OCI runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.resources.runtime
    }
}

/// `registry` with the credentials of the client behind `host`.
pub(crate) fn registry_for(registry: &Registry, host: &Arc<dyn HostAccess>) -> Registry {
    let host = host.clone();
    registry.with_credentials(move |registry| host.registry_credentials(registry))
}

/// Runs blocking filesystem work off the async threads; errors are
/// `op`'s.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    op: &str,
    f: impl FnOnce(&Store) -> Result<T, Cause> + Send + 'static,
) -> Result<T, SolveError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| SolveError::op(op, e))?
        .map_err(|e| SolveError::op(op, e))
}

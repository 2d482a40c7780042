//! The engine (store + runtime + registry, shared by every session) and the
//! sessions that solve nodes for its clients.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, try_join_all};
use kiln_exec::Runtime;
use kiln_graph::{Key, KeyBuilder, SecretRef};
use kiln_oci::{ExtractLimits, Reference, Registry, RegistryConfig, ResolvedImage};
use kiln_store::{CacheRecord, Digest, PinGuard, SnapshotId, Store, Volumes, now_secs, tree_digest};
use tokio::sync::Semaphore;

use crate::events::{EventKind, Events, Subject};
use crate::explain::{self, Explanation, Footprint};
use crate::graph::{Input, Node, cache_key};
use crate::host_access::{HostAccess, LocalHost, WithRegistryAuth};
use crate::once_map::{OnceMap, Waiter};
use crate::ops::{self, CacheMap, Context, OpOutput, Prepared, Resources};
use crate::report::{Audience, Audiences, Report, SessionOptions, Stats};
use crate::result::ExecMeta;
use crate::running::Running;
use crate::secrets::Secrets;
use crate::services::{ServiceDef, ServiceLease, Services};
use crate::volumes::VolumeLeases;
use crate::{Cause, SolveError, Solved};

/// Content digests of parts of trees, by (tree, path).
type PartDigests = HashMap<(Option<SnapshotId>, String), Option<Digest>>;

/// What solving a node gives.
type SolveResult = Result<Arc<Solved>, SolveError>;

/// Engine settings.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// The state directory (store, db, runtime state).
    pub state_dir: PathBuf,
    /// OCI runtime name or path (`None`: crun, else runc).
    pub runtime: Option<String>,
    /// Registry mirrors, insecure registries.
    pub registry: RegistryConfig,
    /// How many execs may run at once.
    pub parallelism: usize,
    /// Bounds on what one image layer may write (`max_total_bytes` is
    /// further bounded by the free disk space).
    pub layer_limits: ExtractLimits,
    /// The containers' network (`None`: each container has only loopback).
    pub network: Option<kiln_exec::net::NetConfig>,
    /// Git URL prefixes fetched from elsewhere (prefix, replacement).
    pub git_mirrors: Vec<(String, String)>,
}

/// The evaluation engine of one state directory: what every session
/// shares (the store, the runtime, the registry client, the exec slots, the
/// work in flight).
pub struct Engine {
    resources: Resources,
    inflight: Arc<OnceMap<Key, SolveResult>>,
    audiences: Audiences,
    part_digests: Mutex<PartDigests>,
}

/// Detects the OCI runtime for `store` and removes what killed engines
/// left behind that opening the store does not: containers still named in
/// this state directory's runtime state (killed, then deleted), and the
/// cgroups of containers of any engine that is gone. Opening the store has
/// already removed partial work in `tmp` and abandoned runtime directories.
pub fn remove_leftovers(store: &Store, runtime: Option<&str>) -> Result<Runtime, SolveError> {
    let runtime =
        Runtime::detect(runtime, store.runtime_state_dir()).map_err(|e| SolveError::op("detect runtime", e))?;
    for id in runtime.remove_stale() {
        tracing::info!(container = %id, "removed a container left by an interrupted run");
    }
    for cgroup in kiln_exec::remove_leaked_cgroups() {
        tracing::info!(cgroup = %cgroup.display(), "removed a cgroup left by an engine that is gone");
    }
    Ok(runtime)
}

impl Engine {
    /// Opens the state directory, detects the runtime and removes what a
    /// killed predecessor left behind.
    pub fn open(config: EngineConfig) -> Result<Arc<Self>, SolveError> {
        let store = Store::open(&config.state_dir).map_err(|e| SolveError::op("open state", e))?;
        let runtime = remove_leftovers(&store, config.runtime.as_deref())?;
        let secrets = Secrets::open(store.root()).map_err(|e| SolveError::op("open secrets key", e))?;
        let volumes =
            Volumes::open(store.root().join("volumes")).map_err(|e| SolveError::op("open cache volumes", e))?;
        let network = match config.network {
            Some(net) => {
                let dir = kiln_exec::net::default_dir(&net.bridge);
                Some(kiln_exec::net::Network::start(net, &dir).map_err(|e| SolveError::op("set up the network", e))?)
            }
            None => None,
        };
        Ok(Arc::new(Self {
            resources: Resources {
                store: Arc::new(store),
                runtime,
                registry: Registry::new(config.registry.clone()),
                secrets: Arc::new(secrets),
                volumes: VolumeLeases::new(volumes),
                exec_slots: Semaphore::new(config.parallelism.max(1)),
                layer_limits: config.layer_limits,
                network,
                services: Services::default(),
                git_mirrors: config.git_mirrors,
            },
            inflight: OnceMap::in_flight(lost_job),
            audiences: Audiences::default(),
            part_digests: Mutex::new(HashMap::new()),
        }))
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.resources.store
    }

    /// The OCI runtime in use.
    pub fn runtime(&self) -> &Runtime {
        &self.resources.runtime
    }

    /// The secrets of every session (plaintext in memory only); a session
    /// reads only its own, see [`Session::secret`].
    pub fn secrets(&self) -> &Secrets {
        &self.resources.secrets
    }

    /// The containers' network, if they have one.
    pub fn network(&self) -> Option<&Arc<kiln_exec::net::Network>> {
        self.resources.network.as_ref()
    }

    /// The cache volumes.
    pub fn volumes(&self) -> &Volumes {
        self.resources.volumes.volumes()
    }

    /// Loads an image from an OCI layout directory or an OCI/docker archive.
    pub async fn load_image(
        &self,
        path: &str,
        tag: Option<&str>,
        platform: Option<&str>,
    ) -> Result<ResolvedImage, SolveError> {
        let (path, tag, platform) = (
            PathBuf::from(path),
            tag.map(str::to_string),
            platform.map(str::to_string),
        );
        let op = format!("import {}", path.display());
        ops::blocking(self.store(), &op, move |store| {
            ops::image::load(store, Path::new(&path), tag.as_deref(), platform.as_deref())
        })
        .await
    }

    /// The content digest of `path` in a tree (`None`: nothing there), memoized
    /// per snapshot since snapshots never change.
    async fn part_digest(&self, tree: Option<SnapshotId>, path: &str) -> Result<Option<Digest>, SolveError> {
        let memo_key = (tree, path.to_string());
        if let Some(d) = self.part_digests.lock().expect("digest memo").get(&memo_key) {
            return Ok(*d);
        }
        let p = path.to_string();
        let digest = ops::blocking(self.store(), &format!("digest {path}"), move |store| {
            let view = store.view(tree)?;
            Ok(tree_digest(&view, &p)?)
        })
        .await?;
        self.part_digests.lock().expect("digest memo").insert(memo_key, digest);
        Ok(digest)
    }

    /// How many operations are running or about to run, for all sessions.
    pub fn running_operations(&self) -> usize {
        self.inflight.running()
    }

    /// How many requests (of any session) wait for operations that are
    /// running or about to run: a diagnostic.
    pub fn waiting_requests(&self) -> usize {
        self.inflight.waiters()
    }

    /// A new session for a client on this host, with default options.
    pub fn session(self: &Arc<Self>) -> Session {
        self.session_with(SessionOptions::default())
    }

    /// A new session for a client on this host (whose registry credentials
    /// are in the docker config the engine's settings name).
    pub fn session_with(self: &Arc<Self>, options: SessionOptions) -> Session {
        let host = LocalHost::new(self.resources.registry.config().docker_config_dir());
        self.session_for(Arc::new(host), options)
    }

    /// A new session for a client reached through `host`.
    pub fn session_for(self: &Arc<Self>, host: Arc<dyn HostAccess>, options: SessionOptions) -> Session {
        let host = Arc::new(WithRegistryAuth::new(host));
        Session {
            registry_auth: host.clone(),
            host,
            engine: self.clone(),
            memo: OnceMap::memo(lost_job),
            pins: Arc::default(),
            secrets: Arc::default(),
            report: Report::new(options),
            fetches: Arc::default(),
            git_refs: Arc::default(),
        }
    }

    /// The job that computes `key`: the one in flight, else a new one
    /// running `job` (which the engine owns; see [`OnceMap`]).
    fn join_job(self: &Arc<Self>, key: Key, job: Job) -> Waiter<Key, SolveResult> {
        let engine = self.clone();
        self.inflight
            .get_or_spawn(key, move || async move { engine.lookup_or_run(job).await })
    }

    /// Looks `job`'s key up once more (another engine user may have just
    /// recorded it), else runs it and records the result. Every session in
    /// its audience is told.
    async fn lookup_or_run(&self, job: Job) -> SolveResult {
        let Job {
            node,
            key,
            prepared,
            inputs,
            host,
            description,
            footprint,
            audience,
        } = job;
        let store = self.store();
        if let Some(solved) = cached(store, key, &description, |kind, exec| audience.emit(kind, exec))? {
            return Ok(solved);
        }
        audience.emit(EventKind::Started, None);
        let started = Instant::now();
        let running = Running::new(&audience, &self.resources.secrets);
        let cx = Context::new(&self.resources, &host, &description).running(&running);
        let trees: Vec<Option<SnapshotId>> = inputs
            .iter()
            .zip(node.inputs())
            .map(|(solved, input)| solved.output(input.output))
            .collect();
        let result = node.op().run(&cx, &trees, prepared).await;
        let duration = started.elapsed().saturating_sub(running.queued());
        let OpOutput { staged, outputs, meta } = match result {
            Ok(out) => out,
            Err(e) => {
                let message = self.resources.secrets.scrub(&e.report());
                let exec = ExecMeta::of_failure(store, &e).await;
                audience.emit(EventKind::Failed { message }, exec);
                return Err(e);
            }
        };
        let record = CacheRecord {
            outputs,
            meta,
            description: description.clone(),
            created: now_secs(),
            duration_ms: duration.as_millis() as u64,
        };
        let rec = record.clone();
        // Off the async threads: a commit may wait for the flusher's sync.
        let (def, what) = (node.digest(), description.clone());
        ops::blocking(store, &description, move |store| {
            store.commit(staged, Some((key.as_bytes(), &rec)))?;
            // Kept to explain the next miss of this op.
            if let Err(e) = explain::record(store.db(), &def, &footprint) {
                tracing::warn!("recording how {what} was keyed: {e}");
            }
            Ok(())
        })
        .await?;
        let exec = ExecMeta::from_meta(&record.meta);
        audience.emit(EventKind::Done { duration }, exec);
        Ok(Arc::new(Solved {
            key,
            outputs: record.outputs,
            meta: record.meta,
            cached: false,
        }))
    }

    /// What a node's cache key was made of.
    fn footprint(&self, node: &Node, description: &str, key: Key, inputs: &[Key], map: &CacheMap) -> Footprint {
        let secrets = &self.resources.secrets;
        // Args may hold a secret value: the footprint is stored.
        let op = secrets.scrub(&String::from_utf8_lossy(&node.op().encode()));
        Footprint {
            description: description.to_string(),
            key,
            op: serde_json::from_str(&op).unwrap_or_default(),
            inputs: inputs
                .iter()
                .zip(node.inputs())
                .map(|(k, i)| (*k, secrets.scrub(&i.node.op().describe())))
                .collect(),
            files: map.files().cloned(),
        }
    }
}

/// The result recorded under `key`, if any, told to `tell` as cached.
fn cached(
    store: &Store,
    key: Key,
    description: &str,
    tell: impl FnOnce(EventKind, Option<ExecMeta>),
) -> Result<Option<Arc<Solved>>, SolveError> {
    let Some(record) = store
        .cache_get(key.as_bytes())
        .map_err(|e| SolveError::op(description, e))?
    else {
        return Ok(None);
    };
    let duration = Duration::from_millis(record.duration_ms);
    tell(EventKind::Cached { duration }, ExecMeta::from_meta(&record.meta));
    Ok(Some(Arc::new(Solved {
        key,
        outputs: record.outputs,
        meta: record.meta,
        cached: true,
    })))
}

/// What the engine needs to compute one cache key.
struct Job {
    node: Arc<Node>,
    key: Key,
    prepared: Prepared,
    inputs: Vec<Arc<Solved>>,
    host: Arc<dyn HostAccess>,
    description: String,
    footprint: Footprint,
    audience: Arc<Audience>,
}

/// Solves nodes for one client: its secrets, its host, its progress and
/// options. Nodes are memoized by definition digest, so a node shared by
/// several branches is solved once; work shared with other sessions (the
/// same cache key) runs once for all.
#[derive(Clone)]
pub struct Session {
    engine: Arc<Engine>,
    memo: Arc<OnceMap<Key, SolveResult>>,
    /// Keeps what this session solved from garbage collection while it lives.
    pins: Arc<Mutex<Vec<PinGuard>>>,
    /// The secrets this session set (by digest): the only ones its graphs
    /// may use and its clients may read, whatever IDs they present.
    secrets: Arc<Mutex<HashSet<String>>>,
    /// The client's host.
    host: Arc<dyn HostAccess>,
    /// The same, where the pipeline's registry credentials are set.
    registry_auth: Arc<WithRegistryAuth>,
    /// What this session is told.
    report: Arc<Report>,
    /// The URLs it fetched (`Query.http`).
    fetches: Arc<crate::http::Fetches>,
    /// The refs of the git remotes it asked about, as they were then.
    git_refs: Arc<crate::per_key::PerKey<crate::git::Remote, GitRefs>>,
}

/// A remote's refs: `(commit, full ref name)`.
pub type GitRefs = Arc<Vec<(String, String)>>;

impl Session {
    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The client's host.
    pub fn host(&self) -> Arc<dyn HostAccess> {
        Arc::clone(&self.host)
    }

    /// The options the session was opened with.
    pub fn options(&self) -> &SessionOptions {
        &self.report.options
    }

    /// This session's progress events (of its operations only).
    pub fn events(&self) -> &Events {
        self.report.events()
    }

    /// What this session's operations did so far.
    pub fn stats(&self) -> Stats {
        self.report.stats()
    }

    /// Why each of this session's operations that missed the cache missed
    /// it (with `explain_cache`), taken out of the session.
    pub fn explanations(&self) -> Vec<Explanation> {
        self.report.take_explanations()
    }

    /// Resolves an image reference (a tag goes to the registry, with this
    /// session's credentials) to its platform-specific manifest; the
    /// manifest and config are stored.
    pub async fn resolve_image(&self, reference: &str, platform: Option<&str>) -> Result<ResolvedImage, SolveError> {
        // The errors of kiln-oci name the reference already.
        let op = "resolve image";
        let r = Reference::parse(reference).map_err(|e| SolveError::op(op, e))?;
        // Not an operation yet (the API resolves tags as pipelines are
        // built): notices go to the log.
        let registry = ops::registry_for(&self.engine.resources.registry, &self.host)
            .with_observer(|notice| tracing::warn!("{notice}"));
        ops::image::resolve(&registry, self.engine.store(), &r, platform)
            .await
            .map_err(|e| SolveError::op(op, e))
    }

    /// Uses `username` and `password` for the registry of `address` (pulls
    /// and pushes of this session), before the client's docker config;
    /// `None` goes back to it.
    pub fn set_registry_auth(&self, address: &str, login: Option<(String, String)>) -> Result<(), SolveError> {
        // A bare host (`ghcr.io`, `localhost:5000`) names its registry.
        let address = match address.contains('/') {
            true => address.to_string(),
            false => format!("{address}/any"),
        };
        let reference = Reference::parse(&address).map_err(|e| SolveError::op("registry auth", e))?;
        let credentials = login.map(|(username, password)| kiln_oci::Credentials::Basic { username, password });
        self.registry_auth.set(reference.registry(), credentials);
        Ok(())
    }

    /// Sets a secret for this session; returns how graphs name it.
    pub fn add_secret(&self, name: &str, plaintext: String) -> SecretRef {
        let secret = self.engine.resources.secrets.add(name, plaintext);
        self.secrets
            .lock()
            .expect("session secrets")
            .insert(secret.digest.clone());
        secret
    }

    /// The plaintext of a secret this session set; `None` for any other,
    /// even one another session holds.
    pub fn secret(&self, secret: &SecretRef) -> Option<Arc<String>> {
        let granted = self.secrets.lock().expect("session secrets").contains(&secret.digest);
        granted.then(|| self.engine.resources.secrets.get(secret)).flatten()
    }

    /// Refuses a node that uses a secret this session did not set.
    fn check_secrets(&self, node: &Node) -> Result<(), SolveError> {
        self.check_secrets_of(&node.op().describe(), node.op().secrets())
    }

    /// Refuses `what`, which uses `secrets`, if this session did not set them.
    fn check_secrets_of(&self, what: &str, secrets: Vec<&SecretRef>) -> Result<(), SolveError> {
        let granted = self.secrets.lock().expect("session secrets");
        match secrets.into_iter().find(|s| !granted.contains(&s.digest)) {
            None => Ok(()),
            Some(s) => Err(SolveError::op(
                self.engine.resources.secrets.scrub(what),
                format!(
                    "secret {:?} was not set in this session (an ID from another session or client \
                     does not carry its value): set it with setSecret or secret(uri) here",
                    s.name
                ),
            )),
        }
    }

    /// Publishes the images of `specs` (their root filesystems are
    /// `inputs`, one each) to `address`; `address@digest`. Progress shows
    /// it as a step of its own, with what was sent.
    pub async fn publish(
        &self,
        address: &str,
        specs: Vec<ops::ImageSpec>,
        inputs: &[Input],
        compression: kiln_oci::Compression,
        media_types: kiln_oci::MediaTypes,
    ) -> Result<String, SolveError> {
        let op = format!("publish {address}");
        let reference = Reference::parse(address).map_err(|e| SolveError::op(&op, e))?;
        let tops = self.solve_trees(inputs).await?;
        let mut id = KeyBuilder::new("kiln/publish");
        id.bytes(address.as_bytes());
        inputs.iter().for_each(|i| {
            id.key(&i.node.digest());
        });
        let subject = Subject::uncounted(id.finish(), op.clone());
        let (report, noticed) = (self.report.clone(), subject.clone());
        let host = reference.registry().to_string();
        let (registry_host, repository) = (host.clone(), reference.repository().to_string());
        let publish = async {
            let (images, elsewhere) = ops::blocking(self.engine.store(), &op, move |store| {
                let images = ops::image_archive::build_images(store, &specs, &tops, compression, media_types)?;
                let elsewhere = ops::image_archive::blob_locations(store, &host, &images)?;
                Ok((images, elsewhere))
            })
            .await?;
            let registry =
                ops::registry_for(&self.engine.resources.registry, &self.host).with_observer(move |notice| {
                    let message = notice.to_string();
                    report.emit(&noticed, EventKind::Notice { message }, None)
                });
            let pushed = registry
                .push(&reference, &images, self.engine.store().blobs(), &elsewhere)
                .await
                .map_err(|e| SolveError::op(&op, e))?;
            ops::blocking(self.engine.store(), &op, move |store| {
                let digests = images.iter().flat_map(|i| i.layers.iter().map(|l| l.digest));
                ops::image_archive::record_blob_locations(store, &registry_host, &repository, digests)
            })
            .await?;
            let message = format!(
                "sent {} blob(s), {}; mounted {} from other repositories; {} already there",
                pushed.blobs_sent,
                kiln_store::format_size(pushed.bytes_sent),
                pushed.blobs_mounted,
                pushed.blobs_present
            );
            Ok::<_, SolveError>((pushed, message))
        };
        let pushed = self.report.step(&subject, publish).await?;
        Ok(format!("{reference}@{}", pushed.digest))
    }

    /// The content of `url` in the blob store (see [`crate::http`]): fetched
    /// once per session, revalidated against what it gave last, not asked
    /// at all when `checksum`'s blob is here.
    pub async fn fetch_http(
        &self,
        url: &str,
        authorization: Option<&str>,
        checksum: Option<Digest>,
    ) -> Result<crate::http::Fetched, SolveError> {
        // The registry settings' timeouts (the same network, the same patience).
        let registry = self.engine.resources.registry.config();
        let request = crate::http::Request {
            url,
            authorization,
            checksum,
            timeouts: (registry.connect_timeout(), registry.read_timeout()),
        };
        self.fetches.fetch(self.engine.store(), &self.report, &request).await
    }

    /// The refs of a git remote, listed once per session: a moving branch
    /// is seen as it was when first asked.
    pub async fn git_refs(&self, remote: &crate::git::Remote) -> Result<GitRefs, SolveError> {
        let op = format!("git {}", crate::git::display_url(&remote.url));
        self.check_secrets_of(&op, remote.auth.secrets().collect())?;
        let listed = remote.mirrored(&self.engine.resources.git_mirrors);
        let secrets = self.engine.resources.secrets.clone();
        self.git_refs
            .get_or_try(remote.clone(), || async move {
                let refs = tokio::task::spawn_blocking(move || crate::git::ls_remote(&listed, &[], &secrets))
                    .await
                    .map_err(|e| SolveError::op(&op, e.to_string()))?
                    .map_err(|e| SolveError::op(&op, e))?;
                Ok(Arc::new(refs))
            })
            .await
    }

    /// The best common ancestor of two commits, each with its remote and
    /// a ref that reaches it (see [`crate::git::merge_base`]).
    pub async fn git_merge_base(
        &self,
        a: (crate::git::Remote, String, String),
        b: (crate::git::Remote, String, String),
    ) -> Result<String, SolveError> {
        let op = format!("git {} commonAncestor", crate::git::display_url(&a.0.url));
        let mirrors = &self.engine.resources.git_mirrors;
        let (ra, rb) = (a.0.mirrored(mirrors), b.0.mirrored(mirrors));
        let secrets = self.engine.resources.secrets.clone();
        tokio::task::spawn_blocking(move || crate::git::merge_base((&ra, &a.1, &a.2), (&rb, &b.1, &b.2), &secrets))
            .await
            .map_err(|e| SolveError::op(&op, e.to_string()))?
            .map_err(|e| SolveError::op(&op, e))
    }

    /// Solves `inputs` (in parallel): the tree each selects.
    async fn solve_trees(&self, inputs: &[Input]) -> Result<Vec<Option<SnapshotId>>, SolveError> {
        let solved = try_join_all(inputs.iter().map(|i| self.solve(&i.node))).await?;
        Ok(solved.iter().zip(inputs).map(|(s, i)| s.output(i.output)).collect())
    }

    /// Starts the service `def` over `inputs` (or joins it, if it runs):
    /// it runs until the lease is dropped.
    pub async fn start_service(&self, def: &ServiceDef, inputs: &[Input]) -> Result<ServiceLease, SolveError> {
        let description = self.engine.resources.secrets.scrub(&def.describe());
        self.check_secrets_of(&description, def.secrets())?;
        let trees = self.solve_trees(inputs).await?;
        let cx = Context::new(&self.engine.resources, &self.host, &description);
        let reports = [self.report.clone()];
        let mut lease = self
            .engine
            .resources
            .services
            .acquire(&cx, def, &trees, &reports)
            .await
            .map_err(|cause| SolveError::op(format!("start {}", def.hostname), cause))?;
        lease.name_in(&self.report);
        Ok(lease)
    }

    /// Solves `node` and everything it depends on.
    ///
    /// The work runs as jobs the engine owns: it goes on while anyone waits
    /// for it, and is cancelled (containers killed, slots and locks
    /// released) when every request for it was dropped.
    pub fn solve(&self, node: &Arc<Node>) -> BoxFuture<'static, SolveResult> {
        let session = self.clone();
        let node = node.clone();
        let waiter = self
            .memo
            .get_or_spawn(node.digest(), move || async move { session.solve_uncached(node).await });
        waiter.wait().boxed()
    }

    async fn solve_uncached(&self, node: Arc<Node>) -> SolveResult {
        node.validate().map_err(|e| SolveError::op(node.op().describe(), e))?;
        self.check_secrets(&node)?;
        let inputs = try_join_all(node.inputs().iter().map(|i| self.solve(&i.node))).await?;
        let engine = &self.engine;
        // Descriptions hold args, which may hold a secret value.
        let description = engine.resources.secrets.scrub(&node.op().describe());
        let cx = Context::new(&engine.resources, &self.host, &description);
        if node.op().constant() {
            let out = node.op().run(&cx, &[], Prepared::default()).await?;
            return Ok(Arc::new(Solved {
                key: cache_key(&CacheMap::definition(node.op().as_ref()), &[]),
                outputs: out.outputs,
                meta: out.meta,
                cached: true,
            }));
        }
        let map = node.op().cache_map(&cx).await?;
        let mut input_keys: Vec<(Key, usize)> = node
            .inputs()
            .iter()
            .zip(&inputs)
            .map(|(i, s)| (s.key, i.output))
            .collect();
        // An input read only in part is keyed by that part's content.
        for (index, path) in node.op().selectors() {
            let tree = inputs[index].output(node.inputs()[index].output);
            if let Some(digest) = engine.part_digest(tree, path).await? {
                let key = KeyBuilder::new("kiln/selector/v1").bytes(digest.as_bytes()).finish();
                input_keys[index] = (key, 0);
            }
        }
        let key = cache_key(&map, &input_keys);
        // Pinned before the lookup: what it finds stays until the session ends.
        let pin = engine.store().pin_keys(&[*key.as_bytes()]);
        self.pins.lock().expect("pins lock").push(pin);
        let inputs_named = node.inputs().iter().map(|i| i.node.digest()).collect();
        let subject = Subject::new(node.digest(), description.clone(), inputs_named, node.base_image());
        if let Some(solved) = cached(engine.store(), key, &description, |kind, exec| {
            self.report.emit(&subject, kind, exec)
        })? {
            return Ok(solved);
        }
        let input_keys: Vec<Key> = input_keys.into_iter().map(|(k, _)| k).collect();
        let footprint = engine.footprint(&node, &description, key, &input_keys, &map);
        let options = &self.report.options;
        if options.explain_cache || options.fail_on_cache_miss {
            let reasons = explain::explain(engine.store().db(), &node.digest(), &footprint);
            if options.fail_on_cache_miss {
                let message = format!("cache miss (--fail-on-cache-miss): {}", reasons.join("; "));
                let failed = EventKind::Failed {
                    message: message.clone(),
                };
                self.report.emit(&subject, failed, None);
                return Err(SolveError::op(&description, message));
            }
            self.report.explained(Explanation {
                node: node.digest(),
                description: description.clone(),
                reasons,
            });
        }
        let audience = engine.audiences.of(key);
        let _member = audience.join(&self.report, subject);
        let job = Job {
            node,
            key,
            prepared: map.into_prepared(),
            inputs,
            host: self.host.clone(),
            description,
            footprint,
            audience,
        };
        engine.join_job(key, job).wait().await
    }
}

/// What waiters of a job that panicked get.
fn lost_job() -> SolveResult {
    Err(SolveError::op(
        "solve",
        Cause::Internal("the job ended without a result (it panicked; see the log)".into()),
    ))
}

//! The engine (store + runtime + registry) and sessions that solve nodes.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, try_join_all};
use kiln_exec::Runtime;
use kiln_graph::{Key, KeyBuilder, Node, Op, SecretRef, SourcePolicy, cache_key};
use kiln_oci::{ExtractLimits, Registry, RegistryConfig};
use kiln_store::{CacheRecord, Digest, HostPolicy, PinGuard, SnapshotId, Store, Volumes, now_secs, tree_digest};
use tokio::sync::Semaphore;

use crate::events::{EventKind, Events, Subject};
use crate::explain::{self, Explanation, Footprint};
use crate::host_access::{HostAccess, LocalHost};
use crate::once_map::{OnceMap, Waiter};
use crate::ops::{self, OpOutput, Prepared};
use crate::result::ExecMeta;
use crate::running::Running;
use crate::secrets::Secrets;
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
    /// Explain every cache miss (see [`Engine::explanations`]).
    pub explain_cache: bool,
    /// Fail an operation instead of running it when it misses the cache.
    pub fail_on_cache_miss: bool,
    /// What exports to the host may create of what grants privileges there
    /// (device nodes, setuid/setgid files): nothing unless asked.
    pub export: HostPolicy,
    /// Bounds on what one image layer may write (`max_total_bytes` is
    /// further bounded by the free disk space).
    pub layer_limits: ExtractLimits,
}

/// Counters of what the engine did since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Operations that ran.
    pub ran: u64,
    /// Operations answered from the cache.
    pub cached: u64,
    /// Containers started.
    pub execs: u64,
    /// Operations that failed.
    pub failed: u64,
    /// Milliseconds the cached operations took when they ran.
    pub saved_ms: u64,
}

#[derive(Default)]
struct Counters {
    ran: AtomicU64,
    cached: AtomicU64,
    execs: AtomicU64,
    failed: AtomicU64,
    saved_ms: AtomicU64,
}

/// The evaluation engine of one state directory.
pub struct Engine {
    pub(crate) store: Arc<Store>,
    pub(crate) runtime: Runtime,
    pub(crate) registry: Registry,
    pub(crate) exec_slots: Semaphore,
    pub(crate) secrets: Arc<Secrets>,
    pub(crate) volumes: Arc<VolumeLeases>,
    events: Events,
    inflight: Arc<OnceMap<Key, SolveResult>>,
    part_digests: Mutex<PartDigests>,
    explain_cache: bool,
    fail_on_cache_miss: bool,
    export: HostPolicy,
    pub(crate) layer_limits: ExtractLimits,
    explanations: Mutex<Vec<Explanation>>,
    counters: Counters,
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
        let registry = Registry::new(config.registry.clone());
        let secrets = Secrets::open(store.root()).map_err(|e| SolveError::op("open secrets key", e))?;
        let volumes =
            Volumes::open(store.root().join("volumes")).map_err(|e| SolveError::op("open cache volumes", e))?;
        Ok(Arc::new(Self {
            store: Arc::new(store),
            runtime,
            registry,
            exec_slots: Semaphore::new(config.parallelism.max(1)),
            secrets: Arc::new(secrets),
            volumes: VolumeLeases::new(volumes),
            events: Events::default(),
            inflight: OnceMap::in_flight(lost_job),
            part_digests: Mutex::new(HashMap::new()),
            explain_cache: config.explain_cache,
            fail_on_cache_miss: config.fail_on_cache_miss,
            export: config.export,
            layer_limits: config.layer_limits,
            explanations: Mutex::new(Vec::new()),
            counters: Counters::default(),
        }))
    }

    /// What exports to the host may create of what grants privileges there.
    pub fn export_policy(&self) -> HostPolicy {
        self.export
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The OCI runtime in use.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The registry client.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Progress events.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The secrets of this engine (plaintext in memory only).
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The cache volumes.
    pub fn volumes(&self) -> &Volumes {
        self.volumes.volumes()
    }

    /// The content digest of `path` in a tree (`None`: nothing there), memoized
    /// per snapshot since snapshots never change.
    pub(crate) async fn part_digest(&self, tree: Option<SnapshotId>, path: &str) -> Result<Option<Digest>, SolveError> {
        let memo_key = (tree, path.to_string());
        if let Some(d) = self.part_digests.lock().expect("digest memo").get(&memo_key) {
            return Ok(*d);
        }
        let p = path.to_string();
        let digest = ops::blocking(&self.store, &format!("digest {path}"), move |store| {
            let view = store.view(tree)?;
            Ok(tree_digest(&view, &p)?)
        })
        .await?;
        self.part_digests.lock().expect("digest memo").insert(memo_key, digest);
        Ok(digest)
    }

    /// Why each op that missed the cache missed it (with `explain_cache`),
    /// taken out of the engine.
    pub fn explanations(&self) -> Vec<Explanation> {
        std::mem::take(&mut *self.explanations.lock().expect("explanations lock"))
    }

    /// What a node's cache key was made of.
    fn footprint(&self, node: &Node, description: &str, key: Key, inputs: &[Key], prepared: &Prepared) -> Footprint {
        let files = match prepared {
            Prepared::Host(tree) => Some(
                tree.entries
                    .iter()
                    .filter(|e| !matches!(e.kind, kiln_store::host::HostKind::Dir))
                    .map(|e| (e.rel.to_string_lossy().into_owned(), hex_digest(&e.digest)))
                    .collect(),
            ),
            Prepared::Nothing => None,
        };
        Footprint {
            description: description.to_string(),
            key,
            // Args may hold a secret value: the footprint is stored.
            op: serde_json::from_str(
                &self
                    .secrets
                    .scrub(&serde_json::to_string(node.op()).unwrap_or_default()),
            )
            .unwrap_or_default(),
            inputs: inputs
                .iter()
                .zip(node.inputs())
                .map(|(k, i)| (*k, self.secrets.scrub(&i.node.op().describe())))
                .collect(),
            files,
        }
    }

    /// How many requests (of any session) wait for operations that are
    /// running or about to run: a diagnostic.
    pub fn waiting_requests(&self) -> usize {
        self.inflight.waiters()
    }

    /// What the engine did so far.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            ran: c.ran.load(Ordering::Relaxed),
            cached: c.cached.load(Ordering::Relaxed),
            execs: c.execs.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            saved_ms: c.saved_ms.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_exec(&self) {
        self.counters.execs.fetch_add(1, Ordering::Relaxed);
    }

    /// A new session for a client on this host: a memo of the nodes it
    /// solved, the secrets it set.
    pub fn session(self: &Arc<Self>) -> Session {
        self.session_on(Arc::new(LocalHost))
    }

    /// A new session for a client reached through `host`.
    pub fn session_on(self: &Arc<Self>, host: Arc<dyn HostAccess>) -> Session {
        Session {
            host,
            engine: self.clone(),
            memo: OnceMap::memo(lost_job),
            pins: Arc::default(),
            secrets: Arc::default(),
        }
    }

    /// Runs `node` under `key` unless it is cached or already running, in
    /// which case the running computation is joined.
    fn solve_keyed(
        self: &Arc<Self>,
        node: Arc<Node>,
        key: Key,
        prepared: Prepared,
        inputs: Vec<Arc<Solved>>,
        input_keys: Vec<Key>,
    ) -> Waiter<Key, SolveResult> {
        let engine = self.clone();
        self.inflight.get_or_spawn(key, move || async move {
            engine.lookup_or_run(&node, key, prepared, inputs, input_keys).await
        })
    }

    async fn lookup_or_run(
        self: &Arc<Self>,
        node: &Arc<Node>,
        key: Key,
        prepared: Prepared,
        inputs: Vec<Arc<Solved>>,
        input_keys: Vec<Key>,
    ) -> Result<Arc<Solved>, SolveError> {
        // Descriptions hold args, which may hold a secret value.
        let description = self.secrets.scrub(&node.op().describe());
        let subject = Subject::new(node, description.clone());
        if let Some(record) = self
            .store
            .cache_get(key.as_bytes())
            .map_err(|e| SolveError::op(&description, e))?
        {
            self.counters.cached.fetch_add(1, Ordering::Relaxed);
            self.counters.saved_ms.fetch_add(record.duration_ms, Ordering::Relaxed);
            let duration = Duration::from_millis(record.duration_ms);
            let exec = ExecMeta::from_meta(&record.meta);
            self.events.emit(&subject, EventKind::Cached { duration }, exec);
            return Ok(Arc::new(Solved {
                key,
                outputs: record.outputs,
                meta: record.meta,
                cached: true,
            }));
        }
        let footprint = self.footprint(node, &description, key, &input_keys, &prepared);
        if self.explain_cache || self.fail_on_cache_miss {
            let reasons = explain::explain(self.store.db(), &node.digest(), &footprint);
            if self.fail_on_cache_miss {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let message = format!("cache miss (--fail-on-cache-miss): {}", reasons.join("; "));
                self.events.emit(
                    &subject,
                    EventKind::Failed {
                        message: message.clone(),
                    },
                    None,
                );
                return Err(SolveError::op(&description, message));
            }
            self.explanations.lock().expect("explanations lock").push(Explanation {
                node: node.digest(),
                description: description.clone(),
                reasons,
            });
        }
        self.events.emit(&subject, EventKind::Started, None);
        let started = Instant::now();
        let running = Running::new(&self.events, &subject, &self.secrets);
        let result = ops::run(self, node, prepared, &inputs, &running).await;
        let duration = started.elapsed().saturating_sub(running.queued());
        let OpOutput { staged, outputs, meta } = match result {
            Ok(out) => out,
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let message = self.secrets.scrub(&e.report());
                let exec = ExecMeta::of_failure(&self.store, &e).await;
                self.events.emit(&subject, EventKind::Failed { message }, exec);
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
        let store = self.store.clone();
        let rec = record.clone();
        tokio::task::spawn_blocking(move || store.commit(staged, Some((key.as_bytes(), &rec))))
            .await
            .map_err(|e| SolveError::op(&description, e))?
            .map_err(|e| SolveError::op(&description, e))?;
        self.counters.ran.fetch_add(1, Ordering::Relaxed);
        // Kept to explain the next miss of this op.
        if let Err(e) = explain::record(self.store.db(), &node.digest(), &footprint) {
            tracing::warn!("recording how {description} was keyed: {e}");
        }
        let exec = ExecMeta::from_meta(&record.meta);
        self.events.emit(&subject, EventKind::Done { duration }, exec);
        Ok(Arc::new(Solved {
            key,
            outputs: record.outputs,
            meta: record.meta,
            cached: false,
        }))
    }
}

/// Solves nodes for one client. Nodes are memoized by definition digest,
/// so a node shared by several branches is solved once.
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
}

impl Session {
    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The client's host.
    pub fn host(&self) -> Arc<dyn HostAccess> {
        Arc::clone(&self.host)
    }

    /// Sets a secret for this session; returns how graphs name it.
    pub fn add_secret(&self, name: &str, plaintext: String) -> SecretRef {
        let secret = self.engine.secrets.add(name, plaintext);
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
        granted.then(|| self.engine.secrets.get(secret)).flatten()
    }

    /// Refuses a node that uses a secret this session did not set.
    fn check_secrets(&self, node: &Node) -> Result<(), SolveError> {
        let granted = self.secrets.lock().expect("session secrets");
        match node.op().secrets().into_iter().find(|s| !granted.contains(&s.digest)) {
            None => Ok(()),
            Some(s) => Err(SolveError::op(
                self.engine.secrets.scrub(&node.op().describe()),
                format!(
                    "secret {:?} was not set in this session (an ID from another session or client \
                     does not carry its value): set it with setSecret or secret(uri) here",
                    s.name
                ),
            )),
        }
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
        if matches!(node.op(), Op::Scratch) {
            return Ok(Arc::new(Solved {
                key: cache_key(node.op(), &[], None),
                outputs: vec![None],
                meta: serde_json::Value::Null,
                cached: true,
            }));
        }
        let prepared = ops::prepare(&self.engine, &node).await?;
        let content = match node.op().source_policy() {
            SourcePolicy::Content => prepared.content_key(),
            SourcePolicy::Definition => None,
        };
        let mut input_keys: Vec<(Key, usize)> = node
            .inputs()
            .iter()
            .zip(&inputs)
            .map(|(i, s)| (s.key, i.output))
            .collect();
        // An input read only in part is keyed by that part's content.
        for (index, path) in node.op().selectors() {
            let tree = inputs[index].output(node.inputs()[index].output);
            if let Some(digest) = self.engine.part_digest(tree, path).await? {
                let key = KeyBuilder::new("kiln/selector/v1").bytes(digest.as_bytes()).finish();
                input_keys[index] = (key, 0);
            }
        }
        let key = cache_key(node.op(), &input_keys, content.as_ref());
        // Pinned before the lookup: what it finds stays until the session ends.
        let pin = self.engine.store.pin_keys(&[*key.as_bytes()]);
        self.pins.lock().expect("pins lock").push(pin);
        let input_keys = input_keys.into_iter().map(|(k, _)| k).collect();
        self.engine
            .solve_keyed(node, key, prepared, inputs, input_keys)
            .wait()
            .await
    }
}

/// What waiters of a job that panicked get.
fn lost_job() -> SolveResult {
    Err(SolveError::op(
        "solve",
        Cause::Internal("the job ended without a result (it panicked; see the log)".into()),
    ))
}

fn hex_digest(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

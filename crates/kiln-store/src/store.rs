//! [`Store`]: an opened state directory, its lock, and how what it
//! records becomes durable.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::blobs::BlobStore;
use crate::{
    CacheRecord, CopyOptions, Db, HostError, HostTree, MAX_MOUNT_DEPTH, MergedView, PathFilter, PinGuard,
    RUNTIME_STATE, SnapshotId, SnapshotRecord, Staged, StoreError, copy_tree, db, gc, host, now_micros, now_secs, pins,
    state_dir, usage, volatile_dir,
};

/// An opened state directory.
pub struct Store {
    pub(crate) root: PathBuf,
    pub(crate) blobs: BlobStore,
    pub(crate) durable: Arc<Durable>,
    pub(crate) flusher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    pub(crate) next_id: AtomicU64,
    pub(crate) records: Mutex<HashMap<SnapshotId, SnapshotRecord>>,
    pub(crate) pins: pins::Pins,
    pub(crate) auto_gc: Mutex<gc::AutoGc>,
    pub(crate) run_dir: PathBuf,
    pub(crate) run_dir_in_memory: bool,
    pub(crate) _lock: File,
}

/// What making records durable needs, shared with the flusher thread.
pub(crate) struct Durable {
    pub(crate) root: PathBuf,
    pub(crate) db: Db,
    /// Whether snapshots were committed since the last filesystem sync.
    pub(crate) unsynced: AtomicBool,
    /// Last uses of cache records since the last flush (written in batches).
    pub(crate) touched: Mutex<HashMap<[u8; 32], u64>>,
    /// Serializes flushes.
    pub(crate) flushing: Mutex<()>,
}

/// How long a recorded result may stay non-durable: a background thread
/// flushes this often, so a result is durable at most this long (plus the
/// time the filesystem sync takes) after its operation finished, whether
/// or not anything else happens. A crash loses at most that much recorded
/// work, which then simply runs again.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl Store {
    /// Opens (creating if needed, mode 0700) the state directory `root`,
    /// takes its lock, and cleans what an interrupted process left behind:
    /// staged snapshots and partial uploads in `tmp`, orphaned snapshots,
    /// its volatile directory, and the volatile directories of state
    /// directories no engine has open. Refuses a state directory that
    /// another user owns or that others can enter or write.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        state_dir::prepare_root(&root)?;
        for sub in ["s", "tmp", "empty"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(StoreError::io(&p))?;
        }
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io(&lock_path))?;
        lock_exclusive(&lock, &lock_path, &root)?;

        // Anything staged by a previous process is garbage now.
        let tmp = root.join("tmp");
        fs::remove_dir_all(&tmp).map_err(StoreError::io(&tmp))?;
        fs::create_dir(&tmp).map_err(StoreError::io(&tmp))?;

        let (run_dir, run_dir_in_memory) = volatile_dir(&root);
        state_dir::prepare_volatile(&run_dir, &root)?;
        for dir in state_dir::remove_abandoned_volatile_dirs(&run_dir) {
            tracing::info!(path = %dir.display(), "removed the runtime directory of an engine that is gone");
        }
        let blobs = BlobStore::open(root.join("blobs"), root.join("tmp/blobs"))?;
        let db = Db::open(&root.join("db"))?;
        let known: std::collections::HashSet<u64> = db.snapshot_ids()?.into_iter().map(|s| s.0).collect();
        // Ids of evicted snapshots are never reused.
        let mut max = known
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(db.counter(db::SNAPSHOT_HIGH_WATER)?);
        let sdir = root.join("s");
        for item in fs::read_dir(&sdir).map_err(StoreError::io(&sdir))? {
            let item = item.map_err(StoreError::io(&sdir))?;
            let id = item.file_name().to_str().and_then(|s| s.parse::<u64>().ok());
            match id {
                Some(id) if known.contains(&id) => {}
                _ => {
                    tracing::info!(path = %item.path().display(), "removing orphaned snapshot");
                    let p = item.path();
                    fs::remove_dir_all(&p).map_err(StoreError::io(&p))?;
                    if let Some(id) = id {
                        max = max.max(id);
                    }
                }
            }
        }
        let durable = Arc::new(Durable {
            root: root.clone(),
            db,
            unsynced: AtomicBool::new(false),
            touched: Mutex::new(HashMap::new()),
            flushing: Mutex::new(()),
        });
        let flusher = Durable::spawn_flusher(&durable).map_err(StoreError::io(&root))?;
        Ok(Self {
            root,
            blobs,
            durable,
            flusher: Some(flusher),
            next_id: AtomicU64::new(max + 1),
            records: Mutex::new(HashMap::new()),
            pins: pins::Pins::default(),
            auto_gc: Mutex::new(gc::AutoGc::default()),
            run_dir,
            run_dir_in_memory,
            _lock: lock,
        })
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The metadata database.
    pub fn db(&self) -> &Db {
        &self.durable.db
    }

    /// A directory for per-exec runtime state (bundles, runtime root).
    pub fn run_dir(&self) -> PathBuf {
        self.run_dir.clone()
    }

    /// Where the OCI runtime keeps its state (`--root`), in
    /// [`Store::run_dir`]. Not emptied when the store opens: the runtime
    /// must kill the containers it names first.
    pub fn runtime_state_dir(&self) -> PathBuf {
        self.run_dir.join(RUNTIME_STATE)
    }

    /// Whether [`Store::run_dir`] is in memory (tmpfs), so that secrets
    /// written there never reach a disk.
    pub fn run_dir_in_memory(&self) -> bool {
        self.run_dir_in_memory
    }

    /// An always-empty directory (the lower layer of an empty tree).
    pub fn empty_dir(&self) -> PathBuf {
        self.root.join("empty")
    }

    /// The directory of a committed snapshot.
    pub fn layer_dir(&self, id: SnapshotId) -> PathBuf {
        self.root.join("s").join(id.to_string())
    }

    /// The directory holding blobs by their hex digest.
    pub(crate) fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// The directory of the host stat caches.
    pub(crate) fn stat_cache_dir(&self) -> PathBuf {
        self.root.join("hoststat")
    }

    /// Starts a new snapshot on top of `parent`. The parent stays pinned
    /// until the new snapshot is committed (then it is its parent) or
    /// dropped; a parent garbage collection already evicted is
    /// [`StoreError::MissingSnapshot`].
    pub fn stage(&self, parent: Option<SnapshotId>) -> Result<Staged, StoreError> {
        let pin = match parent {
            Some(p) => {
                let mut set = self.pins.lock();
                let pin = self.pins.pin_locked(&mut set, &[], &[p]);
                let exists = self.record(p);
                // Unlocked before a failure drops (and so unpins) the pin.
                drop(set);
                exists?;
                Some(pin)
            }
            None => None,
        };
        let id = SnapshotId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let dir = self.root.join("tmp").join(id.to_string());
        for sub in ["diff", "work"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(StoreError::io(&p))?;
        }
        Ok(Staged {
            id,
            parent,
            dir,
            size: None,
            content: None,
            _pin: pin,
        })
    }

    /// Keeps the cache records of `keys` (whether they exist yet or not),
    /// their outputs and the blobs they name from garbage collection until
    /// the guard drops. Pin a key before looking it up.
    pub fn pin_keys(&self, keys: &[[u8; 32]]) -> PinGuard {
        let mut set = self.pins.lock();
        self.pins.pin_locked(&mut set, keys, &[])
    }

    /// Keeps snapshots (and their parents) from garbage collection until
    /// the guard drops.
    pub fn pin_snapshots(&self, ids: &[SnapshotId]) -> PinGuard {
        let mut set = self.pins.lock();
        self.pins.pin_locked(&mut set, &[], ids)
    }

    /// Looks up a cache record and notes its use (for least-recently-used
    /// eviction; written to the database in batches by [`Store::flush`]).
    pub fn cache_get(&self, key: &[u8; 32]) -> Result<Option<CacheRecord>, StoreError> {
        let found = self.db().cache_get(key)?;
        if found.is_some() {
            self.durable
                .touched
                .lock()
                .expect("touched lock")
                .insert(*key, now_micros());
        }
        Ok(found)
    }

    /// Scans a host directory with this state directory's stat cache.
    pub fn scan_host(&self, root: &Path, filter: &PathFilter) -> Result<HostTree, HostError> {
        host::scan_with(root, filter, &host::RealFs, Some(&self.stat_cache_dir()))
    }

    /// The highest snapshot id handed out so far.
    pub(crate) fn high_water(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Drops what an eviction removed from the in-memory memos.
    pub(crate) fn forget(&self, eviction: &db::Eviction) {
        let mut records = self.records.lock().expect("records lock");
        for id in &eviction.snapshots {
            records.remove(id);
        }
        let mut touched = self.durable.touched.lock().expect("touched lock");
        for key in &eviction.records {
            touched.remove(key);
        }
    }

    /// Makes staged snapshots permanent and, in the same transaction,
    /// records a cache entry pointing at them.
    pub fn commit(&self, staged: Vec<Staged>, cache: Option<(&[u8; 32], &CacheRecord)>) -> Result<(), StoreError> {
        let mut sizes = Vec::with_capacity(staged.len());
        for s in &staged {
            sizes.push(match s.size {
                Some(size) => size,
                None => usage::measure(&s.diff()).map_err(StoreError::io(&s.diff()))?,
            });
        }
        let added = sizes.iter().sum();
        // Under the pin lock, so that garbage collection cannot delete an
        // existing snapshot the record names between this check and the
        // record's commit.
        let no_gc = self.pins.lock();
        if let Some((_, rec)) = cache {
            for id in rec.outputs.iter().flatten() {
                if !staged.iter().any(|s| s.id == *id) {
                    self.record(*id)?;
                }
            }
        }
        let mut records = Vec::with_capacity(staged.len());
        for (s, size) in staged.iter().zip(sizes) {
            let depth = match s.parent {
                Some(p) => self.record(p)?.depth + 1,
                None => 1,
            };
            let dest = self.layer_dir(s.id);
            fs::rename(s.diff(), &dest).map_err(StoreError::io(&dest))?;
            records.push((
                s.id,
                SnapshotRecord {
                    parent: s.parent,
                    depth,
                    created: now_secs(),
                    size: Some(size),
                },
                s.content,
            ));
        }
        // Before the record: a flush from now on syncs these files first.
        self.durable.unsynced.store(true, Ordering::Release);
        self.db().commit(&records, cache)?;
        {
            let mut cached = self.records.lock().expect("records lock");
            for (id, rec, _) in records {
                cached.insert(id, rec);
            }
        }
        drop(no_gc);
        self.collect_if_over_budget(added);
        Ok(())
    }

    /// Makes everything recorded so far durable now (the flusher thread
    /// does it every [`FLUSH_INTERVAL`] anyway).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.durable.flush()
    }

    /// [`Store::flush`] when there are new results to make durable (the
    /// end of a session): last-use times alone wait for the periodic
    /// flush, so a fully cached session costs no disk sync at all.
    pub fn flush_results(&self) -> Result<(), StoreError> {
        if self.durable.unsynced.load(Ordering::Acquire) || self.durable.db.is_dirty() {
            return self.durable.flush();
        }
        Ok(())
    }

    /// The db record of a snapshot (memoized: snapshots never change).
    pub fn record(&self, id: SnapshotId) -> Result<SnapshotRecord, StoreError> {
        if let Some(r) = self.records.lock().expect("records lock").get(&id) {
            return Ok(r.clone());
        }
        let r = self.db().snapshot(id)?.ok_or(StoreError::MissingSnapshot(id))?;
        self.records.lock().expect("records lock").insert(id, r.clone());
        Ok(r)
    }

    /// The layer directories of the tree whose top is `top`, top-most first.
    pub fn chain(&self, top: Option<SnapshotId>) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        let mut cur = top;
        while let Some(id) = cur {
            out.push(self.layer_dir(id));
            cur = self.record(id)?.parent;
        }
        Ok(out)
    }

    /// A user-space merged view of a tree.
    pub fn view(&self, top: Option<SnapshotId>) -> Result<MergedView, StoreError> {
        Ok(MergedView::new(self.chain(top)?))
    }

    /// The layers to mount for a tree: its chain, or a flattened single
    /// layer when the chain is deeper than [`MAX_MOUNT_DEPTH`].
    pub fn mount_layers(&self, top: Option<SnapshotId>) -> Result<Vec<PathBuf>, StoreError> {
        let Some(id) = top else {
            return Ok(vec![self.empty_dir()]);
        };
        if self.record(id)?.depth <= MAX_MOUNT_DEPTH {
            return self.chain(top);
        }
        let key = flatten_key(id);
        if let Some(rec) = self.cache_get(&key)?
            && let Some(Some(flat)) = rec.outputs.first()
        {
            return Ok(vec![self.layer_dir(*flat)]);
        }
        let staged = self.stage(None)?;
        let view = self.view(top)?;
        let filter = PathFilter::default();
        let opts = CopyOptions {
            hardlink: true,
            ..CopyOptions::new(&filter)
        };
        copy_tree(&view, Path::new("/"), &staged.diff(), &opts)?;
        let flat = staged.id;
        let record = CacheRecord {
            outputs: vec![Some(flat)],
            meta: serde_json::Value::Null,
            description: format!("flatten {id}"),
            created: now_secs(),
            duration_ms: 0,
        };
        self.commit(vec![staged], Some((&key, &record)))?;
        Ok(vec![self.layer_dir(flat)])
    }
}

/// How long opening a state directory waits for another kiln process to
/// release it.
pub const LOCK_WAIT: Duration = Duration::from_secs(300);

/// Takes the state directory's lock, waiting (and saying so) while another
/// process holds it; records our pid in the lock file for the next waiter.
fn lock_exclusive(lock: &File, lock_path: &Path, root: &Path) -> Result<(), StoreError> {
    let started = Instant::now();
    let mut announced = false;
    while !try_lock(lock) {
        if started.elapsed() >= LOCK_WAIT {
            return Err(StoreError::Locked(root.to_path_buf()));
        }
        if !announced {
            let holder = fs::read_to_string(lock_path).unwrap_or_default();
            tracing::warn!(
                "waiting for state directory {} (in use by kiln pid {})",
                root.display(),
                holder.trim()
            );
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Takes the open lock file `lock` without waiting (released when it is
/// closed) and writes this process's pid in it for whoever finds it held;
/// whether it was free.
pub fn try_lock(lock: &File) -> bool {
    use rustix::fs::{FlockOperation, flock};
    if flock(lock.as_fd(), FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    let mut f = lock;
    let _ = f
        .set_len(0)
        .and_then(|_| std::io::Write::write_all(&mut f, std::process::id().to_string().as_bytes()));
    true
}

impl Durable {
    /// Syncs the state directory's filesystem (snapshot files, blobs), then
    /// commits the database durably, so a durable record never points at
    /// lost data. Each step is skipped when there is nothing to make
    /// durable (a fully cached run syncs nothing).
    fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().expect("flush lock");
        if self.unsynced.swap(false, Ordering::AcqRel) {
            let started = Instant::now();
            let synced = File::open(&self.root).and_then(|dir| Ok(rustix::fs::syncfs(&dir)?));
            tracing::debug!(took = ?started.elapsed(), "synced the state directory");
            if let Err(e) = synced {
                self.unsynced.store(true, Ordering::Release);
                return Err(StoreError::io(&self.root)(e));
            }
        }
        let touched = std::mem::take(&mut *self.touched.lock().expect("touched lock"));
        self.db.flush(&touched)
    }

    /// Starts the thread that flushes every [`FLUSH_INTERVAL`] until the
    /// sender is dropped or sends.
    fn spawn_flusher(durable: &Arc<Self>) -> io::Result<(mpsc::Sender<()>, JoinHandle<()>)> {
        let (stop, stopped) = mpsc::channel::<()>();
        let durable = Arc::clone(durable);
        let thread = std::thread::Builder::new()
            .name("kiln-store-flush".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_INTERVAL) {
                    if let Err(e) = durable.flush() {
                        tracing::warn!("making cache records durable: {e}");
                    }
                }
            })?;
        Ok((stop, thread))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.flusher.take() {
            drop(stop);
            let _ = thread.join();
        }
        if let Err(e) = self.flush() {
            tracing::warn!("flushing the state directory on exit: {e}");
        }
        // Nothing runs any more: bundles, runtime state and secret files go.
        if let Err(e) = fs::remove_dir_all(&self.run_dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", self.run_dir.display());
        }
    }
}

fn flatten_key(id: SnapshotId) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(b"flatten:");
    key[8..16].copy_from_slice(&id.0.to_le_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_opener_waits_for_the_first_to_close() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let store = Store::open(&path);
            tx.send(()).unwrap();
            store.map(|_| ())
        });
        // Still waiting while the first store is open.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(
            fs::read_to_string(dir.path().join("lock")).unwrap(),
            std::process::id().to_string()
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the second opener got the lock");
        waiter.join().unwrap().unwrap();
    }
}

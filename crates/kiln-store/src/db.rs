//! The metadata database (redb): snapshot records, cache records, their
//! last use, the content index of host uploads, evictions and counters.
//! redb commits are atomic, so a killed process leaves either the old or
//! the new state, never a mix.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::snapshots::SnapshotId;

const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
const CACHE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("cache");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const OBJECTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("objects");
/// Cache key -> last use (microseconds since the epoch).
const CACHE_USED: TableDefinition<&[u8; 32], u64> = TableDefinition::new("cache_used");
/// Digest of an uploaded host selection -> the snapshot holding exactly it.
const HOST_CONTENT: TableDefinition<&[u8; 32], u64> = TableDefinition::new("host_content");
/// Cache key -> when garbage collection evicted it (seconds since the epoch).
const EVICTED: TableDefinition<&[u8; 32], u64> = TableDefinition::new("evicted");

/// The counter holding the highest snapshot id ever used, so that ids of
/// evicted snapshots are never handed out again.
pub(crate) const SNAPSHOT_HIGH_WATER: &str = "snapshot_high_water";

/// What the db knows about one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshot this one is a diff on top of.
    pub parent: Option<SnapshotId>,
    /// Number of layers in the chain, this one included.
    pub depth: u32,
    /// When it was committed (seconds since the epoch).
    pub created: u64,
    /// Bytes the layer occupies on disk (a file hardlinked into several
    /// layers is shared out among them); `None` for layers recorded before
    /// sizes were, measured when garbage collection first needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A cached result of one operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheRecord {
    /// The top snapshot of each output tree (`None`: empty tree).
    pub outputs: Vec<Option<SnapshotId>>,
    /// Op-specific metadata (image config, exec exit code and output blobs).
    pub meta: serde_json::Value,
    /// Description of the op that produced it (for `kiln cache` and explanations).
    pub description: String,
    /// When it was recorded (seconds since the epoch).
    pub created: u64,
    /// How long the op took to run, in milliseconds (for "time saved").
    pub duration_ms: u64,
}

/// A cache record with its key and last use, as garbage collection sees it.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// The cache key.
    pub key: [u8; 32],
    /// The record.
    pub record: CacheRecord,
    /// Last use (microseconds since the epoch).
    pub last_used: u64,
}

/// Everything one garbage collection pass removes from the database.
#[derive(Debug, Default)]
pub(crate) struct Eviction {
    /// Cache records to delete.
    pub records: Vec<[u8; 32]>,
    /// Snapshot records to delete.
    pub snapshots: Vec<SnapshotId>,
    /// The highest snapshot id handed out so far.
    pub high_water: u64,
    /// When (seconds since the epoch), remembered per evicted key.
    pub at: u64,
}

/// The metadata database of a state dir.
pub struct Db {
    db: Database,
    /// Whether a commit since the last [`Db::flush`] is not durable yet.
    dirty: AtomicBool,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize infallibly")
}

fn decode<T: for<'a> Deserialize<'a>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

impl Db {
    /// Opens or creates the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::db("open", e))?;
        // Creating the tables is a durable commit (two fsyncs): only when one is missing.
        let complete = {
            let tx = db.begin_read().map_err(|e| StoreError::db("open", e))?;
            tx.open_table(SNAPSHOTS).is_ok()
                && tx.open_table(CACHE).is_ok()
                && tx.open_table(COUNTERS).is_ok()
                && tx.open_table(OBJECTS).is_ok()
                && tx.open_table(CACHE_USED).is_ok()
                && tx.open_table(HOST_CONTENT).is_ok()
                && tx.open_table(EVICTED).is_ok()
        };
        if complete {
            return Ok(Self {
                db,
                dirty: AtomicBool::new(false),
            });
        }
        let tx = db.begin_write().map_err(|e| StoreError::db("open", e))?;
        {
            tx.open_table(SNAPSHOTS).map_err(|e| StoreError::db("open", e))?;
            tx.open_table(CACHE).map_err(|e| StoreError::db("open", e))?;
            tx.open_table(COUNTERS).map_err(|e| StoreError::db("open", e))?;
            tx.open_table(OBJECTS).map_err(|e| StoreError::db("open", e))?;
            tx.open_table(CACHE_USED).map_err(|e| StoreError::db("open", e))?;
            tx.open_table(HOST_CONTENT).map_err(|e| StoreError::db("open", e))?;
            tx.open_table(EVICTED).map_err(|e| StoreError::db("open", e))?;
        }
        tx.commit().map_err(|e| StoreError::db("open", e))?;
        Ok(Self {
            db,
            dirty: AtomicBool::new(false),
        })
    }

    /// Increments and returns a named counter.
    pub fn next(&self, counter: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(|e| StoreError::db("counter", e))?;
        let value = {
            let mut t = tx.open_table(COUNTERS).map_err(|e| StoreError::db("counter", e))?;
            let value = t
                .get(counter)
                .map_err(|e| StoreError::db("counter", e))?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            t.insert(counter, value).map_err(|e| StoreError::db("counter", e))?;
            value
        };
        tx.commit().map_err(|e| StoreError::db("counter", e))?;
        Ok(value)
    }

    /// Reads a named counter (0 when never incremented).
    pub fn counter(&self, counter: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| StoreError::db("counter", e))?;
        let t = tx.open_table(COUNTERS).map_err(|e| StoreError::db("counter", e))?;
        Ok(t.get(counter)
            .map_err(|e| StoreError::db("counter", e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Looks up a snapshot record.
    pub fn snapshot(&self, id: SnapshotId) -> Result<Option<SnapshotRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| StoreError::db("read snapshot", e))?;
        let t = tx
            .open_table(SNAPSHOTS)
            .map_err(|e| StoreError::db("read snapshot", e))?;
        match t.get(id.0).map_err(|e| StoreError::db("read snapshot", e))? {
            Some(v) => Ok(Some(decode("snapshot record", v.value())?)),
            None => Ok(None),
        }
    }

    /// All snapshot ids with records.
    pub fn snapshot_ids(&self) -> Result<Vec<SnapshotId>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| StoreError::db("list snapshots", e))?;
        let t = tx
            .open_table(SNAPSHOTS)
            .map_err(|e| StoreError::db("list snapshots", e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| StoreError::db("list snapshots", e))? {
            let (k, _) = item.map_err(|e| StoreError::db("list snapshots", e))?;
            out.push(SnapshotId(k.value()));
        }
        Ok(out)
    }

    /// Looks up a cache record.
    pub fn cache_get(&self, key: &[u8; 32]) -> Result<Option<CacheRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| StoreError::db("cache lookup", e))?;
        let t = tx.open_table(CACHE).map_err(|e| StoreError::db("cache lookup", e))?;
        match t.get(key).map_err(|e| StoreError::db("cache lookup", e))? {
            Some(v) => Ok(Some(decode("cache record", v.value())?)),
            None => Ok(None),
        }
    }

    /// Number of cache records.
    pub fn cache_len(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| StoreError::db("cache count", e))?;
        let t = tx.open_table(CACHE).map_err(|e| StoreError::db("cache count", e))?;
        t.len().map_err(|e| StoreError::db("cache count", e))
    }

    /// Whether commits since the last flush wait to be made durable.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Makes every earlier commit durable (one fsync of the database),
    /// together with the last uses of cache records gathered since the
    /// previous flush.
    /// Nothing to do (no fsync) when nothing changed.
    pub fn flush(&self, touched: &HashMap<[u8; 32], u64>) -> Result<(), StoreError> {
        let op = "flush";
        if !self.dirty.swap(false, Ordering::AcqRel) && touched.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| StoreError::db(op, e))?;
        if !touched.is_empty() {
            let cache = tx.open_table(CACHE).map_err(|e| StoreError::db(op, e))?;
            let mut used = tx.open_table(CACHE_USED).map_err(|e| StoreError::db(op, e))?;
            for (key, at) in touched {
                // A record evicted meanwhile stays without a last use.
                if cache.get(key).map_err(|e| StoreError::db(op, e))?.is_some() {
                    used.insert(key, *at).map_err(|e| StoreError::db(op, e))?;
                }
            }
        }
        tx.commit().map_err(|e| StoreError::db(op, e))
    }

    /// Atomically records new snapshots (with the host selections they
    /// hold, if any) and a cache record. The commit is not fsynced:
    /// [`Db::flush`] makes it durable, and a crash before that rolls the
    /// database back to the last flush as a whole.
    pub fn commit(
        &self,
        snapshots: &[(SnapshotId, SnapshotRecord, Option<[u8; 32]>)],
        cache: Option<(&[u8; 32], &CacheRecord)>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| StoreError::db("record result", e))?;
        tx.set_durability(redb::Durability::None).map_err(|e| StoreError::Db {
            op: "record result",
            message: e.to_string(),
        })?;
        {
            let mut t = tx
                .open_table(SNAPSHOTS)
                .map_err(|e| StoreError::db("record result", e))?;
            let mut content = tx
                .open_table(HOST_CONTENT)
                .map_err(|e| StoreError::db("record result", e))?;
            for (id, rec, holds) in snapshots {
                t.insert(id.0, encode(rec).as_slice())
                    .map_err(|e| StoreError::db("record result", e))?;
                if let Some(digest) = holds {
                    content
                        .insert(digest, id.0)
                        .map_err(|e| StoreError::db("record result", e))?;
                }
            }
            if let Some((key, rec)) = cache {
                let mut c = tx.open_table(CACHE).map_err(|e| StoreError::db("record result", e))?;
                c.insert(key, encode(rec).as_slice())
                    .map_err(|e| StoreError::db("record result", e))?;
                let mut used = tx
                    .open_table(CACHE_USED)
                    .map_err(|e| StoreError::db("record result", e))?;
                used.insert(key, crate::now_micros())
                    .map_err(|e| StoreError::db("record result", e))?;
                let mut evicted = tx.open_table(EVICTED).map_err(|e| StoreError::db("record result", e))?;
                evicted.remove(key).map_err(|e| StoreError::db("record result", e))?;
            }
        }
        tx.commit().map_err(|e| StoreError::db("record result", e))?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Stores API objects (ID targets, node definitions) by key. These are
    /// committed without an fsync: the next durable commit persists them,
    /// and a crash before that loses only IDs nobody can have stored yet.
    pub fn put_objects(&self, objects: &[([u8; 32], Vec<u8>)]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| StoreError::db("store objects", e))?;
        tx.set_durability(redb::Durability::None).map_err(|e| StoreError::Db {
            op: "store objects",
            message: e.to_string(),
        })?;
        {
            let mut t = tx.open_table(OBJECTS).map_err(|e| StoreError::db("store objects", e))?;
            for (key, bytes) in objects {
                t.insert(key, bytes.as_slice())
                    .map_err(|e| StoreError::db("store objects", e))?;
            }
        }
        tx.commit().map_err(|e| StoreError::db("store objects", e))?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Loads an API object stored with [`Db::put_objects`].
    pub fn get_object(&self, key: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| StoreError::db("load object", e))?;
        let t = tx.open_table(OBJECTS).map_err(|e| StoreError::db("load object", e))?;
        Ok(t.get(key)
            .map_err(|e| StoreError::db("load object", e))?
            .map(|v| v.value().to_vec()))
    }
}

impl Db {
    /// Every snapshot record.
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, SnapshotRecord)>, StoreError> {
        let op = "list snapshots";
        let tx = self.db.begin_read().map_err(|e| StoreError::db(op, e))?;
        let t = tx.open_table(SNAPSHOTS).map_err(|e| StoreError::db(op, e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| StoreError::db(op, e))? {
            let (k, v) = item.map_err(|e| StoreError::db(op, e))?;
            out.push((SnapshotId(k.value()), decode("snapshot record", v.value())?));
        }
        Ok(out)
    }

    /// Every cache record with its last use.
    pub fn cache_entries(&self) -> Result<Vec<CacheEntry>, StoreError> {
        let op = "list cache records";
        let tx = self.db.begin_read().map_err(|e| StoreError::db(op, e))?;
        let t = tx.open_table(CACHE).map_err(|e| StoreError::db(op, e))?;
        let used = tx.open_table(CACHE_USED).map_err(|e| StoreError::db(op, e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| StoreError::db(op, e))? {
            let (k, v) = item.map_err(|e| StoreError::db(op, e))?;
            let key = *k.value();
            let record: CacheRecord = decode("cache record", v.value())?;
            let last_used = used
                .get(&key)
                .map_err(|e| StoreError::db(op, e))?
                .map(|u| u.value())
                .unwrap_or(record.created.saturating_mul(1_000_000));
            out.push(CacheEntry { key, record, last_used });
        }
        Ok(out)
    }

    /// Stores measured layer sizes.
    pub(crate) fn set_sizes(&self, sizes: &[(SnapshotId, u64)]) -> Result<(), StoreError> {
        let op = "record snapshot sizes";
        let mut tx = self.db.begin_write().map_err(|e| StoreError::db(op, e))?;
        tx.set_durability(redb::Durability::None).map_err(|e| StoreError::Db {
            op,
            message: e.to_string(),
        })?;
        {
            let mut t = tx.open_table(SNAPSHOTS).map_err(|e| StoreError::db(op, e))?;
            for (id, size) in sizes {
                let current = t
                    .get(id.0)
                    .map_err(|e| StoreError::db(op, e))?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = current {
                    let mut rec: SnapshotRecord = decode("snapshot record", &bytes)?;
                    rec.size = Some(*size);
                    t.insert(id.0, encode(&rec).as_slice())
                        .map_err(|e| StoreError::db(op, e))?;
                }
            }
        }
        tx.commit().map_err(|e| StoreError::db(op, e))?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// The snapshot holding exactly the host selection with this digest.
    pub fn host_content(&self, digest: &[u8; 32]) -> Result<Option<SnapshotId>, StoreError> {
        let op = "host content lookup";
        let tx = self.db.begin_read().map_err(|e| StoreError::db(op, e))?;
        let t = tx.open_table(HOST_CONTENT).map_err(|e| StoreError::db(op, e))?;
        Ok(t.get(digest)
            .map_err(|e| StoreError::db(op, e))?
            .map(|v| SnapshotId(v.value())))
    }

    /// When garbage collection evicted the record of `key` (seconds since
    /// the epoch), if it did and nothing recorded it again since.
    pub fn evicted_at(&self, key: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let op = "eviction lookup";
        let tx = self.db.begin_read().map_err(|e| StoreError::db(op, e))?;
        let t = tx.open_table(EVICTED).map_err(|e| StoreError::db(op, e))?;
        Ok(t.get(key).map_err(|e| StoreError::db(op, e))?.map(|v| v.value()))
    }

    /// Deletes evicted records and snapshots, durably: their files are
    /// removed only after this returns, so that no record ever points at
    /// deleted data, even after a crash.
    pub(crate) fn evict(&self, eviction: &Eviction) -> Result<(), StoreError> {
        let op = "evict";
        let tx = self.db.begin_write().map_err(|e| StoreError::db(op, e))?;
        {
            let mut cache = tx.open_table(CACHE).map_err(|e| StoreError::db(op, e))?;
            let mut used = tx.open_table(CACHE_USED).map_err(|e| StoreError::db(op, e))?;
            let mut evicted = tx.open_table(EVICTED).map_err(|e| StoreError::db(op, e))?;
            for key in &eviction.records {
                cache.remove(key).map_err(|e| StoreError::db(op, e))?;
                used.remove(key).map_err(|e| StoreError::db(op, e))?;
                evicted.insert(key, eviction.at).map_err(|e| StoreError::db(op, e))?;
            }
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(|e| StoreError::db(op, e))?;
            for id in &eviction.snapshots {
                snapshots.remove(id.0).map_err(|e| StoreError::db(op, e))?;
            }
            if !eviction.snapshots.is_empty() {
                let gone: std::collections::HashSet<u64> = eviction.snapshots.iter().map(|s| s.0).collect();
                let mut content = tx.open_table(HOST_CONTENT).map_err(|e| StoreError::db(op, e))?;
                content
                    .retain(|_, id| !gone.contains(&id))
                    .map_err(|e| StoreError::db(op, e))?;
            }
            let mut counters = tx.open_table(COUNTERS).map_err(|e| StoreError::db(op, e))?;
            let high = counters
                .get(SNAPSHOT_HIGH_WATER)
                .map_err(|e| StoreError::db(op, e))?
                .map(|v| v.value())
                .unwrap_or(0);
            counters
                .insert(SNAPSHOT_HIGH_WATER, high.max(eviction.high_water))
                .map_err(|e| StoreError::db(op, e))?;
        }
        tx.commit().map_err(|e| StoreError::db(op, e))
    }
}

//! The metadata database (redb): snapshot records, cache records and
//! counters. redb commits are atomic, so a killed process leaves either the
//! old or the new state, never a mix.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::snapshots::SnapshotId;

const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
const CACHE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("cache");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const OBJECTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("objects");

/// What the db knows about one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshot this one is a diff on top of.
    pub parent: Option<SnapshotId>,
    /// Number of layers in the chain, this one included.
    pub depth: u32,
    /// When it was committed (seconds since the epoch).
    pub created: u64,
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

/// The metadata database of a state dir.
pub struct Db {
    db: Database,
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
        let tx = db.begin_write().map_err(|e| StoreError::db("open", e))?;
        {
            tx.open_table(SNAPSHOTS).map_err(|e| StoreError::db("open", e))?;
            tx.open_table(CACHE).map_err(|e| StoreError::db("open", e))?;
            tx.open_table(COUNTERS).map_err(|e| StoreError::db("open", e))?;
            tx.open_table(OBJECTS).map_err(|e| StoreError::db("open", e))?;
        }
        tx.commit().map_err(|e| StoreError::db("open", e))?;
        Ok(Self { db })
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

    /// Makes every earlier commit durable (one fsync of the database).
    pub fn flush(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| StoreError::db("flush", e))?;
        tx.commit().map_err(|e| StoreError::db("flush", e))
    }

    /// Atomically records new snapshots and a cache record. The commit is
    /// not fsynced: [`Db::flush`] makes it durable, and a crash before that
    /// rolls the database back to the last flush as a whole.
    pub fn commit(
        &self,
        snapshots: &[(SnapshotId, SnapshotRecord)],
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
            for (id, rec) in snapshots {
                t.insert(id.0, encode(rec).as_slice())
                    .map_err(|e| StoreError::db("record result", e))?;
            }
            if let Some((key, rec)) = cache {
                let mut c = tx.open_table(CACHE).map_err(|e| StoreError::db("record result", e))?;
                c.insert(key, encode(rec).as_slice())
                    .map_err(|e| StoreError::db("record result", e))?;
            }
        }
        tx.commit().map_err(|e| StoreError::db("record result", e))
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
        tx.commit().map_err(|e| StoreError::db("store objects", e))
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

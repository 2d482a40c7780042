//! Garbage collection under a disk budget.
//!
//! What can go: cache records (least recently used first), snapshots (a
//! snapshot stays while a cache record lists it as an output or a child
//! snapshot is stacked on it), blobs (exec output stays while its record
//! does; image blobs are only a download cache: they can be fetched or
//! imported again) and host stat caches. Never what running sessions pinned
//! (with everything below it), never more than needed to get under the
//! target.
//!
//! A pass decides under the pin lock, deletes the database records durably,
//! and only then deletes the files, so that no record ever points at
//! deleted data, even after a crash.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bytesize::{InvalidSize, format_size, parse_size};
use crate::db::{CacheEntry, Eviction, SnapshotRecord};
use crate::digest::Digest;
use crate::pins::PinSet;
use crate::snapshots::SnapshotId;
use crate::usage::{CacheFile, list_blobs, list_files};
use crate::{Store, StoreError, now_micros, now_secs};

/// Blobs no cache record refers to (image layers, manifests) stay this long
/// after they were written, whatever the budget: an image pull in progress
/// may be about to unpack them.
pub const BLOB_GRACE: Duration = Duration::from_secs(600);

/// Automatic collection evicts down to this share of the budget, so that
/// it does not run again on the very next commit.
const LOW_WATER_PERCENT: u64 = 90;

/// After a pass that could not get under the budget (everything left is in
/// use), automatic collection waits this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// How much the cache may keep (`gc.keep_storage`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepStorage {
    /// A fixed number of bytes.
    Bytes(u64),
    /// A percentage of the space available to the cache: the free space of
    /// the state directory's filesystem plus what the cache holds already.
    Percent(f64),
}

impl Default for KeepStorage {
    /// A quarter of the space available to the cache.
    fn default() -> Self {
        KeepStorage::Percent(25.0)
    }
}

impl FromStr for KeepStorage {
    type Err = InvalidSize;

    /// `10GB`, `512MiB`, or `20%`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok(KeepStorage::Percent(p)),
                _ => Err(InvalidSize(s.to_string())),
            },
            None => parse_size(s).map(KeepStorage::Bytes),
        }
    }
}

impl fmt::Display for KeepStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepStorage::Bytes(b) => f.write_str(&format_size(*b)),
            KeepStorage::Percent(p) => write!(f, "{p}% of the available disk"),
        }
    }
}

impl KeepStorage {
    /// The budget in bytes, for a cache of `used` bytes in `state_dir`.
    pub fn bytes(&self, state_dir: &Path, used: u64) -> u64 {
        match self {
            KeepStorage::Bytes(b) => *b,
            KeepStorage::Percent(_) => self.of(free_space(state_dir).unwrap_or(0), used),
        }
    }

    /// The budget in bytes, for a cache of `used` bytes with `free` bytes
    /// free beside it.
    fn of(&self, free: u64, used: u64) -> u64 {
        match self {
            KeepStorage::Bytes(b) => *b,
            KeepStorage::Percent(p) => ((free.saturating_add(used)) as f64 * p / 100.0) as u64,
        }
    }
}

/// Bytes free for unprivileged writes on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    rustix::fs::statvfs(path)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .ok()
}

/// What a collection pass aims for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcTarget {
    /// Evict least recently used data until the cache holds at most this
    /// many bytes.
    Keep(u64),
    /// Evict everything not used since this time (seconds since the epoch).
    UnusedSince(u64),
    /// Evict everything not in use.
    All,
}

/// A cache record a pass evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictedRecord {
    /// The op that produced it.
    pub description: String,
    /// Its last use (microseconds since the epoch).
    pub last_used: u64,
}

/// What a collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Bytes the cache held before.
    pub before: u64,
    /// Bytes it holds after.
    pub after: u64,
    /// Evicted cache records, least recently used first.
    pub records: Vec<EvictedRecord>,
    /// Snapshots deleted.
    pub snapshots: usize,
    /// Blobs deleted.
    pub blobs: usize,
    /// Host stat caches deleted.
    pub stat_caches: usize,
    /// Cache records kept because a running session uses them.
    pub in_use: usize,
}

impl GcReport {
    /// Whether the pass removed nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.snapshots == 0 && self.blobs == 0 && self.stat_caches == 0
    }
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "evicted {} cache records, {} snapshots, {} blobs, {} host stat caches: freed {} (cache {} -> {})",
            self.records.len(),
            self.snapshots,
            self.blobs,
            self.stat_caches,
            format_size(self.before.saturating_sub(self.after)),
            format_size(self.before),
            format_size(self.after),
        )?;
        if self.in_use > 0 {
            write!(f, "; {} records kept in use by running sessions", self.in_use)?;
        }
        Ok(())
    }
}

/// Automatic collection state of a store.
#[derive(Debug, Default)]
pub(crate) struct AutoGc {
    /// The budget (`None`: no automatic collection).
    pub keep: Option<KeepStorage>,
    /// Bytes the cache holds, as of the last measure plus what was added.
    pub estimate: Option<u64>,
    /// When a pass last failed to get under the budget.
    pub stuck_since: Option<Instant>,
}

/// The key prefix of the records of flattened layers (see `Store::mount_layers`).
const FLATTEN_PREFIX: &[u8] = b"flatten:";

/// The snapshot a flatten record was made from.
fn flattened_from(key: &[u8; 32]) -> Option<SnapshotId> {
    key.starts_with(FLATTEN_PREFIX)
        .then(|| SnapshotId(u64::from_le_bytes(key[8..16].try_into().expect("8 bytes"))))
}

/// The blobs a record's metadata names (any `sha256:` digest string in it).
fn blob_refs(meta: &serde_json::Value, out: &mut Vec<Digest>) {
    match meta {
        serde_json::Value::String(s) if s.starts_with("sha256:") => out.extend(s.parse::<Digest>().ok()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| blob_refs(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| blob_refs(v, out)),
        _ => {}
    }
}

/// One thing a pass may evict, with its last use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Record(usize),
    Snapshot(SnapshotId),
    Blob(Digest),
    StatCache(usize),
}

/// Everything a pass decides.
#[derive(Debug, Default)]
struct Plan {
    eviction: Eviction,
    records: Vec<EvictedRecord>,
    blobs: Vec<Digest>,
    stat_caches: Vec<PathBuf>,
    before: u64,
    after: u64,
    in_use: usize,
}

/// The inputs of a plan.
struct State<'a> {
    snapshots: HashMap<SnapshotId, SnapshotRecord>,
    records: &'a [CacheEntry],
    blobs: &'a HashMap<Digest, CacheFile>,
    stat_caches: &'a [CacheFile],
}

/// Decides what to evict (pure: no I/O).
fn plan(state: &State<'_>, pins: &PinSet, target: GcTarget, now_us: u64) -> Plan {
    let outputs = |i: usize| state.records[i].record.outputs.iter().flatten().copied();
    let mut snap_refs: HashMap<SnapshotId, u32> = HashMap::new();
    for rec in state.snapshots.values() {
        if let Some(p) = rec.parent {
            *snap_refs.entry(p).or_default() += 1;
        }
    }
    let mut record_blobs = Vec::with_capacity(state.records.len());
    let mut blob_count: HashMap<Digest, u32> = HashMap::new();
    let mut flatten_of: HashMap<SnapshotId, usize> = HashMap::new();
    for (i, r) in state.records.iter().enumerate() {
        for o in outputs(i) {
            *snap_refs.entry(o).or_default() += 1;
        }
        let mut blobs = Vec::new();
        blob_refs(&r.record.meta, &mut blobs);
        blobs.sort();
        blobs.dedup();
        for d in &blobs {
            *blob_count.entry(*d).or_default() += 1;
        }
        record_blobs.push(blobs);
        if let Some(src) = flattened_from(&r.key) {
            flatten_of.insert(src, i);
        }
    }

    // What running sessions use: pinned records, pinned snapshots, their
    // chains, and the flattened copies of those chains.
    let mut protected_records: HashSet<usize> = (0..state.records.len())
        .filter(|&i| pins.has_key(&state.records[i].key))
        .collect();
    let mut kept: HashSet<SnapshotId> = HashSet::new();
    let mut stack: Vec<SnapshotId> = protected_records.iter().flat_map(|&i| outputs(i)).collect();
    stack.extend(pins.snapshots());
    while let Some(id) = stack.pop() {
        if !kept.insert(id) {
            continue;
        }
        if let Some(parent) = state.snapshots.get(&id).and_then(|r| r.parent) {
            stack.push(parent);
        }
        if let Some(&f) = flatten_of.get(&id)
            && protected_records.insert(f)
        {
            stack.extend(outputs(f));
        }
    }

    let cutoff = GRACE_MICROS;
    let mut items: Vec<(u64, Item)> = Vec::new();
    for (i, r) in state.records.iter().enumerate() {
        if !protected_records.contains(&i) {
            items.push((r.last_used, Item::Record(i)));
        }
    }
    for (id, rec) in &state.snapshots {
        if snap_refs.get(id).copied().unwrap_or(0) == 0 && !kept.contains(id) {
            items.push((rec.created.saturating_mul(1_000_000), Item::Snapshot(*id)));
        }
    }
    for (d, f) in state.blobs {
        let young = target != GcTarget::All && f.modified.saturating_add(cutoff) > now_us;
        if !blob_count.contains_key(d) && !young {
            items.push((f.modified, Item::Blob(*d)));
        }
    }
    for (i, f) in state.stat_caches.iter().enumerate() {
        items.push((f.modified, Item::StatCache(i)));
    }
    items.sort();

    let snapshot_bytes: u64 = state.snapshots.values().map(|r| r.size.unwrap_or(0)).sum();
    let blob_bytes: u64 = state.blobs.values().map(|f| f.bytes).sum();
    let stat_bytes: u64 = state.stat_caches.iter().map(|f| f.bytes).sum();
    let mut p = Plan {
        before: snapshot_bytes + blob_bytes + stat_bytes,
        in_use: protected_records.len(),
        ..Plan::default()
    };
    p.after = p.before;
    let mut evicted_records = vec![false; state.records.len()];
    let mut deleted: HashSet<SnapshotId> = HashSet::new();
    let mut removed_blobs: HashSet<Digest> = HashSet::new();

    for (time, item) in items {
        match target {
            GcTarget::Keep(bytes) if p.after <= bytes => break,
            GcTarget::UnusedSince(secs) if time >= secs.saturating_mul(1_000_000) => break,
            _ => {}
        }
        // Work list of records to evict and snapshots released.
        let mut records_todo: Vec<usize> = Vec::new();
        let mut released: Vec<SnapshotId> = Vec::new();
        match item {
            Item::Record(i) => records_todo.push(i),
            Item::Snapshot(id) => released.push(id),
            Item::Blob(d) => {
                if removed_blobs.insert(d) {
                    p.after -= state.blobs[&d].bytes;
                    p.blobs.push(d);
                }
            }
            Item::StatCache(i) => {
                p.after -= state.stat_caches[i].bytes;
                p.stat_caches.push(state.stat_caches[i].path.clone());
            }
        }
        loop {
            if let Some(i) = records_todo.pop() {
                if std::mem::replace(&mut evicted_records[i], true) {
                    continue;
                }
                let r = &state.records[i];
                p.eviction.records.push(r.key);
                p.records.push(EvictedRecord {
                    description: r.record.description.clone(),
                    last_used: r.last_used,
                });
                for o in outputs(i) {
                    let n = snap_refs.entry(o).or_default();
                    *n = n.saturating_sub(1);
                    released.push(o);
                }
                for d in &record_blobs[i] {
                    let n = blob_count.entry(*d).or_default();
                    *n = n.saturating_sub(1);
                    if *n == 0
                        && let Some(f) = state.blobs.get(d)
                        && removed_blobs.insert(*d)
                    {
                        p.after -= f.bytes;
                        p.blobs.push(*d);
                    }
                }
            } else if let Some(id) = released.pop() {
                let unreferenced = snap_refs.get(&id).copied().unwrap_or(0) == 0;
                if !unreferenced || kept.contains(&id) || !state.snapshots.contains_key(&id) || !deleted.insert(id) {
                    continue;
                }
                let rec = &state.snapshots[&id];
                p.after -= rec.size.unwrap_or(0);
                p.eviction.snapshots.push(id);
                if let Some(&f) = flatten_of.get(&id) {
                    records_todo.push(f);
                }
                if let Some(parent) = rec.parent {
                    let n = snap_refs.entry(parent).or_default();
                    *n = n.saturating_sub(1);
                    released.push(parent);
                }
            } else {
                break;
            }
        }
    }
    p
}

/// Microseconds of [`BLOB_GRACE`].
const GRACE_MICROS: u64 = BLOB_GRACE.as_micros() as u64;

impl Store {
    /// Sets the budget of automatic collection (`None`: never collect
    /// automatically). After a commit takes the cache over the budget, a
    /// pass evicts least recently used data down to 90% of it.
    pub fn set_keep_storage(&self, keep: Option<KeepStorage>) {
        self.auto_gc.lock().expect("gc lock").keep = keep;
    }

    /// The budget of automatic collection.
    pub fn keep_storage(&self) -> Option<KeepStorage> {
        self.auto_gc.lock().expect("gc lock").keep
    }

    /// Runs one collection pass now (files deleted before it returns).
    pub fn gc(&self, target: GcTarget) -> Result<GcReport, StoreError> {
        let _serialized = self.auto_gc.lock().expect("gc lock");
        self.collect(target, false)
    }

    /// Called after a commit added `added` bytes of layers: collects when
    /// the cache is over its budget. Never waits for a pass in progress.
    pub(crate) fn collect_if_over_budget(&self, added: u64) {
        let Ok(mut auto) = self.auto_gc.try_lock() else { return };
        let Some(keep) = auto.keep else { return };
        let written = self.blobs().take_written();
        let estimate = match auto.estimate {
            Some(e) => e + added + written,
            None => match self.usage() {
                Ok(u) => u.cache_bytes(),
                Err(e) => {
                    tracing::warn!("measuring the cache for garbage collection: {e}");
                    return;
                }
            },
        };
        auto.estimate = Some(estimate);
        let budget = keep.bytes(self.root(), estimate);
        if estimate <= budget || auto.stuck_since.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
            return;
        }
        match self.collect(GcTarget::Keep(budget / 100 * LOW_WATER_PERCENT), true) {
            Ok(report) => {
                tracing::info!(budget = %crate::bytesize::format_size(budget), "garbage collection: {report}");
                for r in &report.records {
                    tracing::debug!(op = %r.description, "evicted");
                }
                auto.stuck_since = (report.after > budget).then(Instant::now);
                auto.estimate = Some(report.after);
            }
            Err(e) => tracing::warn!("garbage collection failed: {e}"),
        }
    }

    /// One pass. With `background`, evicted layers are deleted by a
    /// detached thread (they are unreachable already).
    fn collect(&self, target: GcTarget, background: bool) -> Result<GcReport, StoreError> {
        self.measure_unsized()?;
        let blob_dir = self.blob_dir();
        let blobs = list_blobs(&blob_dir).map_err(StoreError::io(&blob_dir))?;
        let stat_dir = self.stat_cache_dir();
        let stat_caches = list_files(&stat_dir).map_err(StoreError::io(&stat_dir))?;

        let plan = {
            let pins = self.pins.lock();
            let mut records = self.db().cache_entries()?;
            {
                let touched = self.durable.touched.lock().expect("touched lock");
                for r in &mut records {
                    if let Some(&t) = touched.get(&r.key) {
                        r.last_used = r.last_used.max(t);
                    }
                }
            }
            let state = State {
                snapshots: self.db().snapshots()?.into_iter().collect(),
                records: &records,
                blobs: &blobs,
                stat_caches: &stat_caches,
            };
            let mut plan = plan(&state, &pins, target, now_micros());
            if !plan.eviction.records.is_empty() || !plan.eviction.snapshots.is_empty() {
                plan.eviction.high_water = self.high_water();
                plan.eviction.at = now_secs();
                self.db().evict(&plan.eviction)?;
                self.forget(&plan.eviction);
            }
            plan
        };

        self.delete_layers(&plan.eviction.snapshots, background)?;
        for d in &plan.blobs {
            self.blobs().remove(d)?;
        }
        for path in &plan.stat_caches {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(StoreError::io(path)(e));
            }
        }
        Ok(GcReport {
            before: plan.before,
            after: plan.after,
            records: plan.records,
            snapshots: plan.eviction.snapshots.len(),
            blobs: plan.blobs.len(),
            stat_caches: plan.stat_caches.len(),
            in_use: plan.in_use,
        })
    }

    /// Moves evicted layers out of `s/` (one rename each), then deletes them.
    fn delete_layers(&self, ids: &[SnapshotId], background: bool) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        static PASS: AtomicU64 = AtomicU64::new(0);
        let trash = self
            .root()
            .join("tmp")
            .join(format!("gc-{}", PASS.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&trash).map_err(StoreError::io(&trash))?;
        for id in ids {
            let from = self.layer_dir(*id);
            match fs::rename(&from, trash.join(id.to_string())) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(StoreError::io(&from)(e)),
                _ => {}
            }
        }
        // Whatever is left in tmp/ when the process stops, the next open removes.
        if background {
            std::thread::spawn(move || {
                let _ = fs::remove_dir_all(&trash);
            });
            Ok(())
        } else {
            fs::remove_dir_all(&trash).map_err(StoreError::io(&trash))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::CacheRecord;

    fn snap(parent: Option<u64>, size: u64, created: u64) -> SnapshotRecord {
        SnapshotRecord {
            parent: parent.map(SnapshotId),
            depth: 1,
            created,
            size: Some(size),
        }
    }

    fn record(key: u8, outputs: &[u64], last_used: u64, meta: serde_json::Value) -> CacheEntry {
        CacheEntry {
            key: [key; 32],
            record: CacheRecord {
                outputs: outputs.iter().map(|o| Some(SnapshotId(*o))).collect(),
                meta,
                description: format!("op {key}"),
                created: 0,
                duration_ms: 0,
            },
            last_used,
        }
    }

    #[test]
    fn keeps_parents_of_surviving_children_and_frees_exec_output_with_its_record() {
        let out = Digest::of(b"stdout");
        let snapshots: HashMap<_, _> = [
            (SnapshotId(1), snap(None, 100, 1)),
            (SnapshotId(2), snap(Some(1), 10, 2)),
        ]
        .into_iter()
        .collect();
        let records = vec![
            record(1, &[1], 10, serde_json::Value::Null),
            record(
                2,
                &[2],
                20,
                serde_json::json!({ "exec": { "stdout": out.to_string() } }),
            ),
        ];
        let blobs: HashMap<_, _> = [(
            out,
            CacheFile {
                path: "x".into(),
                bytes: 5,
                modified: 0,
            },
        )]
        .into_iter()
        .collect();
        let state = State {
            snapshots,
            records: &records,
            blobs: &blobs,
            stat_caches: &[],
        };
        // With the newer record in use, the older one goes but frees
        // nothing: its layer is the parent of the newer record's layer.
        let pins = crate::pins::Pins::default();
        let guard = pins.pin_locked(&mut pins.lock(), &[[2; 32]], &[]);
        let p = plan(&state, &pins.lock(), GcTarget::Keep(0), 0);
        assert_eq!(p.eviction.records, vec![[1; 32]]);
        assert!(p.eviction.snapshots.is_empty() && p.blobs.is_empty());
        assert_eq!((p.after, p.in_use), (115, 1));
        drop(guard);
        // Unpinned, both go, with the chain and the exec's output blob.
        let pins = PinSet::default();
        let p = plan(&state, &pins, GcTarget::Keep(0), 0);
        assert_eq!(p.eviction.records, vec![[1; 32], [2; 32]]);
        let mut gone = p.eviction.snapshots.clone();
        gone.sort();
        assert_eq!(gone, vec![SnapshotId(1), SnapshotId(2)]);
        assert_eq!(p.blobs, vec![out]);
        assert_eq!(p.after, 0);
    }

    #[test]
    fn young_unreferenced_blobs_wait_for_their_grace_period() {
        let d = Digest::of(b"layer");
        let blobs: HashMap<_, _> = [(
            d,
            CacheFile {
                path: "x".into(),
                bytes: 5,
                modified: 1_000,
            },
        )]
        .into_iter()
        .collect();
        let state = State {
            snapshots: HashMap::new(),
            records: &[],
            blobs: &blobs,
            stat_caches: &[],
        };
        let pins = PinSet::default();
        assert!(plan(&state, &pins, GcTarget::Keep(0), 2_000).blobs.is_empty());
        assert_eq!(
            plan(&state, &pins, GcTarget::Keep(0), 1_000 + GRACE_MICROS).blobs,
            vec![d]
        );
        assert_eq!(plan(&state, &pins, GcTarget::All, 2_000).blobs, vec![d]);
    }

    #[test]
    fn keep_storage_reads_sizes_and_percentages() {
        assert_eq!(
            "10GB".parse::<KeepStorage>().unwrap(),
            KeepStorage::Bytes(10_000_000_000)
        );
        assert_eq!("20%".parse::<KeepStorage>().unwrap(), KeepStorage::Percent(20.0));
        assert!("120%".parse::<KeepStorage>().is_err());
        // Of the disk available to the cache: free space plus what it holds
        // (fixed here: the real free space moves while other tests write).
        assert_eq!(KeepStorage::Percent(50.0).of(3000, 1000), 2000);
        assert_eq!(KeepStorage::Percent(100.0).of(0, 1000), 1000);
        assert_eq!(KeepStorage::Bytes(7).of(3000, 1000), 7);
        let t = tempfile::tempdir().unwrap();
        assert!(KeepStorage::Percent(100.0).bytes(t.path(), 1000) >= 1000);
    }
}

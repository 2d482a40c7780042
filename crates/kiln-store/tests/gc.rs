//! Garbage collection of a real state directory: least recently used
//! first, down to the target, never what is pinned.

use std::fs;

use kiln_store::{CacheRecord, GcTarget, KeepStorage, SnapshotId, Store, StoreError};

/// Commits a record for op `n` whose output is a new layer holding `bytes`
/// bytes (on top of `parent`); returns its key and layer.
fn record(store: &Store, n: u8, bytes: usize, parent: Option<SnapshotId>) -> ([u8; 32], SnapshotId) {
    let staged = store.stage(parent).unwrap();
    fs::write(staged.diff().join(format!("data{n}")), vec![n; bytes]).unwrap();
    let id = staged.id();
    let key = [n; 32];
    let rec = CacheRecord {
        outputs: vec![Some(id)],
        meta: serde_json::Value::Null,
        description: format!("op {n}"),
        created: kiln_store::now_secs(),
        duration_ms: 1,
    };
    store.commit(vec![staged], Some((&key, &rec))).unwrap();
    (key, id)
}

fn size_of(store: &Store, id: SnapshotId) -> u64 {
    store.record(id).unwrap().size.expect("committed layers have a size")
}

fn descriptions(report: &kiln_store::GcReport) -> Vec<&str> {
    report.records.iter().map(|r| r.description.as_str()).collect()
}

#[test]
fn evicts_least_recently_used_records_down_to_the_target() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let made: Vec<_> = (0..5).map(|n| record(&store, n, 64 << 10, None)).collect();
    // Op 0 is used again: it becomes the most recently used.
    assert!(store.cache_get(&made[0].0).unwrap().is_some());

    let total = store.usage().unwrap().cache_bytes();
    let target = total - size_of(&store, made[1].1) - size_of(&store, made[2].1);
    let report = store.gc(GcTarget::Keep(target)).unwrap();
    assert_eq!(descriptions(&report), ["op 1", "op 2"]);
    assert_eq!((report.snapshots, report.before, report.after), (2, total, target));
    for (n, (key, id)) in made.iter().enumerate() {
        let kept = ![1, 2].contains(&n);
        assert_eq!(store.db().cache_get(key).unwrap().is_some(), kept, "record {n}");
        assert_eq!(store.layer_dir(*id).exists(), kept, "layer {n}");
    }
    assert_eq!(store.usage().unwrap().cache_bytes(), target);
    assert!(store.db().evicted_at(&made[1].0).unwrap().is_some());
    assert!(store.db().evicted_at(&made[0].0).unwrap().is_none());
}

#[test]
fn pinned_records_and_their_chains_survive_even_a_full_prune() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let (_, base) = record(&store, 1, 4096, None);
    let (top_key, top) = record(&store, 2, 4096, Some(base));
    let (other_key, other) = record(&store, 3, 4096, None);

    let pin = store.pin_keys(&[top_key]);
    let report = store.gc(GcTarget::All).unwrap();
    assert_eq!(descriptions(&report), ["op 1", "op 3"]);
    assert_eq!(report.in_use, 1);
    assert!(
        store.layer_dir(top).exists() && store.layer_dir(base).exists(),
        "the pinned chain"
    );
    assert!(!store.layer_dir(other).exists());
    assert!(store.db().cache_get(&other_key).unwrap().is_none());

    drop(pin);
    let report = store.gc(GcTarget::All).unwrap();
    assert_eq!(descriptions(&report), ["op 2"]);
    assert_eq!(report.snapshots, 2);
    assert_eq!(store.usage().unwrap().snapshots, 0);
}

#[test]
fn a_pin_taken_before_a_lookup_protects_what_the_lookup_finds_or_nothing_is_found() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let (key, id) = record(&store, 1, 4096, None);
    let pin = store.pin_keys(&[key]);
    store.gc(GcTarget::All).unwrap();
    let found = store.cache_get(&key).unwrap().expect("pinned record");
    assert_eq!(found.outputs, vec![Some(id)]);
    drop(pin);
    store.gc(GcTarget::All).unwrap();
    assert!(store.cache_get(&key).unwrap().is_none());
    // Staging on an evicted parent fails cleanly.
    assert!(matches!(store.stage(Some(id)), Err(StoreError::MissingSnapshot(_))));
}

#[test]
fn automatic_collection_keeps_the_cache_under_its_budget() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let (_, first) = record(&store, 0, 64 << 10, None);
    let one = size_of(&store, first);
    store.set_keep_storage(Some(KeepStorage::Bytes(one * 7 / 2)));
    let made: Vec<_> = (1..8).map(|n| record(&store, n, 64 << 10, None)).collect();
    let usage = store.usage().unwrap().cache_bytes();
    assert!(usage <= one * 7 / 2, "{usage} bytes kept, budget {}", one * 7 / 2);
    // The newest records are kept, and not everything was evicted.
    let (last_key, _) = made.last().unwrap();
    assert!(store.db().cache_get(last_key).unwrap().is_some());
    assert!(store.db().cache_len().unwrap() >= 2);
    assert!(store.db().cache_get(&[0; 32]).unwrap().is_none());
}

#[test]
fn ids_of_evicted_snapshots_are_never_handed_out_again() {
    let t = tempfile::tempdir().unwrap();
    let newest = {
        let store = Store::open(t.path()).unwrap();
        let (_, id) = record(&store, 1, 10, None);
        store.gc(GcTarget::All).unwrap();
        id
    };
    let store = Store::open(t.path()).unwrap();
    assert!(store.stage(None).unwrap().id() > newest);
}

#[test]
fn records_unused_since_a_time_go_and_newer_ones_stay() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    record(&store, 1, 10, None);
    let none = store.gc(GcTarget::UnusedSince(0)).unwrap();
    assert!(none.is_empty());
    let all = store.gc(GcTarget::UnusedSince(kiln_store::now_secs() + 1)).unwrap();
    assert_eq!(descriptions(&all), ["op 1"]);
}

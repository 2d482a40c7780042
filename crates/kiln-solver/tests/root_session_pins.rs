//! Garbage collection never takes what a running session solved.

mod common;

use std::fs;

use common::*;
use kiln_store::GcTarget;

#[tokio::test]
async fn root_a_running_sessions_results_survive_garbage_collection() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a.txt"), "kept while in use").unwrap();
    let engine = engine(state.path());
    let node = host_dir(src.path(), &[]);

    let session = engine.session();
    let solved = session.solve(&node).await.unwrap();
    let layer = engine.store().layer_dir(solved.output(0).expect("a tree"));
    let report = engine.store().gc(GcTarget::All).unwrap();
    assert!(report.records.is_empty(), "evicted {:?}", report.records);
    assert_eq!(report.in_use, 1);
    assert!(layer.join("a.txt").exists());

    // Once the session ends, its data can go; the next session runs the
    // upload again.
    drop(session);
    let report = engine.store().gc(GcTarget::All).unwrap();
    assert_eq!(report.records.len(), 1);
    assert!(!layer.exists());
    let again = engine.session().solve(&node).await.unwrap();
    assert!(!again.cached);
}

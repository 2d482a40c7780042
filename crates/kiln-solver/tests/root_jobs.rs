//! Root-only: solves are jobs the engine owns. A request that goes away
//! leaves the work to the other sessions that wait for it, and when nobody
//! waits any more the work is cancelled: its container killed, its exec
//! slot free for the next exec.

mod common;

use std::time::Duration;

use common::{Fixture, busybox, run};
use kiln_oci::RegistryConfig;
use kiln_solver::{Engine, EngineConfig};

/// Whether a process whose command line holds `marker` is alive.
fn alive(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker)))
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_dropping_the_last_request_kills_the_container_and_frees_the_slot() {
    let Some(f) = Fixture::start().await else { return };
    // One exec at a time, so that a leaked slot would block the next exec.
    let engine = Engine::open(EngineConfig {
        state_dir: f.state.path().join("one-slot"),
        registry: RegistryConfig::default(),
        parallelism: 1,
        ..Default::default()
    })
    .unwrap();
    let base = busybox(&engine).await;
    let marker = "kiln-job-cancel-marker";
    let hang = run(&base, &format!("sleep 600; echo {marker}"));
    let request = tokio::spawn({
        let session = engine.session();
        async move { session.solve(&hang).await }
    });
    until("the container runs", || alive(marker)).await;
    request.abort();
    until("the container is killed", || !alive(marker)).await;
    let next = run(&base, "echo next");
    let session = engine.session();
    let done = tokio::time::timeout(Duration::from_secs(120), session.solve(&next)).await;
    assert!(done.expect("the exec slot was freed").is_ok());
    let stats = session.stats();
    // The next exec ran (on the cached image); the cancelled exec never
    // finished, so nothing of it was recorded.
    assert_eq!((stats.ran, stats.cached, stats.failed), (1, 1, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_work_goes_on_for_the_sessions_still_waiting() {
    let Some(f) = Fixture::start().await else { return };
    let marker = "kiln-job-shared-marker";
    let step = run(&f.base, &format!("sleep 2; echo {marker} > /out; cat /out"));
    let (a, b) = (f.engine.session(), f.engine.session());
    let b_stats = b.clone();
    let first = tokio::spawn({
        let step = step.clone();
        async move { a.solve(&step).await }
    });
    until("the container runs", || alive(marker)).await;
    let second = tokio::spawn(async move { b.solve(&step).await });
    until("the second session waits for the same work", || {
        f.engine.waiting_requests() == 2
    })
    .await;
    first.abort();
    let out = second.await.unwrap().expect("the other session got the result");
    assert!(!out.cached);
    // Both waited for one job (waiting_requests above); b is told of it.
    let stats = b_stats.stats();
    assert_eq!((stats.execs, stats.ran), (1, 1), "{stats:?}");
}

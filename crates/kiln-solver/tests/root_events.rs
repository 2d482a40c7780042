//! What the solver tells its listeners about real execs: their output as it
//! arrives (scrubbed of secrets), where it is kept, how they ended, and the
//! inputs and image they build on.

mod common;

use common::{busybox, engine, require_root, run};
use kiln_solver::{Engine, Event, EventKind, ExecMeta, Stream};
use tokio::sync::broadcast;

fn drain(events: &mut broadcast::Receiver<std::sync::Arc<Event>>) -> Vec<Event> {
    std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| (*e).clone())
        .collect()
}

/// The output events of `events`, joined per stream.
fn live(events: &[Event], stream: Stream) -> String {
    events
        .iter()
        .filter_map(|ev| match &ev.kind {
            EventKind::Output { stream: s, bytes } if *s == stream => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .collect()
}

fn blob(engine: &Engine, digest: &kiln_store::Digest) -> String {
    String::from_utf8(engine.store().blobs().read(digest).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_exec_events_carry_live_output_results_and_inputs() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    engine.secrets().add("token", "hunter2-secret".into());
    let image = busybox(&engine).await;
    let step = run(&image, "echo out1; echo err1 >&2; echo token=hunter2-secret; echo out2");
    let first = engine.session();
    let mut events = first.events().subscribe();
    first.solve(&step).await.unwrap();
    let ran = drain(&mut events);

    let exec: Vec<&Event> = ran.iter().filter(|ev| ev.node == step.digest()).collect();
    assert!(matches!(exec[0].kind, EventKind::Started), "{exec:#?}");
    assert_eq!(exec[0].inputs, vec![image.digest()]);
    let layout = kiln_testkit::busybox_layout();
    assert_eq!(exec[0].image.as_deref(), layout.to_str());
    let step_events: Vec<Event> = exec.iter().map(|ev| (*ev).clone()).collect();
    assert_eq!(live(&step_events, Stream::Stdout), "out1\ntoken=***\nout2\n");
    assert_eq!(live(&step_events, Stream::Stderr), "err1\n");
    let last = exec.last().unwrap();
    let EventKind::Done { duration } = last.kind else {
        panic!("not done: {last:#?}")
    };
    let meta: &ExecMeta = last.exec.as_ref().expect("exec metadata on Done");
    assert_eq!(meta.exit_code, 0);
    assert_eq!(blob(&engine, &meta.stdout), "out1\ntoken=***\nout2\n");
    assert_eq!(blob(&engine, &meta.stderr), "err1\n");

    // A new session finds it in the cache: same output, the time it took.
    let second = engine.session();
    let mut events = second.events().subscribe();
    second.solve(&step).await.unwrap();
    let again = drain(&mut events);
    let hit = again.iter().find(|ev| ev.node == step.digest()).unwrap();
    let EventKind::Cached { duration: saved } = hit.kind else {
        panic!("not cached: {hit:#?}")
    };
    assert_eq!(saved.as_millis(), duration.as_millis());
    assert_eq!(hit.exec.as_ref(), Some(meta));
    assert!(again.iter().all(|ev| !matches!(ev.kind, EventKind::Output { .. })));

    // A failure keeps its output too.
    let failing = run(&image, "echo partial; echo bad >&2; exit 4");
    assert!(second.solve(&failing).await.is_err());
    let failed = drain(&mut events);
    let end = failed.iter().rfind(|ev| ev.node == failing.digest()).unwrap();
    let EventKind::Failed { message } = &end.kind else {
        panic!("not failed: {end:#?}")
    };
    assert!(message.contains("exit code: 4"), "{message}");
    let meta = end.exec.as_ref().expect("exec metadata on Failed");
    assert_eq!(meta.exit_code, 4);
    assert_eq!(blob(&engine, &meta.stdout), "partial\n");
    assert_eq!(blob(&engine, &meta.stderr), "bad\n");
    let stats = second.stats();
    assert!(stats.saved_ms >= saved.as_millis() as u64);
    assert_eq!((stats.cached, stats.ran, stats.failed), (2, 0, 1), "{stats:?}");
}

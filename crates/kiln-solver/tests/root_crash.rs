//! Root-only: kill -9 at any moment. A result whose operation finished is
//! durable within the flush interval, and whatever a killed engine left
//! (cgroups, runtime state, mounts, bundles in /dev/shm, partial uploads
//! and downloads in `tmp`, container processes) is gone once the next
//! engine has started, or, for a state directory never opened again, once
//! any engine has started.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::{busybox, engine, host_dir, require_root, run};
use kiln_solver::Node;
use kiln_solver::ops;
use kiln_solver::{Engine, EventKind};
use kiln_testkit::poll_until;

/// In the command line of the long-running containers of a child engine on
/// `state` (tests run at once, so each has its own).
fn marker(state: &Path) -> String {
    format!("kiln-crash-{}", state.file_name().unwrap().to_string_lossy())
}

/// A child engine running `scenario` on `state`, and the lines it prints.
struct ChildEngine {
    process: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildEngine {
    /// Starts this test binary as a child engine.
    fn spawn(scenario: &str, state: &Path, extra: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_crash_scenario", "--nocapture", "--test-threads=1"])
            .env("KILN_CRASH_SCENARIO", scenario)
            .env("KILN_CHILD_STATE", state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut process = cmd.spawn().unwrap();
        let stdout = process.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { process, lines }
    }

    /// Waits (at most two minutes) for a line holding `word`; returns what
    /// follows it on the line. (libtest prints its own text before the
    /// child's first line.)
    fn wait_for(&self, word: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    if let Some(at) = line.find(word) {
                        return line[at + word.len()..].trim().to_string();
                    }
                }
                Err(e) => panic!("the child never printed {word:?}: {e}"),
            }
        }
    }

    /// Kills the child (SIGKILL) and reaps it.
    fn kill_9(mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.process.id() as i32, libc::SIGKILL) };
        self.process.wait().unwrap();
    }
}

/// Entries of `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// What is staged in `<state>/tmp`: snapshots being written and uploads
/// or downloads in progress.
fn staged(state: &Path) -> Vec<PathBuf> {
    let tmp = state.join("tmp");
    let mut found: Vec<PathBuf> = entries(&tmp).into_iter().filter(|p| !p.ends_with("blobs")).collect();
    found.extend(entries(&tmp.join("blobs")));
    found
}

fn cgroups_of(tag: &str) -> Vec<PathBuf> {
    let prefix = format!("kiln-{tag}-");
    let mut found = Vec::new();
    for hierarchy in entries(Path::new("/sys/fs/cgroup")) {
        found.extend(
            entries(&hierarchy)
                .into_iter()
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix)),
        );
    }
    found
}

fn mounts_under(paths: &[&Path]) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| paths.iter().any(|p| l.contains(p.to_str().unwrap())))
        .map(str::to_string)
        .collect()
}

fn marked_processes(state: &Path) -> usize {
    let marker = marker(state);
    entries(Path::new("/proc"))
        .iter()
        .filter(|p| fs::read(p.join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker)))
        .count()
}

/// Asserts that nothing the killed engine (instance `tag`) left on `state`
/// survives the start of the next engine, and that this one leaves nothing
/// in /dev/shm when it closes.
fn assert_next_start_cleans(state: &Path, tag: &str) {
    let volatile = kiln_store::volatile_dir(state).0;
    {
        let engine = engine(state);
        assert_eq!(cgroups_of(tag), Vec::<PathBuf>::new(), "cgroups of the killed engine");
        let runtime: Vec<_> = entries(&volatile.join(kiln_store::RUNTIME_STATE));
        assert!(runtime.is_empty(), "runtime state left: {runtime:?}");
        let bundles: Vec<_> = entries(&volatile)
            .into_iter()
            .filter(|p| !p.ends_with("state-dir") && !p.ends_with(kiln_store::RUNTIME_STATE))
            .collect();
        assert!(bundles.is_empty(), "bundles or secrets left: {bundles:?}");
        assert_eq!(staged(state), Vec::<PathBuf>::new(), "partial work left in tmp");
        assert_eq!(mounts_under(&[state, &volatile]), Vec::<String>::new());
        assert_eq!(
            marked_processes(state),
            0,
            "a container process of the killed engine lives"
        );
        drop(engine);
    }
    assert!(!volatile.exists(), "{} left after a clean close", volatile.display());
}

/// Not a test by itself: the child engine of the tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_crash_scenario() {
    let (Ok(scenario), Some(state)) = (
        std::env::var("KILN_CRASH_SCENARIO"),
        std::env::var_os("KILN_CHILD_STATE"),
    ) else {
        return;
    };
    let state = Path::new(&state);
    let marker = marker(state);
    let engine = engine(state);
    let id = engine.runtime().container_id(0);
    println!("INSTANCE {}", id.trim_start_matches("kiln-").trim_end_matches("-0"));
    let base = busybox(&engine).await;
    match scenario.as_str() {
        "durable" => {
            let first = run(&base, "echo first > /first");
            let session = engine.session();
            let mut events = session.events().subscribe();
            let digest = first.digest();
            tokio::spawn(async move {
                while let Ok(ev) = events.recv().await {
                    if ev.node == digest && matches!(ev.kind, EventKind::Done { .. }) {
                        println!("DONE-FIRST");
                    }
                }
            });
            let hang = run(&first, &format!("sleep 600; echo {marker}"));
            let _ = session.solve(&hang).await;
        }
        "start" => {
            println!("STARTING");
            for i in 0.. {
                let _ = engine.session().solve(&run(&base, &format!("true {i}"))).await;
            }
        }
        "pull" => {
            let reference = std::env::var("KILN_CRASH_REF").unwrap();
            let session = engine.session();
            let image = session.resolve_image(&reference, None).await.unwrap();
            println!("STARTING");
            let node = Node::new(
                ops::Image {
                    reference,
                    manifest_digest: image.manifest_digest.to_string(),
                    platform: image.platform().to_string(),
                },
                vec![],
            );
            let _ = session.solve(&run(&node, &format!("sleep 600; echo {marker}"))).await;
        }
        "upload" => {
            println!("STARTING");
            let src = std::env::var("KILN_CRASH_SRC").unwrap();
            let _ = engine.session().solve(&host_dir(Path::new(&src), &[])).await;
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// Runs `check` on an engine of `state` inside a runtime.
fn with_engine<T>(state: &Path, check: impl AsyncFnOnce(&Arc<Engine>) -> T) -> T {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = engine(state);
    let out = rt.block_on(check(&engine));
    drop(engine);
    out
}

#[test]
fn root_a_result_is_durable_within_the_flush_interval_after_its_done_event() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let child = ChildEngine::spawn("durable", state.path(), &[]);
    let tag = child.wait_for("INSTANCE ");
    child.wait_for("DONE-FIRST");
    // The promise, plus a margin for the sync itself: syncfs waits for all
    // dirty data of the filesystem, which other tests may be writing.
    std::thread::sleep(kiln_store::FLUSH_INTERVAL + Duration::from_secs(4));
    child.kill_9();

    let (execs, cached) = with_engine(state.path(), async |engine| {
        let base = busybox(engine).await;
        let first = run(&base, "echo first > /first");
        let session = engine.session();
        session.solve(&first).await.unwrap();
        (session.stats().execs, session.stats().cached)
    });
    assert_eq!(execs, 0, "the step that finished before the kill ran again");
    assert!(cached >= 1);
    assert_next_start_cleans(state.path(), &tag);
}

#[test]
fn root_kill_while_containers_start_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    // Several kills at slightly different moments of a container's start.
    for delay_ms in [0, 2, 5] {
        let state = tempfile::tempdir().unwrap();
        let runtime = kiln_store::volatile_dir(state.path()).0.join(kiln_store::RUNTIME_STATE);
        let starting = || !entries(&runtime).is_empty();
        kill_when("start", state.path(), &[], ("a container starts", starting), delay_ms);
    }
}

/// Runs `scenario` in a child engine on `state`, kills it (SIGKILL)
/// `delay_ms` after `moment` first holds, and checks that the next start
/// cleans up after it.
fn kill_when(
    scenario: &str,
    state: &Path,
    extra: &[(&str, &str)],
    (what, mut moment): (&str, impl FnMut() -> bool),
    delay_ms: u64,
) {
    let child = ChildEngine::spawn(scenario, state, extra);
    let tag = child.wait_for("INSTANCE ");
    child.wait_for("STARTING");
    poll_until(what, &mut moment);
    std::thread::sleep(Duration::from_millis(delay_ms));
    child.kill_9();
    assert_next_start_cleans(state, &tag);
}

#[test]
fn root_kill_during_an_upload_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    for d in 0..40 {
        let dir = src.path().join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..500 {
            fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    let staging = || !staged(state.path()).is_empty();
    let src = [("KILN_CRASH_SRC", src.path().to_str().unwrap())];
    kill_when("upload", state.path(), &src, ("the upload is staged", staging), 0);
}

#[test]
fn root_kill_during_a_pull_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let registry = kiln_testkit::Registry::start();
    registry.push(&kiln_testkit::debian_layout(), "debian:crash");
    let state = tempfile::tempdir().unwrap();
    let reference = registry.image_ref("debian:crash");
    // A download in progress, or a layer being unpacked.
    let pulling = || !staged(state.path()).is_empty();
    let reference = [("KILN_CRASH_REF", reference.as_str())];
    kill_when("pull", state.path(), &reference, ("the pull is under way", pulling), 0);
}

#[test]
fn root_runtime_dirs_of_a_state_dir_never_opened_again_are_removed_by_any_engine() {
    if !require_root() {
        return;
    }
    let gone = tempfile::tempdir().unwrap();
    let child = ChildEngine::spawn("durable", gone.path(), &[]);
    let tag = child.wait_for("INSTANCE ");
    child.wait_for("DONE-FIRST");
    let runtime = kiln_store::volatile_dir(gone.path()).0;
    poll_until("the hanging container runs", || marked_processes(gone.path()) > 0);
    child.kill_9();
    // Checked while the state dir exists: once it is gone, any engine that
    // opens (other tests run in parallel) may remove the runtime dir.
    assert!(runtime.exists(), "the killed engine's runtime directory");
    let gone_path = gone.path().to_path_buf();
    drop(gone);
    let marked = || marked_processes(&gone_path);
    assert!(!gone_path.exists());

    // Another state directory's engine cleans up after it.
    let other = tempfile::tempdir().unwrap();
    drop(engine(other.path()));
    assert!(!runtime.exists(), "{} was not removed", runtime.display());
    assert_eq!(cgroups_of(&tag), Vec::<PathBuf>::new());
    assert_eq!(marked(), 0, "the hanging container of the killed engine lives");
}

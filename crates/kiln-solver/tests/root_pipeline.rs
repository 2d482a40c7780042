//! Root-only: pipelines through the whole engine (real images, real
//! containers, the persistent cache).

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::*;
use kiln_graph::Owner;
use kiln_solver::SolveError;
use kiln_solver::{Node, ops};

#[tokio::test]
async fn root_exec_sees_env_workdir_and_user() {
    let Some(f) = Fixture::start().await else { return };
    let mut e = exec("echo $GREETING; pwd; id -u; id -g; id -G; echo $HOME; cat /etc/os-release | grep ^ID=");
    e.env.push("GREETING=hello kiln".into());
    e.cwd = "/work/dir".into();
    e.user = "app".into();
    let node = Node::new(e, vec![f.base.output(0)]);
    assert_eq!(
        output(&f.session, &node).await,
        "hello kiln\n/work/dir\n1000\n1000\n1000 2000\n/home/app\nID=kiln-busybox\n"
    );
    let mut numeric = exec("id -u; id -g");
    numeric.user = "4242:4343".into();
    let node = Node::new(numeric, vec![f.base.output(0)]);
    assert_eq!(output(&f.session, &node).await, "4242\n4343\n");
    let mut unknown = exec("true");
    unknown.user = "nobody-here".into();
    let err = f
        .session
        .solve(&Node::new(unknown, vec![f.base.output(0)]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nobody-here"), "{err}");
}

#[tokio::test]
async fn root_failed_exec_reports_command_exit_code_and_output() {
    let Some(f) = Fixture::start().await else { return };
    let node = run(&f.base, "echo to-stdout; echo to-stderr >&2; exit 42");
    match f.session.solve(&node).await.unwrap_err() {
        SolveError::Exec {
            args,
            exit_code,
            stdout,
            stderr,
        } => {
            assert_eq!(args, ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 42"]);
            assert_eq!(exit_code, 42);
            assert_eq!(stdout, "to-stdout\n");
            assert_eq!(stderr, "to-stderr\n");
        }
        other => panic!("expected an exec error, got {other}"),
    }
    // Failures are not cached: the next attempt runs again.
    let again = f.engine.session();
    assert!(again.solve(&node).await.is_err());
    assert_eq!(again.stats().execs, 1);
}

#[tokio::test]
async fn root_file_ops_build_layers() {
    let Some(f) = Fixture::start().await else { return };
    let with_file = Node::new(
        ops::MkFile {
            path: "/srv/app/config.txt".into(),
            contents: "key=value\n".into(),
            mode: 0o640,
            owner: Some(Owner {
                user: "app".into(),
                group: None,
            }),
        },
        vec![f.base.output(0)],
    );
    let with_dir = Node::new(
        ops::MkDir {
            path: "/srv/data/deep".into(),
            mode: 0o700,
            owner: None,
        },
        vec![with_file.output(0)],
    );
    let without = Node::new(
        ops::Rm {
            path: "/etc/os-release".into(),
            allow_not_found: false,
        },
        vec![with_dir.output(0)],
    );
    let check = run(
        &without,
        "cat /srv/app/config.txt; stat -c '%a %u' /srv/app/config.txt /srv/data/deep; test -e /etc/os-release || echo removed",
    );
    assert_eq!(
        output(&f.session, &check).await,
        "key=value\n640 1000\n700 0\nremoved\n"
    );
    let missing = Node::new(
        ops::Rm {
            path: "/nope".into(),
            allow_not_found: false,
        },
        vec![f.base.output(0)],
    );
    let err = f.session.solve(&missing).await.unwrap_err().to_string();
    assert!(err.contains("/nope") && err.contains("no such file"), "{err}");
}

#[tokio::test]
async fn root_changed_file_reruns_only_the_ops_that_read_it() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a.txt"), "A1").unwrap();
    fs::write(src.path().join("b.txt"), "B1").unwrap();
    let engine = engine(state.path());
    let base = busybox(&engine).await;
    let pipeline = || {
        let a = copy_in(&base, &host_dir(src.path(), &["a.txt"]), "/src");
        let b = copy_in(&base, &host_dir(src.path(), &["b.txt"]), "/src");
        (run(&a, "cat /src/a.txt"), run(&b, "cat /src/b.txt; ls /src"))
    };
    let (a, b) = pipeline();
    let session = engine.session();
    assert_eq!(output(&session, &a).await, "A1");
    assert_eq!(output(&session, &b).await, "B1b.txt\n");
    assert_eq!(session.stats().execs, 2);

    fs::write(src.path().join("b.txt"), "B2").unwrap();
    let (a, b) = pipeline();
    let session = engine.session();
    let sa = session.solve(&a).await.unwrap();
    let sb = session.solve(&b).await.unwrap();
    assert!(sa.cached, "the exec reading only a.txt must stay cached");
    assert!(!sb.cached, "the exec reading b.txt must run again");
    assert_eq!(stdout(&engine, &sb), "B2b.txt\n");
    assert_eq!(session.stats().execs, 1);
}

#[tokio::test]
async fn root_identical_work_requested_at_once_runs_once() {
    let Some(f) = Fixture::start().await else { return };
    // A second run would print other random bytes.
    let node = run(&f.base, "sleep 1; od -An -x -N8 /dev/urandom");
    let (s1, s2) = (f.engine.session(), f.engine.session());
    let (r1, r2) = tokio::join!(s1.solve(&node), s2.solve(&node));
    let (out1, out2) = (stdout(&f.engine, &r1.unwrap()), stdout(&f.engine, &r2.unwrap()));
    assert_eq!(out1, out2, "the exec ran once, for both");
    assert_eq!(
        (s1.stats().execs, s2.stats().execs),
        (1, 1),
        "each is told of the one run"
    );
}

#[tokio::test]
async fn root_independent_branches_run_in_parallel() {
    let Some(f) = Fixture::start().await else { return };
    let session = f.engine.session();
    let mut events = session.events().subscribe();
    // Both branches started before either finished: proves overlap without
    // measuring time.
    let left = run(&f.base, "sleep 2; echo left");
    let right = run(&f.base, "sleep 2; echo right");
    let both = Node::new(
        ops::Copy {
            src_path: "/".into(),
            dest_path: "/r".into(),
            contents_only: true,
            include: vec!["tmp".into()],
            exclude: vec![],
            owner: None,
            mode: None,
        },
        vec![left.output(0), right.output(0)],
    );
    session.solve(&both).await.unwrap();
    let mut order = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if ev.description.starts_with("exec") && !matches!(ev.kind, kiln_solver::EventKind::Output { .. }) {
            order.push(matches!(ev.kind, kiln_solver::EventKind::Started));
        }
    }
    assert_eq!(order, [true, true, false, false], "execs ran one after the other");
}

/// Runs this test binary again as a child that solves the five-step
/// pipeline on `state`, and returns the engine stats it printed.
fn child_run(state: &std::path::Path, src: &std::path::Path) -> serde_json::Value {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_five_step_pipeline", "--nocapture", "--test-threads=1"])
        .env("KILN_CHILD_STATE", state)
        .env("KILN_CHILD_SRC", src)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.split_once("STATS ").map(|(_, s)| s))
        .unwrap_or_else(|| panic!("child printed no stats: {text}"));
    serde_json::from_str(line).unwrap()
}

fn five_steps(base: &std::sync::Arc<Node>, src: &std::path::Path) -> std::sync::Arc<Node> {
    let step1 = copy_in(base, &host_dir(src, &[]), "/src");
    let step2 = run(&step1, "cat /src/input.txt > /out.txt");
    let step3 = run(&step2, "echo built >> /out.txt");
    let step4 = Node::new(
        ops::MkFile {
            path: "/meta.txt".into(),
            contents: "meta\n".into(),
            mode: 0o644,
            owner: None,
        },
        vec![step3.output(0)],
    );
    run(&step4, "cat /out.txt /meta.txt")
}

/// Not a test by itself: the child half of the two-process test.
#[tokio::test]
async fn child_five_step_pipeline() {
    let (Some(state), Some(src)) = (std::env::var_os("KILN_CHILD_STATE"), std::env::var_os("KILN_CHILD_SRC")) else {
        return;
    };
    let engine = engine(std::path::Path::new(&state));
    let base = busybox(&engine).await;
    let last = five_steps(&base, std::path::Path::new(&src));
    let session = engine.session();
    let out = output(&session, &last).await;
    assert_eq!(out, "input\nbuilt\nmeta\n");
    let s = session.stats();
    println!(
        "STATS {}",
        serde_json::json!({ "execs": s.execs, "ran": s.ran, "cached": s.cached })
    );
}

#[test]
fn root_five_step_pipeline_is_cached_across_processes() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("input.txt"), "input\n").unwrap();
    let first = child_run(state.path(), src.path());
    assert_eq!(first["execs"], 3, "{first}");
    let second = child_run(state.path(), src.path());
    assert_eq!(second["execs"], 0, "second run started containers: {second}");
    assert_eq!(second["ran"], 0, "{second}");
    assert!(second["cached"].as_u64().unwrap() >= 1, "{second}");
}

#[test]
fn root_kill_9_during_exec_then_clean_rerun() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("input.txt"), "input\n").unwrap();
    // A child whose pipeline hangs in an exec.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_hanging_exec", "--nocapture", "--test-threads=1"])
        .env("KILN_CHILD_STATE", state.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let runtime_state = kiln_store::volatile_dir(state.path()).0.join("runtime");
    let started = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        fs::read_dir(&runtime_state).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("kiln-"))
        })
    });
    assert!(started, "the child's container never started");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();

    // A new engine opens the same state, removes the leftovers and works.
    let out = child_run(state.path(), src.path());
    assert_eq!(out["execs"], 3, "{out}");
    assert_eq!(
        fs::read_dir(state.path().join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "blobs")
            .count(),
        0
    );
    let leftover = fs::read_dir(&runtime_state)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("kiln-"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(leftover, 0, "a container of the killed run is still registered");
    let marker_alive = fs::read_dir("/proc").unwrap().flatten().any(|p| {
        fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("kiln-hang-marker"))
    });
    assert!(!marker_alive, "the killed run's container process is still alive");
}

/// Not a test by itself: a child that blocks in an exec until killed.
#[tokio::test]
async fn child_hanging_exec() {
    let Some(state) = std::env::var_os("KILN_CHILD_STATE") else {
        return;
    };
    let engine = engine(std::path::Path::new(&state));
    let base = busybox(&engine).await;
    let node = run(&base, "echo partial > /partial; sleep 600 # kiln-hang-marker");
    let _ = engine.session().solve(&node).await;
}

#[tokio::test]
async fn root_very_deep_layer_stacks_are_flattened_for_execs() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let mut top = busybox(&engine).await;
    // More layers than overlayfs mounts in one stack (kiln_store::MAX_MOUNT_DEPTH).
    for i in 0..(kiln_store::MAX_MOUNT_DEPTH + 5) {
        top = Node::new(
            ops::MkFile {
                path: format!("/layers/{i}"),
                contents: format!("{i}\n"),
                mode: 0o644,
                owner: None,
            },
            vec![top.output(0)],
        );
    }
    let last = kiln_store::MAX_MOUNT_DEPTH + 4;
    let out = output(
        &engine.session(),
        &run(&top, &format!("cat /layers/0 /layers/{last}; ls /layers | wc -l")),
    )
    .await;
    assert_eq!(out, format!("0\n{last}\n{}\n", last + 1));
    // One busybox layer, one layer per file, the exec's layer, and the
    // flattened copy of the deep stack that the exec mounted.
    let snapshots = fs::read_dir(state.path().join("s")).unwrap().count() as u32;
    assert_eq!(snapshots, 1 + (kiln_store::MAX_MOUNT_DEPTH + 5) + 1 + 1);
}

#[tokio::test]
async fn root_ops_reading_one_file_ignore_edits_elsewhere_in_the_directory() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a.txt"), "A").unwrap();
    fs::write(src.path().join("b.txt"), "B1").unwrap();
    let engine = engine(state.path());
    let base = busybox(&engine).await;
    let pipeline = || {
        let with_a = Node::new(
            ops::Copy {
                src_path: "/a.txt".into(),
                dest_path: "/a.txt".into(),
                contents_only: true,
                include: vec![],
                exclude: vec![],
                owner: None,
                mode: None,
            },
            vec![base.output(0), host_dir(src.path(), &[]).output(0)],
        );
        run(&with_a, "cat /a.txt")
    };
    assert_eq!(output(&engine.session(), &pipeline()).await, "A");
    fs::write(src.path().join("b.txt"), "B2").unwrap();
    let again = engine.session().solve(&pipeline()).await.unwrap();
    assert!(
        again.cached,
        "an edit to b.txt invalidated an exec that only reads a.txt"
    );
    fs::write(src.path().join("a.txt"), "A2").unwrap();
    let changed = engine.session().solve(&pipeline()).await.unwrap();
    assert!(!changed.cached);
    assert_eq!(stdout(&engine, &changed), "A2");
}

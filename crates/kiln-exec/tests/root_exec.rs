//! Root-only: real containers through crun and runc on overlayfs.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use kiln_exec::{Identity, Overlay, ProcessSpec, RunSpec, Runtime, TreeMount};

fn require_root() -> bool {
    if std::env::var_os("KILN_SKIP_ROOT_TESTS").is_some() {
        return false;
    }
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (CI runs as root); set KILN_SKIP_ROOT_TESTS=1 to skip"
    );
    true
}

/// A one-layer busybox rootfs made from the host's busybox-static.
fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("base");
    fs::create_dir_all(layer.join("bin")).unwrap();
    fs::create_dir_all(layer.join("etc")).unwrap();
    fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "id", "pwd", "touch", "ls", "rm", "mkdir"] {
        symlink("busybox", layer.join("bin").join(applet)).unwrap();
    }
    fs::write(layer.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::create_dir_all(layer.join("tmp")).unwrap();
    fs::set_permissions(layer.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    layer
}

fn spec(dir: &Path, id: &str, base: &Path, args: &[&str]) -> RunSpec {
    let upper = dir.join(format!("{id}-upper"));
    let work = dir.join(format!("{id}-work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    RunSpec {
        id: format!("kiln-test-{id}-{}", std::process::id()),
        bundle: dir.join(format!("{id}-bundle")),
        rootfs: Overlay {
            lowers: vec![base.to_path_buf(), dir.join("empty")],
            upper: Some((upper, work)),
        },
        trees: vec![],
        tmpfs: vec![],
        binds: vec![],
        process: ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "GREETING=hello world".into()],
            cwd: "/".into(),
            identity: Identity {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/root".into(),
            },
        },
        stdin: None,
        network: None,
    }
}

fn runtimes(dir: &Path) -> Vec<Runtime> {
    ["crun", "runc"]
        .iter()
        .map(|r| Runtime::detect(Some(r), dir.join(format!("state-{r}"))).unwrap())
        .collect()
}

#[tokio::test]
async fn root_exec_captures_output_exit_code_env_and_changes() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("empty")).unwrap();
    let base = busybox_layer(t.path());
    for rt in runtimes(t.path()) {
        let name = format!("{:?}", rt.kind());
        let mut s = spec(
            t.path(),
            &format!("{name}-a"),
            &base,
            &[
                "sh",
                "-c",
                "echo $GREETING; echo oops >&2; id -u; pwd; echo new > /tmp/created; exit 3",
            ],
        );
        s.process.identity = Identity {
            uid: 1234,
            gid: 1234,
            additional_gids: vec![],
            home: "/".into(),
        };
        s.process.cwd = "/tmp".into();
        let out = rt.run(&s).await.unwrap();
        assert_eq!(out.exit_code, 3, "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello world\n1234\n/tmp\n",
            "{name}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n", "{name}");
        let upper = t.path().join(format!("{name}-a-upper"));
        assert_eq!(
            fs::read_to_string(upper.join("tmp/created")).unwrap(),
            "new\n",
            "{name}"
        );
        assert!(
            !base.join("tmp/created").exists(),
            "{name}: the lower layer was modified"
        );
        assert!(
            !t.path().join(format!("{name}-a-bundle")).exists(),
            "{name}: bundle left behind"
        );
    }
}

#[tokio::test]
async fn root_exec_mounts_trees_readonly_and_writable_and_feeds_stdin() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("empty")).unwrap();
    let base = busybox_layer(t.path());
    let data = t.path().join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("sub/file"), "from tree\n").unwrap();
    let rt = Runtime::detect(None, t.path().join("state")).unwrap();
    let mut s = spec(
        t.path(),
        "m",
        &base,
        &[
            "sh",
            "-c",
            "cat /ro/file; cat; touch /ro/x 2>/dev/null || echo ro-denied; echo w > /rw/out; echo t > /scratch/t",
        ],
    );
    s.trees = vec![
        TreeMount {
            overlay: Overlay {
                lowers: vec![data.clone()],
                upper: None,
            },
            subpath: "sub".into(),
            target: "/ro".into(),
        },
        TreeMount {
            overlay: Overlay {
                lowers: vec![data.clone(), t.path().join("empty")],
                upper: Some((t.path().join("rw-upper"), t.path().join("rw-work"))),
            },
            subpath: "".into(),
            target: "/rw".into(),
        },
    ];
    fs::create_dir_all(t.path().join("rw-upper")).unwrap();
    fs::create_dir_all(t.path().join("rw-work")).unwrap();
    s.tmpfs = vec!["/scratch".into()];
    s.stdin = Some(b"piped in\n".to_vec());
    let out = rt.run(&s).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from tree\npiped in\nro-denied\n");
    assert_eq!(fs::read_to_string(t.path().join("rw-upper/out")).unwrap(), "w\n");
    assert!(!data.join("out").exists());
    assert!(
        !t.path().join("m-upper/scratch/t").exists(),
        "tmpfs content leaked into the rootfs"
    );
}

#[tokio::test]
async fn root_exec_reports_a_missing_binary() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("empty")).unwrap();
    let base = busybox_layer(t.path());
    let rt = Runtime::detect(None, t.path().join("state")).unwrap();
    let out = rt.run(&spec(t.path(), "nf", &base, &["no-such-binary"])).await.unwrap();
    assert_ne!(out.exit_code, 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-binary"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn root_exec_passes_all_output_on_as_it_arrives() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("empty")).unwrap();
    let base = busybox_layer(t.path());
    let rt = Runtime::detect(None, t.path().join("state")).unwrap();
    let s = spec(
        t.path(),
        "live",
        &base,
        &["sh", "-c", "echo one; echo two >&2; echo three; exit 1"],
    );
    let seen = std::sync::Mutex::new((Vec::new(), Vec::new()));
    let out = rt
        .run_with_output(&s, &|stream, bytes| {
            let mut seen = seen.lock().unwrap();
            match stream {
                kiln_exec::Stream::Stdout => seen.0.extend_from_slice(bytes),
                kiln_exec::Stream::Stderr => seen.1.extend_from_slice(bytes),
            }
        })
        .await
        .unwrap();
    let (live_out, live_err) = seen.into_inner().unwrap();
    assert_eq!(out.exit_code, 1);
    assert_eq!(live_out, b"one\nthree\n");
    assert_eq!(live_err, b"two\n");
    assert_eq!((out.stdout, out.stderr), (live_out, live_err));
}

#[tokio::test]
async fn root_a_started_container_runs_until_signalled_or_dropped() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("empty")).unwrap();
    let base = busybox_layer(t.path());
    for runtime in runtimes(t.path()) {
        let name = format!("{:?}", runtime.kind()).to_lowercase();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let live: std::sync::Arc<kiln_exec::LiveOutput<'static>> = std::sync::Arc::new(move |_, bytes: &[u8]| {
            let _ = tx.send(bytes.to_vec());
        });
        let s = spec(
            t.path(),
            &format!("svc-{name}"),
            &base,
            &["sh", "-c", "echo up; exec sleep 600"],
        );
        let started = runtime.start(&s, live.clone()).unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"up\n", "{name}: the service says it is up");
        started.signal("KILL").unwrap();
        let out = started.wait().await.unwrap();
        assert_eq!(out.exit_code, 137, "{name}: killed");
        assert_eq!(out.stdout, b"up\n");

        // Dropped while it runs: the container is killed and deleted.
        let s = spec(
            t.path(),
            &format!("gone-{name}"),
            &base,
            &["sh", "-c", "echo up; exec sleep 600"],
        );
        let started = runtime.start(&s, live.clone()).unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"up\n");
        let id = started.id().to_string();
        let state = t.path().join(format!("state-{name}")).join(&id);
        assert!(state.exists(), "{name}: {id} is in the runtime's state while it runs");
        drop(started);
        assert!(!state.exists(), "{name}: {id} is gone from the runtime's state");
        assert!(!s.bundle.exists(), "{name}: its bundle is removed");
    }
}

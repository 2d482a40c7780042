//! Root-only: another user of the host (`nobody`, through runuser) can
//! reach nothing of a state directory, its runtime directory in /dev/shm,
//! or the snapshots in it: not the database, not a file a pipeline wrote,
//! not an image's setuid binary (which would run as root).

mod common;

use std::path::Path;
use std::process::Command;

use common::{busybox, engine, output, require_root, run};

/// Runs `args` as `nobody`; true when it succeeded.
fn as_nobody(args: &[&str]) -> bool {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .args(args)
        .output()
        .expect("runuser runs")
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_other_users_reach_nothing_in_the_state_dir() {
    if !require_root() {
        return;
    }
    // A parent others may enter, as /var/lib is.
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let state = parent.path().join("state");
    let engine = engine(&state);
    let base = busybox(&engine).await;
    // A file the pipeline wrote and a setuid copy of busybox, in snapshots.
    let step = run(
        &base,
        "echo private > /written.txt && cp /bin/busybox /suid-busybox && chmod 4755 /suid-busybox && cat /written.txt",
    );
    assert_eq!(output(&engine.session(), &step).await, "private\n");
    // The control: nobody can run things, and reach a world-readable path.
    assert!(as_nobody(&["ls", parent.path().to_str().unwrap()]));

    let written: Vec<_> = walkdir(&state.join("s"), "written.txt");
    let suid: Vec<_> = walkdir(&state.join("s"), "suid-busybox");
    assert!(!written.is_empty() && !suid.is_empty(), "the snapshots hold the files");
    let volatile = kiln_store::volatile_dir(&state).0;
    for dir in [&state, &state.join("s"), &volatile] {
        assert!(
            !as_nobody(&["ls", dir.to_str().unwrap()]),
            "nobody listed {}",
            dir.display()
        );
    }
    for file in [&state.join("db"), &state.join("secret-key"), &written[0]] {
        assert!(
            !as_nobody(&["cat", file.to_str().unwrap()]),
            "nobody read {}",
            file.display()
        );
    }
    assert!(
        !as_nobody(&[suid[0].to_str().unwrap(), "id", "-u"]),
        "nobody ran the setuid binary in a snapshot"
    );
}

/// Paths under `dir` named `name` (as root).
fn walkdir(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name() == name {
            found.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(walkdir(&p, name));
        }
    }
    found
}

//! kill -9 while results are being committed: after reopening, every cache
//! record points at snapshots that exist, every snapshot directory is
//! recorded (or was removed as an orphan), and nothing is left in `tmp`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_store::{CacheRecord, Store, now_secs};

/// Not a test by itself: a child that commits results until it is killed.
#[test]
fn child_commits_until_killed() {
    let Some(state) = std::env::var_os("KILN_COMMIT_CHILD_STATE") else {
        return;
    };
    let store = Store::open(Path::new(&state)).unwrap();
    for i in 0u64.. {
        let staged = store.stage(None).unwrap();
        for f in 0..20 {
            std::fs::write(staged.diff().join(format!("f{f}")), format!("{i}/{f}")).unwrap();
        }
        let record = CacheRecord {
            outputs: vec![Some(staged.id())],
            meta: serde_json::Value::Null,
            description: format!("result {i}"),
            created: now_secs(),
            duration_ms: 1,
        };
        let key = *blake3::hash(&i.to_le_bytes()).as_bytes();
        store.commit(vec![staged], Some((&key, &record))).unwrap();
        println!("\nCOMMITTED {i}");
    }
}

#[test]
fn kill_9_during_commits_leaves_a_consistent_store() {
    for delay_us in [0, 700, 1900] {
        let state = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_commits_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KILN_COMMIT_CHILD_STATE", state.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut committed = 0;
        for line in lines.map_while(Result::ok) {
            if line.starts_with("COMMITTED ") {
                committed += 1;
                if committed == 30 {
                    break;
                }
            }
        }
        assert_eq!(committed, 30, "the child stopped committing");
        std::thread::sleep(Duration::from_micros(delay_us));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = Store::open(state.path()).unwrap();
        // Results not flushed yet when the kill came are lost (they would
        // run again): that is the durability promise, tested elsewhere.
        let entries = store.db().cache_entries().unwrap();
        for entry in &entries {
            for id in entry.record.outputs.iter().flatten() {
                assert!(
                    store.layer_dir(*id).is_dir(),
                    "{} points at missing snapshot {id}",
                    entry.record.description
                );
                store.record(*id).expect("the snapshot is recorded");
            }
        }
        let recorded = store.db().snapshot_ids().unwrap();
        for dir in std::fs::read_dir(state.path().join("s")).unwrap().flatten() {
            let id: u64 = dir.file_name().to_string_lossy().parse().unwrap();
            assert!(recorded.iter().any(|r| r.0 == id), "snapshot dir {id} has no record");
        }
        let staged: Vec<_> = std::fs::read_dir(state.path().join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "blobs")
            .map(|e| e.path())
            .collect();
        assert!(staged.is_empty(), "staged work left: {staged:?}");
    }
}

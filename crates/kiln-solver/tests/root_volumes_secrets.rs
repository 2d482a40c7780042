//! Root-only: cache volumes and secrets through real containers.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use kiln_graph::{CacheSharing, Mount, SecretEnv};
use kiln_solver::{Node, ops};

fn with_cache(script: &str, key: &str, sharing: CacheSharing) -> ops::Exec {
    let mut e = exec(script);
    e.mounts.push(Mount::Cache {
        target: "/cache".into(),
        key: key.into(),
        sharing,
        owner: None,
        source: None,
    });
    e
}

#[tokio::test]
async fn root_cache_volume_persists_across_engines_and_stays_out_of_snapshots() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let counter = "n=$(cat /cache/n 2>/dev/null || echo -1); n=$((n+1)); echo $n > /cache/n; echo $n";
    let mut seen = Vec::new();
    for round in 0..4 {
        // A new engine every other round: the volume outlives the process.
        let engine = engine(state.path());
        let base = busybox(&engine).await;
        let mut e = with_cache(counter, "counter", CacheSharing::Shared);
        e.env.push(format!("ROUND={round}"));
        let node = Node::new(e, vec![base.output(0)]);
        seen.push(output(&engine.session(), &node).await);
        if round == 3 {
            let after = run(&node, "ls -A /cache 2>/dev/null | wc -l");
            assert_eq!(
                output(&engine.session(), &after).await.trim(),
                "0",
                "volume contents leaked into the snapshot"
            );
            let listed = engine.volumes().list().unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].key, "counter");
        }
    }
    assert_eq!(seen, ["0\n", "1\n", "2\n", "3\n"]);
}

#[tokio::test]
async fn root_locked_cache_volume_serialises_concurrent_writers() {
    let Some(f) = Fixture::start().await else { return };
    let script = "if [ -e /cache/busy ]; then echo overlap; fi; touch /cache/busy; sleep 1; rm /cache/busy; echo ok";
    let nodes: Vec<_> = (0..3)
        .map(|i| {
            let mut e = with_cache(script, "locked", CacheSharing::Locked);
            e.env.push(format!("WRITER={i}"));
            Node::new(e, vec![f.base.output(0)])
        })
        .collect();
    let outs = futures::future::join_all(nodes.iter().map(|n| output(&f.session, n))).await;
    assert_eq!(
        outs,
        ["ok\n", "ok\n", "ok\n"],
        "a locked volume was written by two execs at once"
    );
}

fn grep_dir(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return hits };
    for e in entries.flatten() {
        let p = e.path();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            hits.extend(grep_dir(&p, needle));
        } else if meta.is_file() && fs::read(&p).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle)) {
            hits.push(p.display().to_string());
        }
    }
    hits
}

#[tokio::test]
async fn root_secrets_reach_the_process_but_never_disk_or_output() {
    let Some(f) = Fixture::start().await else { return };
    let plaintext = "kiln-s3cr3t-7f1d2a";
    let secret = f.session.add_secret("token", plaintext.into());
    let mut e = exec(
        "echo env=$TOKEN; cat /run/secrets/token; echo; stat -c '%a %u' /run/secrets/token; \
         test \"$TOKEN\" = kiln-s3cr3t-7f1d2a && echo matches; echo $TOKEN >&2; exit 1",
    );
    e.secret_env.push(SecretEnv {
        name: "TOKEN".into(),
        secret: secret.clone(),
    });
    e.mounts.push(Mount::Secret {
        target: "/run/secrets/token".into(),
        secret: secret.clone(),
        mode: 0o400,
        owner: None,
    });
    e.expect = kiln_graph::ExitExpectation::Any;
    let node = Node::new(e.clone(), vec![f.base.output(0)]);
    let out = output(&f.session, &node).await;
    assert_eq!(out, "env=***\n***\n400 0\nmatches\n");

    // A failing command's error carries scrubbed output too.
    let mut failing = e.clone();
    failing.expect = kiln_graph::ExitExpectation::Success;
    let err = f
        .session
        .solve(&Node::new(failing, vec![f.base.output(0)]))
        .await
        .unwrap_err();
    assert!(!err.report().contains(plaintext), "{}", err.report());

    // Another value is another cache key; the same value hits the cache.
    let other = f.session.add_secret("token", "another-value-93c1".into());
    let mut changed = e.clone();
    changed.secret_env[0].secret = other;
    let rerun = f
        .session
        .solve(&Node::new(changed, vec![f.base.output(0)]))
        .await
        .unwrap();
    assert!(!rerun.cached, "a changed secret must re-run the exec");
    // Another session that sets the same value shares the cache...
    let same_value = f.engine.session();
    same_value.add_secret("token", plaintext.into());
    let again = same_value.solve(&node).await.unwrap();
    assert!(again.cached);
    // ...and one that only knows the ID is refused, cached result or not.
    let stranger = f.engine.session();
    let refused = stranger.solve(&node).await.unwrap_err().to_string();
    assert!(
        refused.contains("secret \"token\" was not set in this session"),
        "{refused}"
    );
    assert!(
        stranger.secret(&secret).is_none(),
        "another session's plaintext is not readable"
    );

    f.engine.store().flush().unwrap();
    let hits = grep_dir(f.state.path(), plaintext.as_bytes());
    assert!(hits.is_empty(), "the secret reached the disk: {hits:?}");
    let hits = grep_dir(&kiln_store::volatile_dir(f.state.path()).0, plaintext.as_bytes());
    assert!(hits.is_empty(), "secret files outlived the exec: {hits:?}");
}

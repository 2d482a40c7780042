//! Root-only: images pulled from a real registry on loopback through
//! kiln's registry client, unpacked into snapshots and run.

mod common;

use common::*;
use std::sync::Arc;

use kiln_solver::{LocalHost, Node, SessionOptions, ops};
use kiln_testkit::Registry;

async fn pulled(engine: &std::sync::Arc<kiln_solver::Engine>, reference: &str) -> std::sync::Arc<Node> {
    let image = engine
        .session()
        .resolve_image(reference, None)
        .await
        .unwrap_or_else(|e| panic!("resolve {reference}: {e}"));
    Node::new(
        ops::Image {
            reference: reference.into(),
            manifest_digest: image.manifest_digest.to_string(),
            platform: image.platform().to_string(),
        },
        vec![],
    )
}

#[tokio::test]
async fn root_pull_by_tag_and_by_digest_then_run() {
    if !require_root() {
        return;
    }
    let registry = Registry::start();
    let digest = registry.push(&kiln_testkit::busybox_layout(), "busybox:latest");
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let session = engine.session();

    let by_tag = pulled(&engine, &registry.image_ref("busybox:latest")).await;
    let out = output(&session, &run(&by_tag, "grep ^ID= /etc/os-release")).await;
    assert_eq!(out, "ID=kiln-busybox\n");

    let by_digest = pulled(&engine, &format!("{}/busybox@{digest}", registry.host())).await;
    let encoded = String::from_utf8(by_digest.op().encode()).unwrap();
    assert!(
        encoded.contains(&format!("\"manifest_digest\":\"{digest}\"")),
        "{encoded}"
    );
    let solved = session.solve(&by_digest).await.unwrap();
    assert!(solved.cached, "the same image by digest must hit the cache");

    let missing = engine
        .session()
        .resolve_image(&registry.image_ref("busybox:nope"), None)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("busybox:nope"), "{missing}");
}

#[tokio::test]
async fn root_layered_image_honours_whiteouts_and_opaque_dirs() {
    if !require_root() {
        return;
    }
    let registry = Registry::start();
    registry.push(&kiln_testkit::layered_layout(), "layered:latest");
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let image = pulled(&engine, &registry.image_ref("layered:latest")).await;
    let out = output(
        &engine.session(),
        &run(&image, "cd /data && ls -A . opaque && cat keep link hard opaque/c new"),
    )
    .await;
    assert_eq!(
        out,
        ".:\nhard\nkeep\nlink\nnew\nopaque\n\nopaque:\nc\nkeep\nkeep\nkeep\nc\nnew\n"
    );
}

#[tokio::test]
async fn root_debian_image_runs_its_tools_as_its_users() {
    if !require_root() {
        return;
    }
    let layout = kiln_testkit::debian_layout();
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let image = engine.load_image(layout.to_str().unwrap(), None, None).await.unwrap();
    let debian = Node::new(
        ops::ImageImport {
            path: layout.to_str().unwrap().into(),
            tag: None,
            manifest_digest: image.manifest_digest.to_string(),
            platform: image.platform().to_string(),
        },
        vec![],
    );
    let mut e = exec("cat /etc/debian_version | cut -d. -f1; id -un; python3 -c 'print(6 * 7)'");
    e.env = vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()];
    e.user = "nobody".into();
    let out = output(&engine.session(), &Node::new(e, vec![debian.output(0)])).await;
    assert_eq!(out, "12\nnobody\n42\n");
}

/// A docker config directory whose `config.json` logs into `host`.
fn docker_config(host: &str, user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let header = kiln_testkit::basic_authorization(user, password);
    let auth = header.trim_start_matches("Basic ");
    let json = serde_json::json!({"auths": {host: {"auth": auth}}});
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    dir
}

#[tokio::test]
async fn root_registry_credentials_are_each_sessions_own() {
    if !require_root() {
        return;
    }
    let registry = Registry::start_with_basic_auth("alice", "s3cret");
    registry.push(&kiln_testkit::busybox_layout(), "private/busybox:latest");
    let reference = registry.image_ref("private/busybox:latest");
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let config = docker_config(&registry.host(), "alice", "s3cret");
    let host = |dir: Option<&std::path::Path>| Arc::new(LocalHost::new(dir.map(Into::into)));

    // A's host has the credentials: A resolves and pulls.
    let a = engine.session_for(host(Some(config.path())), SessionOptions::default());
    let image = a.resolve_image(&reference, None).await.expect("a has credentials");
    let node = Node::new(
        ops::Image {
            reference: reference.clone(),
            manifest_digest: image.manifest_digest.to_string(),
            platform: image.platform().to_string(),
        },
        vec![],
    );
    assert_eq!(output(&a, &run(&node, "echo pulled")).await, "pulled\n");

    // B's host has none: the registry (and A's token) stay closed to it.
    let b = engine.session_for(host(None), SessionOptions::default());
    let err = b.resolve_image(&reference, None).await.unwrap_err().to_string();
    assert!(err.contains("credentials"), "{err}");
}

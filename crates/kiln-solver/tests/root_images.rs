//! Root-only: images pulled from a real registry on loopback through
//! kiln's registry client, unpacked into snapshots and run.

mod common;

use common::*;
use kiln_solver::Node;
use kiln_solver::ops;
use kiln_testkit::Registry;

async fn pulled(engine: &std::sync::Arc<kiln_solver::Engine>, reference: &str) -> std::sync::Arc<Node> {
    let image = engine
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

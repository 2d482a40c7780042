//! Shared helpers for the solver's root-only integration tests.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use kiln_graph::{ExitExpectation, Mount};
use kiln_oci::RegistryConfig;
use kiln_solver::ops::{self, Exec};
use kiln_solver::{Engine, EngineConfig, Session, Solved};
use kiln_solver::{Input, Node};

/// Whether to run a root-only test (panics when not root unless skipped).
pub fn require_root() -> bool {
    kiln_testkit::require_root()
}

/// An engine on `state`.
pub fn engine(state: &Path) -> Arc<Engine> {
    Engine::open(EngineConfig {
        state_dir: state.to_path_buf(),
        runtime: None,
        registry: RegistryConfig::default(),
        parallelism: 4,
        ..Default::default()
    })
    .expect("engine opens")
}

/// The busybox fixture, imported from its OCI layout.
pub async fn busybox(engine: &Arc<Engine>) -> Arc<Node> {
    let layout = kiln_testkit::busybox_layout();
    let path = layout.to_str().unwrap();
    let image = engine.load_image(path, None, None).await.expect("busybox layout loads");
    Node::new(
        ops::ImageImport {
            path: path.into(),
            tag: None,
            manifest_digest: image.manifest_digest.to_string(),
            platform: image.platform().to_string(),
        },
        vec![],
    )
}

/// An exec spec with busybox's PATH.
pub fn exec(script: &str) -> Exec {
    Exec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        mounts: vec![],
        stdin: None,
        expect: ExitExpectation::Success,
        ..Default::default()
    }
}

/// `sh -c script` on top of `rootfs`.
pub fn run(rootfs: &Arc<Node>, script: &str) -> Arc<Node> {
    Node::new(exec(script), vec![rootfs.output(0)])
}

/// `sh -c script` with `tree` mounted read-only at `target`.
pub fn run_with_mount(rootfs: &Arc<Node>, script: &str, tree: Input, target: &str) -> Arc<Node> {
    let mut e = exec(script);
    e.mounts.push(Mount::Tree {
        target: target.into(),
        input: 1,
        source_path: "/".into(),
        readonly: true,
    });
    Node::new(e, vec![rootfs.output(0), tree])
}

/// Copies `src` (a whole tree) to `dest` in `rootfs`.
pub fn copy_in(rootfs: &Arc<Node>, src: &Arc<Node>, dest: &str) -> Arc<Node> {
    Node::new(
        ops::Copy {
            src_path: "/".into(),
            dest_path: dest.into(),
            contents_only: true,
            include: vec![],
            exclude: vec![],
            owner: None,
            mode: None,
        },
        vec![rootfs.output(0), src.output(0)],
    )
}

/// A host directory source.
pub fn host_dir(path: &Path, include: &[&str]) -> Arc<Node> {
    Node::new(
        ops::HostDir {
            path: path.to_str().unwrap().into(),
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: vec![],
            gitignore: false,
        },
        vec![],
    )
}

/// The stdout of a solved exec.
pub fn stdout(engine: &Engine, solved: &Solved) -> String {
    let meta = solved.exec().expect("an exec result");
    String::from_utf8(engine.store().blobs().read(&meta.stdout).unwrap()).unwrap()
}

/// Solves and returns stdout.
pub async fn output(session: &Session, node: &Arc<Node>) -> String {
    let solved = session
        .solve(node)
        .await
        .unwrap_or_else(|e| panic!("solve failed: {e}"));
    stdout(session.engine(), &solved)
}

/// What most root tests start from: a fresh state directory, an engine on
/// it, a session, and the busybox image.
pub struct Fixture {
    /// The state directory (removed when the fixture drops).
    pub state: tempfile::TempDir,
    /// The engine.
    pub engine: Arc<Engine>,
    /// A session of the engine.
    pub session: Session,
    /// The busybox image node.
    pub base: Arc<Node>,
}

impl Fixture {
    /// The fixture, or `None` when root tests are skipped.
    pub async fn start() -> Option<Self> {
        if !require_root() {
            return None;
        }
        let state = tempfile::tempdir().unwrap();
        let engine = engine(state.path());
        let session = engine.session();
        let base = busybox(&engine).await;
        Some(Self {
            state,
            engine,
            session,
            base,
        })
    }
}

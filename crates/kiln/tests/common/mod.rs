//! Shared set-up for the `kiln` binary's root tests: a loopback registry
//! serving the busybox fixture as `busybox`, a kiln config mirroring
//! docker.io to it, a fresh state directory, and query files.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_testkit::Registry;

/// A place to run kiln in.
pub struct Env {
    _registry: Registry,
    dir: tempfile::TempDir,
}

impl Env {
    /// Registry up, busybox pushed, config written.
    pub fn new() -> Self {
        let registry = Registry::start();
        registry.push(&kiln_testkit::busybox_layout(), "library/busybox:latest");
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(
            dir.path().join("kiln.toml"),
            format!("[registry.mirrors]\n\"docker.io\" = [\"{}\"]\n", registry.host()),
        )
        .expect("config written");
        Self {
            _registry: registry,
            dir,
        }
    }

    /// The scratch directory (config, state, query files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment kiln runs with: its config and state dir, no colours.
    pub fn vars(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("KILN_CONFIG", self.dir().join("kiln.toml")),
            ("KILN_STATE_DIR", self.dir().join("state")),
        ]
    }

    /// `kiln ARGS` with this environment.
    pub fn kiln(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args)
            .envs(self.vars())
            .env_remove("NO_COLOR")
            .env_remove("KILN_PROGRESS");
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "TRACEPARENT",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Writes a query file.
    pub fn query(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir().join(name);
        fs::write(&path, text).expect("query written");
        path
    }
}

/// The test pipeline program (sends query files at once, exits 1 on errors).
pub fn client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/client.py")
}

/// A query running `script` with `sh -c` on busybox, after `first` if given.
pub fn exec_query(first: Option<&str>, script: &str) -> String {
    let step = |s: &str| {
        format!(
            "withExec(args: [\"sh\", \"-c\", {}])",
            serde_json::to_string(s).unwrap()
        )
    };
    match first {
        Some(f) => format!(
            "{{ container {{ from(address: \"busybox\") {{ {} {{ {} {{ stdout }} }} }} }} }}",
            step(f),
            step(script)
        ),
        None => format!(
            "{{ container {{ from(address: \"busybox\") {{ {} {{ stdout }} }} }} }}",
            step(script)
        ),
    }
}

/// Output as text, for assertions.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd`, returning its output (panics if it cannot start).
pub fn run(mut cmd: Command) -> Output {
    cmd.output().expect("kiln runs")
}

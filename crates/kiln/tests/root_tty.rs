//! The terminal display on a real terminal: `kiln --progress tty run` in a
//! tmux pane, whose screen is read back with `capture-pane` once the run
//! ended. The live frame must be gone, replaced by the finished tree, the
//! failure report and the summary; the program's own output is printed
//! above the display.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, client, exec_query, run, text};

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Self {
        Self {
            socket: dir.join("tmux.sock"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-u").arg("-S").arg(&self.socket).args(args);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .cmd(args)
            .output()
            .expect("tmux runs (install it: scripts/setup.sh)");
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).output();
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn root_tty_mode_leaves_the_finished_tree_the_report_and_the_summary() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let client = client();
    let warm_script = "echo warm";
    let warm = env.query("warm.graphql", &exec_query(None, warm_script));
    assert!(
        run(env.kiln(&[
            "--progress",
            "plain",
            "run",
            "--",
            "python3",
            client.to_str().unwrap(),
            warm.to_str().unwrap()
        ]))
        .status
        .success()
    );
    let failing = env.query(
        "failing.graphql",
        &exec_query(
            Some(warm_script),
            "echo compiling; echo 'error: tests failed' >&2; exit 2",
        ),
    );
    let other = env.query("other.graphql", &exec_query(None, "echo other branch"));

    let vars: String = env
        .vars()
        .iter()
        .map(|(k, v)| format!("{k}={} ", quote(v.to_str().unwrap())))
        .collect();
    let tmux = Tmux::new(env.dir());
    let script = format!(
        "env -u NO_COLOR {vars}{} --progress tty run -- python3 {} {} {}; tmux -S {} wait-for -S kiln-done; cat",
        env!("CARGO_BIN_EXE_kiln"),
        quote(client.to_str().unwrap()),
        quote(failing.to_str().unwrap()),
        quote(other.to_str().unwrap()),
        quote(tmux.socket.to_str().unwrap()),
    );
    tmux.ok(&["new-session", "-d", "-s", "kiln", "-x", "100", "-y", "40", &script]);
    tmux.ok(&["wait-for", "kiln-done"]);
    let screen = tmux.ok(&["capture-pane", "-p", "-J", "-S", "-", "-t", "kiln"]);
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("tty-final.txt"), &screen);

    let lines: Vec<&str> = screen.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let line = |start: &str, end: &str| {
        lines
            .iter()
            .any(|l| l.trim_start_matches(['├', '└', '│', '─', ' ']).starts_with(start) && l.ends_with(end))
    };
    assert!(line("✔ pull docker.io/library/busybox", "CACHED"), "{screen}");
    assert!(line("✔ exec sh -c 'echo warm'", "CACHED"), "{screen}");
    assert!(line("✘ exec sh -c \"echo compiling;", "FAILED"), "{screen}");
    assert!(line("✔ exec sh -c 'echo other branch'", "s"), "{screen}");
    assert!(
        lines.contains(&"failing.graphql: failed"),
        "the program's output: {screen}"
    );
    assert!(
        screen.contains("--- stderr (last 30 lines) ---\nerror: tests failed\n"),
        "{screen}"
    );
    assert!(
        screen.contains("--- chain (each operation under the one it builds on) ---"),
        "{screen}"
    );
    let summary = lines.last().unwrap();
    assert!(
        summary.starts_with("kiln: 1 ran, ") && summary.contains(" cached, 1 failed in "),
        "{screen}"
    );
    let spinner = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    assert!(!screen.contains(spinner), "the live frame is cleared: {screen}");
    assert!(!screen.contains('╭'), "no output pane is left: {screen}");
}

//! `kiln run` on a real pipeline with plain progress: a step that ran
//! before comes from the cache, a failing step is reported in full at the
//! end with the chain that led to it, and `kiln logs` shows every exec's
//! output afterwards.

mod common;

use common::{Env, client, exec_query, run, text};

const WARM: &str = "echo warm";
const FAIL: &str = "for i in $(seq 1 40); do echo line $i; done; echo boom >&2; exit 3";

#[test]
fn root_plain_progress_shows_cache_hits_and_reports_failures_with_their_chain() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let client = client();
    let client = client.to_str().unwrap();
    let warm = env.query("warm.graphql", &exec_query(None, WARM));
    let out = run(env.kiln(&[
        "--progress",
        "plain",
        "run",
        "--",
        "python3",
        client,
        warm.to_str().unwrap(),
    ]));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.lines().any(|l| l.ends_with("] RUN    exec sh -c 'echo warm'")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.contains("] DONE   exec sh -c 'echo warm' (")),
        "{err}"
    );

    let failing = env.query("failing.graphql", &exec_query(Some(WARM), FAIL));
    let out = run(env.kiln(&[
        "--progress",
        "plain",
        "run",
        "--",
        "python3",
        client,
        failing.to_str().unwrap(),
    ]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "kiln exits with the program's code\n{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("] CACHED pull docker.io/library/busybox")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("] CACHED exec sh -c 'echo warm'")),
        "{err}"
    );
    let failed =
        format!("] FAILED exec sh -c '{FAIL}': process \"sh -c {FAIL}\" did not complete successfully: exit code: 3");
    assert!(lines.iter().any(|l| l.ends_with(&failed)), "{err}");

    // The full report comes last, before the summary.
    let report = &err[err
        .find(&format!("\nFAILED exec sh -c '{FAIL}'\n"))
        .expect("a failure report")..];
    let expected_chain = format!(
        "--- chain (each operation under the one it builds on) ---\n  \
         pull docker.io/library/busybox (CACHED)\n  \
         exec sh -c 'echo warm' (CACHED)\n  \
         exec sh -c '{FAIL}' (FAILED)\n"
    );
    assert!(report.contains(&format!(
        "process \"sh -c {FAIL}\" did not complete successfully: exit code: 3\n"
    )));
    assert!(
        report.contains("--- stdout (last 30 lines) ---\nline 11\nline 12\n"),
        "{report}"
    );
    assert!(
        report.contains("line 40\n--- stderr (last 30 lines) ---\nboom\n"),
        "{report}"
    );
    assert!(!report.contains("line 10\n"), "only the last 30 lines: {report}");
    assert!(report.contains(&expected_chain), "{report}");
    let summary = lines.last().unwrap();
    assert!(summary.starts_with("kiln: 0 ran, 2 cached, 1 failed in "), "{summary}");
    assert!(summary.contains("; the cache saved "), "{summary}");
    assert!(report.ends_with(&format!("{expected_chain}{summary}\n")), "{report}");

    // Every exec of the last run, its whole output.
    let logs = run(env.kiln(&["logs"]));
    let shown = text(&logs.stdout);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    assert!(
        shown.contains("exec sh -c 'echo warm' (cached, exit code 0)\n--- stdout ---\nwarm\n"),
        "{shown}"
    );
    let all_lines: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    assert!(
        shown.contains(&format!(
            "exec sh -c '{FAIL}' (FAILED, exit code 3)\n--- stdout ---\n{all_lines}--- stderr ---\nboom\n"
        )),
        "{shown}"
    );
    let only = text(&run(env.kiln(&["logs", "seq 1 40"])).stdout);
    assert!(
        only.contains("(FAILED, exit code 3)") && !only.contains("echo warm"),
        "{only}"
    );
}

#[test]
fn root_debug_prints_every_output_line_as_it_arrives() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let query = env.query("q.graphql", &exec_query(None, "echo one; echo two >&2; printf three"));
    let out = run(env.kiln(&["--progress", "quiet", "--debug", "query", query.to_str().unwrap()]));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let output: Vec<&str> = err.lines().filter(|l| !l.starts_with("kiln:")).collect();
    assert_eq!(output.len(), 3, "{err}");
    let id = &output[0][..14];
    assert!(id.starts_with('[') && id.ends_with(']'), "{err}");
    let mut got: Vec<String> = output.iter().map(|l| l[15..].to_string()).collect();
    got.sort();
    assert_eq!(got, vec!["stderr two", "stdout one", "stdout three"], "{err}");
    assert!(output.iter().all(|l| l.starts_with(id)), "one exec: {err}");
    assert!(!err.contains("RUN"), "quiet shows no progress: {err}");
}

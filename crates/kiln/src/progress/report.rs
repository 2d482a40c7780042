//! What is printed when a run ends: a full report of every failed
//! operation, and the one-line summary.

use std::time::Duration;

use kiln_solver::Stats;

use super::ops::{Ops, State};
use super::plain::secs;
use super::tree;

/// Lines of a failure's chain at most (the ones nearest the failure stay).
const CHAIN_LINES: usize = 40;

/// A report per failed operation: what failed (the command with its exit
/// code and the last lines of its stdout and stderr, as the error message
/// holds them), then the chain of operations that led to it, each under
/// the one it builds on.
pub fn failures(ops: &Ops) -> Vec<String> {
    ops.iter()
        .filter_map(|op| {
            let State::Failed { message } = &op.state else {
                return None;
            };
            let ancestors = ops.ancestors(&op.node);
            let chain: Vec<String> = tree::rows(ops, |o| o.node == op.node || ancestors.contains(&o.node))
                .iter()
                .map(|row| format!("  {}{} ({})", row.prefix, row.op.description, status(&row.op.state)))
                .collect();
            let mut report = format!(
                "FAILED {}\n{message}\n--- chain (each operation under the one it builds on) ---\n",
                op.description
            );
            if chain.len() > CHAIN_LINES {
                report.push_str(&format!("  … {} more\n", chain.len() - CHAIN_LINES));
            }
            let start = chain.len().saturating_sub(CHAIN_LINES);
            report.push_str(&chain[start..].join("\n"));
            Some(report)
        })
        .collect()
}

fn status(state: &State) -> String {
    match state {
        State::Running { .. } => "stopped".into(),
        State::Done { duration } => secs(*duration),
        State::Cached { .. } => "CACHED".into(),
        State::Failed { .. } => "FAILED".into(),
    }
}

/// The one-line summary at the end of a run. The time saved is what the
/// operations answered from the cache took when they ran (each one's own
/// run time, without time spent waiting for an exec slot), added up.
pub fn summary(stats: &Stats, wall: Duration) -> String {
    format!(
        "kiln: {} ran, {} cached, {} failed in {}; the cache saved {}",
        stats.ran,
        stats.cached,
        stats.failed,
        secs(wall),
        secs(Duration::from_millis(stats.saved_ms))
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use kiln_graph::Key;
    use kiln_solver::{Event, EventKind};

    use super::*;

    fn apply(ops: &mut Ops, node: u8, inputs: &[u8], description: &str, kind: EventKind) {
        let ev = Event {
            node: Key([node; 32]),
            description: description.into(),
            kind,
            inputs: inputs.iter().map(|i| Key([*i; 32])).collect(),
            image: None,
            exec: None,
        };
        ops.apply(&ev, Instant::now());
    }

    #[test]
    fn a_failure_report_holds_the_error_and_the_chain_that_led_to_it() {
        let mut ops = Ops::default();
        let cached = EventKind::Cached {
            duration: Duration::from_secs(4),
        };
        let done = EventKind::Done {
            duration: Duration::from_millis(1500),
        };
        apply(&mut ops, 1, &[], "pull busybox", cached.clone());
        apply(&mut ops, 2, &[], "upload ./src", cached);
        apply(&mut ops, 3, &[1], "exec apk add make", done.clone());
        apply(&mut ops, 4, &[1], "exec unrelated", done);
        let message = "process \"make test\" did not complete successfully: exit code: 2\n\
                       --- stderr (last 30 lines) ---\nmake: *** [test] Error 2";
        apply(
            &mut ops,
            5,
            &[3, 2],
            "exec make test",
            EventKind::Failed {
                message: message.into(),
            },
        );
        assert_eq!(
            failures(&ops),
            vec![
                "\
FAILED exec make test
process \"make test\" did not complete successfully: exit code: 2
--- stderr (last 30 lines) ---
make: *** [test] Error 2
--- chain (each operation under the one it builds on) ---
  ├─ pull busybox (CACHED)
  │  exec apk add make (1.5s)
  │  exec make test (FAILED)
  └─ upload ./src (CACHED)"
            ]
        );
    }

    #[test]
    fn the_summary_counts_and_adds_up_the_time_saved() {
        let stats = Stats {
            ran: 3,
            cached: 5,
            execs: 3,
            failed: 1,
            saved_ms: 4100,
        };
        assert_eq!(
            summary(&stats, Duration::from_millis(1234)),
            "kiln: 3 ran, 5 cached, 1 failed in 1.2s; the cache saved 4.1s"
        );
    }
}

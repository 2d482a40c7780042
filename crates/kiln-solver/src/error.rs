//! Errors of graph evaluation. They are cheap to clone, since one failure
//! is reported to every waiter of a shared computation.

use std::fmt;

/// How many trailing lines of output an exec error shows.
const TAIL_LINES: usize = 30;

/// A failure while solving a node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SolveError {
    /// A process exited with a code its exec did not accept. The message is
    /// Dagger's one line; [`SolveError::report`] adds the output's tail.
    #[error("process \"{}\" did not complete successfully: exit code: {exit_code}", args.join(" "))]
    Exec {
        /// The command line.
        args: Vec<String>,
        /// Its exit code.
        exit_code: i32,
        /// Captured stdout.
        stdout: String,
        /// Captured stderr.
        stderr: String,
    },
    /// Any other failure of an operation.
    #[error("{op}: {message}")]
    Op {
        /// Description of the operation.
        op: String,
        /// What went wrong.
        message: String,
    },
}

impl SolveError {
    pub(crate) fn op(op: impl Into<String>, message: impl fmt::Display) -> Self {
        SolveError::Op {
            op: op.into(),
            message: message.to_string(),
        }
    }

    /// The error for people: for a failed command, its message followed by
    /// the last lines of its stdout and stderr.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        if let SolveError::Exec { stdout, stderr, .. } = self {
            for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
                if !text.trim().is_empty() {
                    out.push_str(&format!("\n--- {name} (last {TAIL_LINES} lines) ---\n{}", tail(text)));
                }
            }
        }
        out
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_errors_read_like_daggers_and_reports_add_the_tail() {
        let e = SolveError::Exec {
            args: vec!["sh".into(), "-c".into(), "exit 3".into()],
            exit_code: 3,
            stdout: (1..=40).map(|i| format!("line {i}\n")).collect(),
            stderr: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "process \"sh -c exit 3\" did not complete successfully: exit code: 3"
        );
        let report = e.report();
        assert!(report.contains("--- stdout (last 30 lines) ---\nline 11\n"), "{report}");
        assert!(report.ends_with("line 40"));
        assert!(!report.contains("line 10\n") && !report.contains("stderr"));
    }
}

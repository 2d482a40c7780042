//! Errors of graph evaluation. They are cheap to clone, since one failure
//! is reported to every waiter of a shared computation.

use std::fmt;

/// How many trailing lines of output an exec error shows.
const TAIL_LINES: usize = 30;

/// A failure while solving a node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SolveError {
    /// A process exited with a code its exec did not accept.
    #[error("{}", ExecFailure(self))]
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
}

struct ExecFailure<'a>(&'a SolveError);

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join("\n")
}

impl fmt::Display for ExecFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SolveError::Exec {
            args,
            exit_code,
            stdout,
            stderr,
        } = self.0
        else {
            return Ok(());
        };
        write!(
            f,
            "process {args:?} did not complete successfully: exit code {exit_code}"
        )?;
        for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
            if !text.trim().is_empty() {
                write!(f, "\n--- {name} (last {TAIL_LINES} lines) ---\n{}", tail(text))?;
            }
        }
        Ok(())
    }
}

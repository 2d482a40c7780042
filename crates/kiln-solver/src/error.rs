//! Errors of graph evaluation. They are cheap to clone, since one failure
//! is reported to every waiter of a shared computation, and keep their
//! cause (the store's, the registry client's, the runtime's error) so that
//! callers can tell them apart.

use std::io;
use std::sync::Arc;

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
    #[error("{op}: {cause}")]
    Op {
        /// Description of the operation.
        op: String,
        /// What went wrong.
        #[source]
        cause: Cause,
    },
}

/// Why an operation failed: the error of the part that failed, kept whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Cause {
    /// The store (snapshots, database, state directory).
    #[error(transparent)]
    Store(Arc<kiln_store::StoreError>),
    /// A copy between trees or onto the host.
    #[error(transparent)]
    Copy(Arc<kiln_store::CopyError>),
    /// The blob store.
    #[error(transparent)]
    Blob(Arc<kiln_store::BlobError>),
    /// Reading a host directory.
    #[error(transparent)]
    Host(Arc<kiln_store::HostError>),
    /// An include/exclude pattern.
    #[error(transparent)]
    Filter(Arc<kiln_store::FilterError>),
    /// Images: references, registries, layers, archives.
    #[error(transparent)]
    Image(Arc<kiln_oci::Error>),
    /// Starting or running a container.
    #[error(transparent)]
    Runtime(Arc<kiln_exec::ExecError>),
    /// A user or group that the tree does not know.
    #[error(transparent)]
    User(Arc<kiln_exec::UserError>),
    /// The containers' network.
    #[error(transparent)]
    Network(Arc<kiln_exec::net::NetError>),
    /// Emulating a foreign CPU architecture.
    #[error(transparent)]
    Emulation(Arc<kiln_exec::EmulationError>),
    /// A file operation.
    #[error(transparent)]
    Io(Arc<io::Error>),
    /// What the pipeline asked for cannot be done; the message says why and
    /// what to do.
    #[error("{0}")]
    Invalid(String),
    /// A graph that was put together wrong.
    #[error(transparent)]
    Graph(Arc<GraphError>),
    /// A task of kiln's own failed (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
    /// A cause, with what was being done when it happened.
    #[error("{context}: {cause}")]
    In {
        /// What was being done (`seeding cache volume "pip"`).
        context: String,
        /// Why it failed.
        #[source]
        cause: Box<Cause>,
    },
}

/// Adds what was being done to an error on its way up.
pub(crate) trait Context<T> {
    /// `context: error` in place of `error`, the error kept as the source.
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Cause>;
}

impl<T, E: Into<Cause>> Context<T> for Result<T, E> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Cause> {
        self.map_err(|e| Cause::In {
            context: context(),
            cause: Box::new(e.into()),
        })
    }
}

macro_rules! cause_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for Cause {
            fn from(e: $ty) -> Self {
                Cause::$variant(Arc::new(e))
            }
        }
    )*};
}

cause_from!(
    Store(kiln_store::StoreError),
    Copy(kiln_store::CopyError),
    Blob(kiln_store::BlobError),
    Host(kiln_store::HostError),
    Filter(kiln_store::FilterError),
    Image(kiln_oci::Error),
    Runtime(kiln_exec::ExecError),
    User(kiln_exec::UserError),
    Network(kiln_exec::net::NetError),
    Emulation(kiln_exec::EmulationError),
    Io(io::Error),
    Graph(GraphError),
);

impl From<tokio::sync::AcquireError> for Cause {
    fn from(e: tokio::sync::AcquireError) -> Self {
        Cause::Internal(e.to_string())
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Cause::Invalid(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Cause::Invalid(message.to_string())
    }
}

impl From<tokio::task::JoinError> for Cause {
    fn from(e: tokio::task::JoinError) -> Self {
        Cause::Internal(e.to_string())
    }
}

impl SolveError {
    /// The operation `op` failed because of `cause`.
    pub(crate) fn op(op: impl Into<String>, cause: impl Into<Cause>) -> Self {
        SolveError::Op {
            op: op.into(),
            cause: cause.into(),
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

    #[test]
    fn operation_errors_keep_their_cause_and_context() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let cause = Err::<(), _>(io)
            .context(|| "seeding cache volume \"pip\"".to_string())
            .unwrap_err();
        let e = SolveError::op("exec make", cause);
        assert_eq!(e.to_string(), "exec make: seeding cache volume \"pip\": denied");
        let SolveError::Op {
            cause: Cause::In { cause, .. },
            ..
        } = &e
        else {
            panic!("not an operation error with context: {e:?}")
        };
        assert!(matches!(**cause, Cause::Io(_)), "the io::Error is kept: {cause:?}");
        let source = e.source().and_then(|s| s.source()).expect("a source chain");
        assert_eq!(source.to_string(), "denied");
    }
}

/// A problem with how a node was put together.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// An input refers to an output the producing op does not have.
    #[error("{op}: input {index} asks for output {output} of `{producer}`, which has {count}")]
    NoSuchOutput {
        op: String,
        index: usize,
        output: usize,
        producer: String,
        count: usize,
    },
}

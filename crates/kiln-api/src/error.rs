//! API errors and their GraphQL form.

use async_graphql::{ErrorExtensions, Value};
use kiln_solver::SolveError;

/// An error answered to a GraphQL client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong (bad argument, unknown ID, missing path).
    #[error("{0}")]
    Invalid(String),
    /// The field exists in Dagger's API but kiln does not implement it yet.
    #[error("{0} is not implemented by kiln yet (see docs/compatibility.md)")]
    NotImplemented(String),
    /// Evaluating the pipeline failed.
    #[error("{0}")]
    Solve(#[from] SolveError),
    /// A bug or an environment problem inside kiln.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A bad request.
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApiError::Invalid(msg.into())
    }

    /// An internal failure.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    /// The GraphQL error, with Dagger's `EXEC_ERROR` extensions for failed
    /// commands.
    pub fn to_graphql(&self) -> async_graphql::Error {
        let err = async_graphql::Error::new(self.to_string());
        match self {
            ApiError::Solve(SolveError::Exec {
                args,
                exit_code,
                stdout,
                stderr,
            }) => err.extend_with(|_, e| {
                e.set("_type", "EXEC_ERROR");
                e.set(
                    "cmd",
                    Value::List(args.iter().map(|a| Value::String(a.clone())).collect()),
                );
                e.set("exitCode", *exit_code);
                e.set("stdout", stdout.as_str());
                e.set("stderr", stderr.as_str());
            }),
            _ => err,
        }
    }
}

//! API errors and their GraphQL form.

use async_graphql::{ErrorExtensions, Value};
use std::sync::Arc;

use kiln_solver::{Cause, SolveError};

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
    /// Reading a result failed (an owner, a file of a tree).
    #[error("{0}")]
    Cause(#[from] Cause),
    /// A bug or an environment problem inside kiln, with its source kept.
    #[error("internal error: {0}")]
    Internal(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A bad request.
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApiError::Invalid(msg.into())
    }

    /// An internal failure (an error, or a message).
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(Arc::from(e.into()))
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

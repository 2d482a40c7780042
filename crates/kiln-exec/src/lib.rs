//! kiln-exec

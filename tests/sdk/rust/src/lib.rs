//! Empty: the checks live in tests/sdk.rs.

//! The values operations share: owners, secrets, mounts, exit expectations.
//! They are part of ops' canonical encodings (see kiln-solver's `ops`), so
//! renaming or reordering a field changes every key.

use serde::{Deserialize, Serialize};

/// A user and group, as numbers or names to resolve in the target tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// User name or numeric uid.
    pub user: String,
    /// Group name or numeric gid (the user's primary group when absent).
    pub group: Option<String>,
}

impl Owner {
    /// Reads `user`, `user:group`, `uid` or `uid:gid` (Dagger's `owner`).
    pub fn parse(text: &str) -> Self {
        match text.split_once(':') {
            Some((user, group)) => Owner {
                user: user.into(),
                group: Some(group.into()),
            },
            None => Owner {
                user: text.into(),
                group: None,
            },
        }
    }
}

/// What exit status an exec must have to succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitExpectation {
    /// Exit code 0.
    #[default]
    Success,
    /// Any non-zero exit code.
    Failure,
    /// Any exit code.
    Any,
}

impl ExitExpectation {
    /// Whether `code` satisfies the expectation.
    pub fn accepts(self, code: i32) -> bool {
        match self {
            ExitExpectation::Success => code == 0,
            ExitExpectation::Failure => code != 0,
            ExitExpectation::Any => true,
        }
    }
}

/// A secret, as the graph knows it: by name and by a keyed hash of its value
/// (the plaintext lives only in engine memory).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SecretRef {
    /// The secret's name.
    pub name: String,
    /// Keyed BLAKE3 hash of the value, hex (changes when the value does).
    pub digest: String,
}

/// An environment variable set from a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    /// Variable name.
    pub name: String,
    /// The secret.
    pub secret: SecretRef,
}

/// How concurrent execs share a cache volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    /// Everyone mounts the same directory at once.
    #[default]
    Shared,
    /// An exec gets a directory no other running exec uses.
    Private,
    /// One exec at a time; others wait.
    Locked,
}

/// A mount in an exec's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mount {
    /// A tree from one of the node's inputs. Writable mounts produce an extra
    /// output of the exec (outputs 1.. in the order of the writable mounts).
    Tree {
        /// Absolute path in the container.
        target: String,
        /// Index into the node's inputs.
        input: usize,
        /// Subdirectory (or file) of the input tree to mount.
        source_path: String,
        /// Mount read-only.
        readonly: bool,
    },
    /// An empty tmpfs, discarded after the exec.
    Tmpfs {
        /// Absolute path in the container.
        target: String,
    },
    /// A persistent cache volume, shared by key; its contents never enter a
    /// snapshot or a cache key.
    Cache {
        /// Absolute path in the container.
        target: String,
        /// The volume's key.
        key: String,
        /// How concurrent execs share it.
        sharing: CacheSharing,
        /// Owner given to a new volume's root.
        owner: Option<Owner>,
        /// Input whose tree (at `source_path`) seeds a new volume.
        source: Option<(usize, String)>,
    },
    /// A secret as a read-only file (in memory, never on disk).
    Secret {
        /// Absolute path in the container.
        target: String,
        /// The secret.
        secret: SecretRef,
        /// Permission bits.
        mode: u32,
        /// Owner (root when absent).
        owner: Option<Owner>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        assert!(ExitExpectation::Success.accepts(0));
        assert!(!ExitExpectation::Success.accepts(1));
        assert!(ExitExpectation::Failure.accepts(2));
        assert!(!ExitExpectation::Failure.accepts(0));
        assert!(ExitExpectation::Any.accepts(7));
    }

    #[test]
    fn owners() {
        assert_eq!(Owner::parse("1000").group, None);
        let o = Owner::parse("app:staff");
        assert_eq!((o.user.as_str(), o.group.as_deref()), ("app", Some("staff")));
    }
}

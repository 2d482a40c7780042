//! Operation definitions. Every op produces one or more filesystem trees
//! ("outputs"); output 0 is the main one.

use serde::{Deserialize, Serialize};

/// One operation of the graph. Encoded canonically (serde JSON, fields in
/// declaration order, no maps) for digests: changing a field's name or order
/// changes every key, so bump the domain version in `node.rs` when doing so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// An empty tree.
    Scratch,
    /// The root filesystem of a registry image, pinned to its manifest
    /// digest (the API resolves tags before building the node).
    Image {
        /// The reference as the user wrote it, normalized (for display).
        reference: String,
        /// Digest of the platform-specific manifest.
        manifest_digest: String,
        /// `os/arch[/variant]`.
        platform: String,
    },
    /// The root filesystem of an image loaded from an OCI layout directory or
    /// an OCI/docker-archive tarball on the host, pinned to its manifest digest.
    ImageImport {
        /// Host path of the layout or tarball.
        path: String,
        /// Tag to select, when the layout holds several images.
        tag: Option<String>,
        /// Digest of the platform-specific manifest.
        manifest_digest: String,
        /// `os/arch[/variant]`.
        platform: String,
    },
    /// A directory of the host, filtered by include/exclude patterns. Keyed by
    /// the content of the files it selects, never by its path or mtimes.
    HostDir {
        /// Absolute host path.
        path: String,
        /// Glob patterns of paths to keep (empty: everything).
        include: Vec<String>,
        /// Glob patterns of paths to drop.
        exclude: Vec<String>,
    },
    /// Runs a process in a container whose rootfs is input 0.
    Exec(Exec),
    /// Copies `src_path` of input 1 to `dest_path` of input 0.
    Copy {
        /// Path in the source tree (a file or a directory).
        src_path: String,
        /// Destination path in input 0's tree.
        dest_path: String,
        /// When `src_path` is a directory: copy its contents (true) or the
        /// directory itself under `dest_path` (false).
        contents_only: bool,
        /// Glob patterns (relative to `src_path`) to keep.
        include: Vec<String>,
        /// Glob patterns (relative to `src_path`) to drop.
        exclude: Vec<String>,
        /// New owner of everything copied.
        owner: Option<Owner>,
        /// New permission bits of copied files.
        mode: Option<u32>,
    },
    /// Writes a file into input 0's tree.
    MkFile {
        /// Absolute path of the file.
        path: String,
        /// Its contents.
        contents: String,
        /// Permission bits.
        mode: u32,
        /// Owner (root when absent).
        owner: Option<Owner>,
    },
    /// Creates a directory (and its parents) in input 0's tree.
    MkDir {
        /// Absolute path of the directory.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Owner (root when absent).
        owner: Option<Owner>,
    },
    /// The entries under `upper_path` of input 1 that are new or differ from
    /// those under `lower_path` of input 0, as a new tree (deletions are not
    /// represented).
    Diff {
        /// Directory of input 0 to compare against.
        lower_path: String,
        /// Directory of input 1 whose changes are kept.
        upper_path: String,
    },
    /// Removes a path from input 0's tree.
    Rm {
        /// Absolute path to remove.
        path: String,
        /// Succeed when the path does not exist.
        allow_not_found: bool,
    },
}

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

/// A process to run in a container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Exec {
    /// argv; `args[0]` is looked up in `PATH` of `env` when not absolute.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE`, in order.
    pub env: Vec<String>,
    /// Working directory (created if missing).
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; empty means root.
    pub user: String,
    /// Extra mounts, applied in order over the rootfs.
    pub mounts: Vec<Mount>,
    /// Data written to the process's stdin (none: stdin is /dev/null).
    pub stdin: Option<String>,
    /// Which exit codes count as success.
    pub expect: ExitExpectation,
    /// Environment variables whose values are secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<SecretEnv>,
    /// A file of the container whose contents are the process's stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_path: Option<String>,
    /// A file of the container that receives the process's stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_stdout: Option<String>,
    /// A file of the container that receives the process's stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_stderr: Option<String>,
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

/// How the solver obtains a source op's cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePolicy {
    /// The key follows from the definition alone.
    Definition,
    /// The key is derived from content read at solve time (host files).
    Content,
}

impl Op {
    /// The secrets the operation uses (as env vars or mounted files).
    pub fn secrets(&self) -> Vec<&SecretRef> {
        let Op::Exec(exec) = self else { return Vec::new() };
        let mounted = exec.mounts.iter().filter_map(|m| match m {
            Mount::Secret { secret, .. } => Some(secret),
            _ => None,
        });
        exec.secret_env.iter().map(|e| &e.secret).chain(mounted).collect()
    }

    /// A short human name for progress output, e.g. `exec sh -c make`.
    pub fn describe(&self) -> String {
        match self {
            Op::Scratch => "scratch".into(),
            Op::Image { reference, .. } => format!("pull {reference}"),
            Op::ImageImport { path, .. } => format!("import {path}"),
            Op::HostDir { path, .. } => format!("upload {path}"),
            Op::Exec(e) => format!("exec {}", shell_words(&e.args)),
            Op::Copy {
                src_path, dest_path, ..
            } => format!("copy {src_path} {dest_path}"),
            Op::MkFile { path, .. } => format!("write {path}"),
            Op::MkDir { path, .. } => format!("mkdir {path}"),
            Op::Rm { path, .. } => format!("rm {path}"),
            Op::Diff { lower_path, upper_path } => format!("diff {lower_path} {upper_path}"),
        }
    }

    /// How this op's cache key is obtained.
    pub fn source_policy(&self) -> SourcePolicy {
        match self {
            Op::HostDir { .. } => SourcePolicy::Content,
            _ => SourcePolicy::Definition,
        }
    }

    /// The inputs the op reads only a part of, with that part's path. Their
    /// cache keys can be replaced by the content digest of that part, so a
    /// change elsewhere in the input does not invalidate the op.
    pub fn selectors(&self) -> Vec<(usize, &str)> {
        let partial = |p: &str| !p.trim_matches('/').is_empty() && p != ".";
        match self {
            Op::Copy { src_path, .. } if partial(src_path) => vec![(1, src_path.as_str())],
            Op::Exec(e) => e
                .mounts
                .iter()
                .filter_map(|m| match m {
                    Mount::Tree {
                        input,
                        source_path,
                        readonly: true,
                        ..
                    } if partial(source_path) => Some((*input, source_path.as_str())),
                    Mount::Cache {
                        source: Some((input, path)),
                        ..
                    } if partial(path) => Some((*input, path.as_str())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// How many outputs the op produces.
    pub fn output_count(&self) -> usize {
        match self {
            Op::Exec(e) => 1 + e.writable_mounts().count(),
            _ => 1,
        }
    }
}

impl Exec {
    /// The writable tree mounts, in output order (output `1 + i`).
    pub fn writable_mounts(&self) -> impl Iterator<Item = &Mount> {
        self.mounts
            .iter()
            .filter(|m| matches!(m, Mount::Tree { readonly: false, .. }))
    }
}

/// `args` as a shell would need them written (quoted where needed).
fn shell_words(args: &[String]) -> String {
    // Only a NUL byte fails to quote, and no process argument holds one.
    shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_exec_with_quoting() {
        let op = Op::Exec(Exec {
            args: vec!["sh".into(), "-c".into(), "echo 'hi'".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            mounts: vec![],
            stdin: None,
            expect: ExitExpectation::Success,
            ..Default::default()
        });
        assert_eq!(op.describe(), r#"exec sh -c "echo 'hi'""#);
        assert_eq!(
            shell_words(&["sh".into(), "-c".into(), "exit 127".into()]),
            "sh -c 'exit 127'"
        );
        assert_eq!(
            shell_words(&["make".into(), "test".into(), String::new()]),
            "make test ''"
        );
    }

    #[test]
    fn expectations() {
        assert!(ExitExpectation::Success.accepts(0));
        assert!(!ExitExpectation::Success.accepts(1));
        assert!(ExitExpectation::Failure.accepts(2));
        assert!(!ExitExpectation::Failure.accepts(0));
        assert!(ExitExpectation::Any.accepts(7));
    }
}

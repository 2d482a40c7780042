//! Nodes of the graph and the derivation of their digests and cache keys.

use std::sync::Arc;

use serde::Serialize;

use crate::{Key, KeyBuilder, Op};

const DEF_DOMAIN: &str = "kiln/def/v1";
const CACHE_DOMAIN: &str = "kiln/cache/v1";

/// One edge: output `output` of `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The producing node.
    pub node: Arc<Node>,
    /// Which of its outputs.
    pub output: usize,
}

/// An operation applied to its inputs. Immutable; shared with `Arc`.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    op: Op,
    inputs: Vec<Input>,
    digest: Key,
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

impl Node {
    /// Builds a node and computes its definition digest.
    pub fn new(op: Op, inputs: Vec<Input>) -> Arc<Node> {
        let mut b = KeyBuilder::new(DEF_DOMAIN);
        b.bytes(&canonical(&op));
        for input in &inputs {
            b.key(&input.node.digest).bytes(&(input.output as u64).to_le_bytes());
        }
        let digest = b.finish();
        Arc::new(Node { op, inputs, digest })
    }

    /// Checks that every input refers to an existing output.
    pub fn validate(&self) -> Result<(), GraphError> {
        for (index, input) in self.inputs.iter().enumerate() {
            let count = input.node.op.output_count();
            if input.output >= count {
                return Err(GraphError::NoSuchOutput {
                    op: self.op.describe(),
                    index,
                    output: input.output,
                    producer: input.node.op.describe(),
                    count,
                });
            }
        }
        Ok(())
    }

    /// The operation.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// The inputs, in order.
    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// The definition digest: names this node in a session and in API IDs.
    pub fn digest(&self) -> Key {
        self.digest
    }

    /// Convenience: input edge to output `output` of this node.
    pub fn output(self: &Arc<Self>, output: usize) -> Input {
        Input {
            node: self.clone(),
            output,
        }
    }
}

/// The canonical encoding of an op (what its digests hash).
pub fn canonical(op: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(op).expect("ops serialize infallibly")
}

/// The persistent cache key of a node: its op's cache form, the cache keys of
/// its inputs (with the output each reads), and for content-keyed sources
/// the digest of the content read.
pub fn cache_key(op: &Op, input_keys: &[(Key, usize)], content: Option<&Key>) -> Key {
    let mut b = KeyBuilder::new(CACHE_DOMAIN);
    match (op, content) {
        // Host sources are keyed by what they contain, not where they are.
        (Op::HostDir { .. }, Some(content)) => {
            b.bytes(b"host-content").key(content);
        }
        // Images are keyed by what they are, not what they are called.
        (
            Op::Image {
                manifest_digest,
                platform,
                ..
            },
            _,
        )
        | (
            Op::ImageImport {
                manifest_digest,
                platform,
                ..
            },
            _,
        ) => {
            b.bytes(b"image")
                .bytes(manifest_digest.as_bytes())
                .bytes(platform.as_bytes());
        }
        (op, _) => {
            b.bytes(&canonical(op));
        }
    }
    for (key, output) in input_keys {
        b.key(key).bytes(&(*output as u64).to_le_bytes());
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Exec, ExitExpectation};

    fn exec(args: &[&str], rootfs: &Arc<Node>) -> Arc<Node> {
        Node::new(
            Op::Exec(Exec {
                args: args.iter().map(|s| s.to_string()).collect(),
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                user: String::new(),
                mounts: vec![],
                stdin: None,
                expect: ExitExpectation::Success,
                ..Default::default()
            }),
            vec![rootfs.output(0)],
        )
    }

    fn image(name: &str) -> Arc<Node> {
        Node::new(
            Op::Image {
                reference: name.into(),
                manifest_digest: "sha256:aa".into(),
                platform: "linux/amd64".into(),
            },
            vec![],
        )
    }

    #[test]
    fn digests_are_deterministic_and_structural() {
        let a = exec(&["true"], &image("busybox"));
        let b = exec(&["true"], &image("busybox"));
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), exec(&["false"], &image("busybox")).digest());
        // Different names, same pinned image: different definitions...
        let c = exec(&["true"], &image("docker.io/library/busybox"));
        assert_ne!(a.digest(), c.digest());
        // ...but the same cache key.
        let img_a = cache_key(a.inputs()[0].node.op(), &[], None);
        let img_c = cache_key(c.inputs()[0].node.op(), &[], None);
        assert_eq!(img_a, img_c);
    }

    #[test]
    fn stable_across_releases() {
        // Guards the canonical encoding: if this changes, every persisted
        // key changes; bump the domain versions deliberately.
        let a = exec(&["true"], &image("busybox"));
        assert_eq!(
            a.digest().to_string(),
            "28e8a451177f5c1df98c2e7848a9688e352c7bab05610e9e88c4fce85878df49"
        );
        let key = cache_key(a.op(), &[(Key([1; 32]), 0)], None);
        assert_eq!(
            key.to_string(),
            "ac9af48704682c37a7b9ad9d139138fd495624927315881d45a2620275896866"
        );
        assert_ne!(key, cache_key(a.op(), &[(Key([1; 32]), 1)], None));
    }

    #[test]
    fn host_dirs_are_keyed_by_content_only() {
        let op1 = Op::HostDir {
            path: "/a".into(),
            include: vec![],
            exclude: vec![],
        };
        let op2 = Op::HostDir {
            path: "/b".into(),
            include: vec![],
            exclude: vec!["x".into()],
        };
        let content = Key([7; 32]);
        assert_eq!(
            cache_key(&op1, &[], Some(&content)),
            cache_key(&op2, &[], Some(&content))
        );
        assert_ne!(
            cache_key(&op1, &[], Some(&content)),
            cache_key(&op1, &[], Some(&Key([8; 32])))
        );
    }

    #[test]
    fn rejects_missing_outputs() {
        let img = image("busybox");
        let bad = Node::new(
            Op::Rm {
                path: "/x".into(),
                allow_not_found: true,
            },
            vec![img.output(3)],
        );
        assert!(bad.validate().unwrap_err().to_string().contains("output 3"));
    }
}

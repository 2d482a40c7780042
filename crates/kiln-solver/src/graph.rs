//! Nodes of the graph: an operation applied to the trees its inputs produce,
//! named by a digest of its definition.

use std::sync::Arc;

use kiln_graph::{Key, KeyBuilder};

use crate::error::GraphError;
use crate::ops::{CacheMap, Operation};

const DEF_DOMAIN: &str = "kiln/def/v1";
const CACHE_DOMAIN: &str = "kiln/cache/v1";

/// One edge: output `output` of `node`.
#[derive(Debug, Clone)]
pub struct Input {
    /// The producing node.
    pub node: Arc<Node>,
    /// Which of its outputs.
    pub output: usize,
}

/// An operation applied to its inputs. Immutable; shared with `Arc`.
#[derive(Debug)]
pub struct Node {
    op: Arc<dyn Operation>,
    inputs: Vec<Input>,
    digest: Key,
}

impl Node {
    /// Builds a node of `op` over `inputs` and computes its definition digest.
    pub fn new(op: impl Operation, inputs: Vec<Input>) -> Arc<Node> {
        Self::of(Arc::new(op), inputs)
    }

    /// [`Node::new`] for an operation already shared (a decoded one).
    pub fn of(op: Arc<dyn Operation>, inputs: Vec<Input>) -> Arc<Node> {
        let mut b = KeyBuilder::new(DEF_DOMAIN);
        b.bytes(&op.encode());
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
    pub fn op(&self) -> &Arc<dyn Operation> {
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

    /// The image this node's tree starts from, following first inputs: the
    /// reference of a pull, `busybox` for an exec on busybox.
    pub fn base_image(&self) -> Option<String> {
        let mut node = self;
        loop {
            if let Some(image) = node.op.image() {
                return Some(image);
            }
            node = &node.inputs.first()?.node;
        }
    }
}

/// The persistent cache key of a node: what identifies its op (see
/// [`CacheMap`]), then the cache keys of its inputs with the output each
/// reads.
pub(crate) fn cache_key(map: &CacheMap, input_keys: &[(Key, usize)]) -> Key {
    let mut b = KeyBuilder::new(CACHE_DOMAIN);
    for part in map.parts() {
        b.bytes(part);
    }
    for (key, output) in input_keys {
        b.key(key).bytes(&(*output as u64).to_le_bytes());
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Exec, HostDir, Image, Rm, Scratch};

    fn exec(args: &[&str], rootfs: &Arc<Node>) -> Arc<Node> {
        Node::new(
            Exec {
                args: args.iter().map(|s| s.to_string()).collect(),
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                ..Default::default()
            },
            vec![rootfs.output(0)],
        )
    }

    fn image(name: &str) -> Arc<Node> {
        Node::new(
            Image {
                reference: name.into(),
                manifest_digest: "sha256:aa".into(),
                platform: "linux/amd64".into(),
            },
            vec![],
        )
    }

    fn key_of(node: &Node, inputs: &[(Key, usize)]) -> Key {
        cache_key(&CacheMap::definition(node.op().as_ref()), inputs)
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
        let pinned = |name: &str| {
            let image = Image {
                reference: name.into(),
                manifest_digest: "sha256:aa".into(),
                platform: "linux/amd64".into(),
            };
            cache_key(&image.pinned(), &[])
        };
        assert_eq!(pinned("busybox"), pinned("docker.io/library/busybox"));
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
        let key = key_of(&a, &[(Key([1; 32]), 0)]);
        assert_eq!(
            key.to_string(),
            "ac9af48704682c37a7b9ad9d139138fd495624927315881d45a2620275896866"
        );
        assert_ne!(key, key_of(&a, &[(Key([1; 32]), 1)]));
        assert_eq!(
            Node::new(Scratch, vec![]).op().encode(),
            b"\"scratch\"".to_vec(),
            "ops without fields are encoded by name"
        );
    }

    #[test]
    fn host_dirs_are_keyed_by_content_only() {
        let content = Key([7; 32]);
        let (a, b) = (HostDir::content_map(content), HostDir::content_map(content));
        assert_eq!(cache_key(&a, &[]), cache_key(&b, &[]));
        assert_ne!(cache_key(&a, &[]), cache_key(&HostDir::content_map(Key([8; 32])), &[]));
    }

    #[test]
    fn rejects_missing_outputs() {
        let img = image("busybox");
        let bad = Node::new(
            Rm {
                path: "/x".into(),
                allow_not_found: true,
            },
            vec![img.output(3)],
        );
        assert!(bad.validate().unwrap_err().to_string().contains("output 3"));
    }

    #[test]
    fn base_image_follows_first_inputs() {
        let top = exec(&["true"], &exec(&["true"], &image("busybox:1.36")));
        assert_eq!(top.base_image().as_deref(), Some("busybox:1.36"));
        assert_eq!(Node::new(Scratch, vec![]).base_image(), None);
    }
}

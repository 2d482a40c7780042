//! The registry of graph nodes the API created, and IDs: an ID names a
//! stored value (which names its nodes by definition digest). Values and
//! node definitions are kept in the engine's db, so IDs stay valid across
//! sessions and restarts of the same engine.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiln_graph::{Key, KeyBuilder};
use kiln_solver::ops::{self, Operation};
use kiln_solver::{Engine, Input, Node};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::values::{Object, TreeRef};

const ID_PREFIX: &str = "kiln1.";

/// A node as stored: its op's canonical encoding and its inputs.
#[derive(Serialize, Deserialize)]
struct StoredNode {
    op: serde_json::Value,
    inputs: Vec<(Key, usize)>,
}

/// Nodes by definition digest, and the IDs handed out.
pub struct Nodes {
    engine: Arc<Engine>,
    nodes: Mutex<HashMap<Key, Arc<Node>>>,
    persisted: Mutex<HashSet<Key>>,
    objects: Mutex<HashMap<Key, Object>>,
}

fn node_key(def: &Key) -> Key {
    KeyBuilder::new("kiln/api/node/v1").key(def).finish()
}

impl Nodes {
    /// An empty registry over `engine`'s db.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            nodes: Mutex::new(HashMap::new()),
            persisted: Mutex::new(HashSet::new()),
            objects: Mutex::new(HashMap::new()),
        }
    }

    /// Creates (or finds) the node for `op` over `inputs`.
    pub fn add(&self, op: impl Operation, inputs: Vec<Input>) -> Arc<Node> {
        self.insert(Node::new(op, inputs))
    }

    fn insert(&self, node: Arc<Node>) -> Arc<Node> {
        self.nodes
            .lock()
            .expect("nodes lock")
            .entry(node.digest())
            .or_insert(node)
            .clone()
    }

    /// The node with definition digest `key`.
    pub fn get(&self, key: &Key) -> Result<Arc<Node>, ApiError> {
        if let Some(n) = self.nodes.lock().expect("nodes lock").get(key) {
            return Ok(n.clone());
        }
        let bytes = self
            .engine
            .store()
            .db()
            .get_object(node_key(key).as_bytes())
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::invalid(format!("unknown operation {key}: the ID comes from another engine")))?;
        let stored: StoredNode = serde_json::from_slice(&bytes).map_err(ApiError::internal)?;
        let inputs = stored
            .inputs
            .iter()
            .map(|(k, output)| {
                Ok(Input {
                    node: self.get(k)?,
                    output: *output,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let op = ops::decode(&stored.op).map_err(|e| ApiError::internal(format!("stored operation {key}: {e}")))?;
        let node = Node::of(op, inputs);
        if node.digest() != *key {
            return Err(ApiError::internal(format!(
                "stored operation {key} does not match its digest"
            )));
        }
        self.persisted.lock().expect("persisted lock").insert(*key);
        Ok(self.insert(node))
    }

    /// The input edge for a tree (`None`: an empty tree).
    pub fn input(&self, tree: Option<TreeRef>) -> Result<Input, ApiError> {
        match tree {
            Some(t) => Ok(Input {
                node: self.get(&t.node)?,
                output: t.output,
            }),
            None => Ok(self.add(ops::Scratch, vec![]).output(0)),
        }
    }

    /// The ID of `object`, storing it and its nodes.
    pub fn id_of(&self, object: &Object) -> Result<String, ApiError> {
        let json = serde_json::to_vec(object).map_err(ApiError::internal)?;
        let key = KeyBuilder::new("kiln/api/id/v1").bytes(&json).finish();
        let known = self.objects.lock().expect("objects lock").contains_key(&key);
        if !known {
            let mut batch = vec![(*key.as_bytes(), json)];
            let mut todo = object.nodes();
            let mut persisted = self.persisted.lock().expect("persisted lock");
            while let Some(k) = todo.pop() {
                if !persisted.insert(k) {
                    continue;
                }
                let node = self.get(&k)?;
                let stored = StoredNode {
                    op: serde_json::from_slice(&node.op().encode()).map_err(ApiError::internal)?,
                    inputs: node.inputs().iter().map(|i| (i.node.digest(), i.output)).collect(),
                };
                batch.push((
                    *node_key(&k).as_bytes(),
                    serde_json::to_vec(&stored).map_err(ApiError::internal)?,
                ));
                todo.extend(node.inputs().iter().map(|i| i.node.digest()));
            }
            self.engine
                .store()
                .db()
                .put_objects(&batch)
                .map_err(ApiError::internal)?;
            self.objects.lock().expect("objects lock").insert(key, object.clone());
        }
        Ok(format!("{ID_PREFIX}{}", URL_SAFE_NO_PAD.encode(key.as_bytes())))
    }

    /// The object an ID names.
    pub fn load(&self, id: &str) -> Result<Object, ApiError> {
        let bad = || ApiError::invalid(format!("invalid ID {id:?}: not an ID issued by this kiln engine"));
        let raw = id.strip_prefix(ID_PREFIX).ok_or_else(bad)?;
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        let key = Key(bytes.try_into().map_err(|_| bad())?);
        if let Some(o) = self.objects.lock().expect("objects lock").get(&key) {
            return Ok(o.clone());
        }
        let json = self
            .engine
            .store()
            .db()
            .get_object(key.as_bytes())
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "unknown ID {id:?}: it was not issued by this engine (or its state was reset)"
                ))
            })?;
        let object: Object = serde_json::from_slice(&json).map_err(ApiError::internal)?;
        for k in object.nodes() {
            self.get(&k)?;
        }
        self.objects.lock().expect("objects lock").insert(key, object.clone());
        Ok(object)
    }
}

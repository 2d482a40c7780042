//! Cache explanations: what each op that missed the cache changed relative
//! to the most similar earlier run of it (the same definition, else the same
//! kind of op with the same description): which host files, which
//! environment variables or arguments, which upstream op, or that the
//! earlier result was evicted.

use std::collections::BTreeMap;

use kiln_graph::{Key, KeyBuilder};
use kiln_store::Db;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many changed files an explanation names before summarising.
const MAX_FILES: usize = 10;

/// What an op's cache key was made of, kept to explain later misses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Footprint {
    /// Op description.
    pub description: String,
    /// The cache key.
    pub key: Key,
    /// The op's canonical encoding.
    pub op: Value,
    /// Inputs: their cache keys and descriptions.
    pub inputs: Vec<(Key, String)>,
    /// For host directories: digest of each selected path.
    pub files: Option<BTreeMap<String, String>>,
}

/// Why one op missed the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// Definition digest of the node.
    pub node: Key,
    /// Its description.
    pub description: String,
    /// What changed, most specific first.
    pub reasons: Vec<String>,
}

fn def_slot(def: &Key) -> Key {
    KeyBuilder::new("kiln/explain/def/v1").key(def).finish()
}

fn shape_slot(description: &str) -> Key {
    KeyBuilder::new("kiln/explain/shape/v1")
        .bytes(description.as_bytes())
        .finish()
}

/// Remembers `footprint` as the latest run of `def` (and of its shape).
pub fn record(db: &Db, def: &Key, footprint: &Footprint) -> Result<(), kiln_store::StoreError> {
    let bytes = serde_json::to_vec(footprint).expect("a footprint serializes");
    let objects = [
        (*def_slot(def).as_bytes(), bytes.clone()),
        (*shape_slot(&footprint.description).as_bytes(), bytes),
    ];
    db.put_objects(&objects)
}

fn load(db: &Db, slot: &Key) -> Option<Footprint> {
    let bytes = db.get_object(slot.as_bytes()).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Explains why `now` (for node `def`) missed the cache.
pub fn explain(db: &Db, def: &Key, now: &Footprint) -> Vec<String> {
    let Some(before) = load(db, &def_slot(def)).or_else(|| load(db, &shape_slot(&now.description))) else {
        return vec!["first run of this operation (nothing similar in the cache)".into()];
    };
    if before.key == now.key {
        return vec!["the cached result was evicted (garbage collection or `kiln cache prune`)".into()];
    }
    let mut reasons = Vec::new();
    if let (Some(old), Some(new)) = (&before.files, &now.files) {
        reasons.extend(file_changes(old, new));
    }
    reasons.extend(op_changes(&before.op, &now.op));
    for (i, (key, description)) in now.inputs.iter().enumerate() {
        match before.inputs.get(i) {
            Some((old, _)) if old == key => {}
            Some(_) => reasons.push(format!("input {i} changed: {description}")),
            None => reasons.push(format!("new input {i}: {description}")),
        }
    }
    if before.inputs.len() > now.inputs.len() {
        reasons.push(format!("{} fewer inputs", before.inputs.len() - now.inputs.len()));
    }
    if reasons.is_empty() {
        reasons.push("its definition changed".into());
    }
    reasons
}

fn file_changes(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut changed: Vec<String> = Vec::new();
    for (path, digest) in new {
        match old.get(path) {
            None => changed.push(format!("file {path} added")),
            Some(d) if d != digest => changed.push(format!("file {path} changed")),
            _ => {}
        }
    }
    changed.extend(
        old.keys()
            .filter(|p| !new.contains_key(*p))
            .map(|p| format!("file {p} removed")),
    );
    if changed.len() > MAX_FILES {
        let more = changed.len() - MAX_FILES;
        changed.truncate(MAX_FILES);
        changed.push(format!("... and {more} more files"));
    }
    changed
}

/// `NAME=value` entries as a map (values compared, never shown).
fn env_map(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn op_changes(old: &Value, new: &Value) -> Vec<String> {
    // Ops encode as {"kind": {fields}} (or a bare string for unit variants).
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return if old == new {
            vec![]
        } else {
            vec!["the operation changed".into()]
        };
    };
    let (Some((ok, ov)), Some((nk, nv))) = (old.iter().next(), new.iter().next()) else {
        return vec![];
    };
    if ok != nk {
        return vec![format!("the operation changed from {ok} to {nk}")];
    }
    let (Some(of), Some(nf)) = (ov.as_object(), nv.as_object()) else {
        return if ov == nv {
            vec![]
        } else {
            vec![format!("{nk} changed")]
        };
    };
    let mut out = Vec::new();
    let fields: std::collections::BTreeSet<&String> = of.keys().chain(nf.keys()).collect();
    for field in fields {
        let (a, b) = (
            of.get(field).unwrap_or(&Value::Null),
            nf.get(field).unwrap_or(&Value::Null),
        );
        if a == b {
            continue;
        }
        if field == "env" {
            let (ea, eb) = (env_map(a), env_map(b));
            for k in ea.keys().chain(eb.keys()).collect::<std::collections::BTreeSet<_>>() {
                match (ea.get(k), eb.get(k)) {
                    (Some(x), Some(y)) if x != y => out.push(format!("env {k} changed")),
                    (None, Some(_)) => out.push(format!("env {k} added")),
                    (Some(_), None) => out.push(format!("env {k} removed")),
                    _ => {}
                }
            }
        } else if field == "secret_env" {
            out.push("a secret's value changed".into());
        } else {
            out.push(format!("{field} changed"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fp(key: u8, op: Value, inputs: Vec<(Key, String)>, files: Option<&[(&str, &str)]>) -> Footprint {
        Footprint {
            description: "exec make".into(),
            key: Key([key; 32]),
            op,
            inputs,
            files: files.map(|f| f.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()),
        }
    }

    #[test]
    fn names_env_args_inputs_files_and_evictions() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let def = Key([9; 32]);
        let exec = |env: &[&str], args: &[&str]| json!({"exec": {"args": args, "env": env, "cwd": "/"}});
        let input = |k: u8| vec![(Key([k; 32]), "upload /src".to_string())];
        let now = fp(1, exec(&["A=1", "B=2"], &["make"]), input(5), None);
        assert_eq!(
            explain(&db, &def, &now),
            ["first run of this operation (nothing similar in the cache)"]
        );
        record(&db, &def, &now).unwrap();
        assert_eq!(
            explain(&db, &def, &now),
            ["the cached result was evicted (garbage collection or `kiln cache prune`)"]
        );

        let changed = fp(2, exec(&["A=2", "C=3"], &["make", "test"]), input(6), None);
        assert_eq!(
            explain(&db, &def, &changed),
            [
                "args changed",
                "env A changed",
                "env B removed",
                "env C added",
                "input 0 changed: upload /src"
            ]
        );
        // Another definition with the same description is compared too.
        assert_eq!(explain(&db, &Key([8; 32]), &changed).len(), 5);

        let files = |f: &[(&str, &str)]| fp(3, json!({"host_dir": {"path": "/src"}}), vec![], Some(f));
        let host = Key([7; 32]);
        record(&db, &host, &files(&[("a.txt", "1"), ("b.txt", "1"), ("gone.txt", "1")])).unwrap();
        let mut now = files(&[("a.txt", "1"), ("b.txt", "2"), ("new.txt", "1")]);
        now.key = Key([4; 32]);
        assert_eq!(
            explain(&db, &host, &now),
            ["file b.txt changed", "file new.txt added", "file gone.txt removed"]
        );
    }
}

//! Secrets: plaintext kept in engine memory only, named in the graph by a
//! keyed hash (so a changed value re-runs what uses it, while the key, a
//! random per-state-dir value, keeps the hash from revealing the value), and
//! scrubbed (`***`) from every output kiln stores, prints or returns in an
//! error.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use kiln_graph::SecretRef;

/// What scrubbing puts in place of a secret value.
pub const MASK: &str = "***";

/// The secrets known to an engine.
pub struct Secrets {
    key: [u8; 32],
    values: RwLock<HashMap<String, Arc<String>>>,
}

impl Secrets {
    /// Loads (or creates, mode 0600) the hashing key of a state dir.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let path = state_dir.join("secret-key");
        let mut key = [0u8; 32];
        match fs::File::open(&path) {
            Ok(mut f) => f.read_exact(&mut key)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                getrandom::fill(&mut key).map_err(io::Error::other)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                f.write_all(&key)?;
            }
            Err(e) => return Err(e),
        }
        Ok(Self {
            key,
            values: RwLock::new(HashMap::new()),
        })
    }

    /// Registers a secret value; returns how the graph names it.
    pub fn add(&self, name: &str, plaintext: String) -> SecretRef {
        let digest = blake3::keyed_hash(&self.key, plaintext.as_bytes()).to_hex().to_string();
        self.values
            .write()
            .expect("secrets lock")
            .insert(digest.clone(), Arc::new(plaintext));
        SecretRef {
            name: name.to_string(),
            digest,
        }
    }

    /// The plaintext of a registered secret.
    pub fn get(&self, secret: &SecretRef) -> Option<Arc<String>> {
        self.values.read().expect("secrets lock").get(&secret.digest).cloned()
    }

    /// `text` with every known secret value replaced by [`MASK`].
    pub fn scrub(&self, text: &str) -> String {
        let values = self.values.read().expect("secrets lock");
        let mut plain: Vec<&str> = values.values().map(|v| v.as_str()).filter(|v| !v.is_empty()).collect();
        // Longest first, so that a secret containing another is masked whole.
        plain.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_string();
        for v in plain {
            if out.contains(v) {
                out = out.replace(v, MASK);
            }
        }
        out
    }

    /// Length in bytes of the longest known secret value (0: none): how
    /// much output a streaming scrubber must hold back, since a value may
    /// arrive split across reads.
    pub fn longest(&self) -> usize {
        let values = self.values.read().expect("secrets lock");
        values.values().map(|v| v.len()).max().unwrap_or(0)
    }

    /// Like [`Secrets::scrub`], for process output.
    pub fn scrub_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.scrub(text).into_bytes(),
            Err(_) => self.scrub(&String::from_utf8_lossy(bytes)).into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_stable_and_value_sensitive() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secrets::open(dir.path()).unwrap();
        let r1 = a.add("token", "s3cr3t".into());
        let again = Secrets::open(dir.path()).unwrap().add("token", "s3cr3t".into());
        assert_eq!(r1, again, "the same value hashes alike across restarts");
        assert_ne!(r1.digest, a.add("token", "other".into()).digest);
        assert_ne!(
            r1.digest,
            blake3::hash(b"s3cr3t").to_hex().to_string(),
            "the hash is keyed"
        );
        let other_dir = tempfile::tempdir().unwrap();
        assert_ne!(
            r1.digest,
            Secrets::open(other_dir.path())
                .unwrap()
                .add("token", "s3cr3t".into())
                .digest
        );
        assert_eq!(a.get(&r1).unwrap().as_str(), "s3cr3t");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(dir.path().join("secret-key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    #[test]
    fn scrubs_every_value_longest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::open(dir.path()).unwrap();
        s.add("a", "abc".into());
        s.add("b", "abcdef".into());
        s.add("empty", String::new());
        assert_eq!(s.scrub("x abcdef y abc z"), "x *** y *** z");
        assert_eq!(s.scrub_bytes(b"abc\xff"), "***\u{fffd}".as_bytes());
    }
}

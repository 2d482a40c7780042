//! 32-byte hashes that name nodes and cache entries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A 32-byte BLAKE3 hash: a definition digest or a cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(pub [u8; 32]);

/// A string that is not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("invalid key {0:?}: expected 64 hex characters")]
pub struct InvalidKey(String);

impl Key {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short prefix for display in progress output.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

impl FromStr for Key {
    type Err = InvalidKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| InvalidKey(s.to_string()))?;
        Ok(Key(out))
    }
}

impl TryFrom<String> for Key {
    type Error = InvalidKey;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Key> for String {
    fn from(k: Key) -> String {
        k.to_string()
    }
}

/// Builds a [`Key`] from a domain tag and length-prefixed parts, so that no
/// two different sequences of parts hash alike.
pub struct KeyBuilder(blake3::Hasher);

impl KeyBuilder {
    /// Starts a key in the given domain (e.g. `"kiln/def/v1"`).
    pub fn new(domain: &str) -> Self {
        let mut b = KeyBuilder(blake3::Hasher::new());
        b.bytes(domain.as_bytes());
        b
    }

    /// Adds a length-prefixed byte string.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// Adds another key.
    pub fn key(&mut self, key: &Key) -> &mut Self {
        self.bytes(&key.0)
    }

    /// Finishes the key.
    pub fn finish(&self) -> Key {
        Key(*self.0.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        let a = KeyBuilder::new("t").bytes(b"ab").bytes(b"c").finish();
        let b = KeyBuilder::new("t").bytes(b"a").bytes(b"bc").finish();
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<Key>().unwrap(), a);
    }
}

//! Pins: what running sessions use, which garbage collection must keep.
//!
//! A pin names cache keys (the record, its output trees and the blobs it
//! refers to are kept, whether the record exists yet or not) or snapshots
//! (kept with their parents). Pins are counted and released when their
//! [`PinGuard`] drops. Garbage collection decides and deletes its database
//! records while holding the pin set's lock, so a pin taken before a lookup
//! either protects what the lookup finds or the lookup finds nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::snapshots::SnapshotId;

/// The pins of one store: counts per cache key and per snapshot.
#[derive(Debug, Default)]
pub(crate) struct PinSet {
    keys: HashMap<[u8; 32], usize>,
    snapshots: HashMap<SnapshotId, usize>,
}

impl PinSet {
    /// Whether the cache key is pinned.
    pub(crate) fn has_key(&self, key: &[u8; 32]) -> bool {
        self.keys.contains_key(key)
    }

    /// The pinned snapshots.
    pub(crate) fn snapshots(&self) -> impl Iterator<Item = SnapshotId> + '_ {
        self.snapshots.keys().copied()
    }
}

/// Shared handle on a store's pin set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pins(Arc<Mutex<PinSet>>);

impl Pins {
    /// Locks the pin set (garbage collection holds this while it decides).
    pub(crate) fn lock(&self) -> MutexGuard<'_, PinSet> {
        self.0.lock().expect("pins lock")
    }

    /// Pins `keys` and `snapshots` in an already locked set.
    pub(crate) fn pin_locked(&self, set: &mut PinSet, keys: &[[u8; 32]], snapshots: &[SnapshotId]) -> PinGuard {
        for k in keys {
            *set.keys.entry(*k).or_default() += 1;
        }
        for s in snapshots {
            *set.snapshots.entry(*s).or_default() += 1;
        }
        PinGuard {
            pins: self.clone(),
            keys: keys.to_vec(),
            snapshots: snapshots.to_vec(),
        }
    }
}

/// Keeps pinned cache keys and snapshots from garbage collection until it
/// is dropped.
pub struct PinGuard {
    pins: Pins,
    keys: Vec<[u8; 32]>,
    snapshots: Vec<SnapshotId>,
}

impl fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinGuard")
            .field("keys", &self.keys.len())
            .field("snapshots", &self.snapshots)
            .finish()
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut set = self.pins.lock();
        for k in &self.keys {
            if let Some(n) = set.keys.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    set.keys.remove(k);
                }
            }
        }
        for s in &self.snapshots {
            if let Some(n) = set.snapshots.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    set.snapshots.remove(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_counted_and_released_on_drop() {
        let pins = Pins::default();
        let key = [7u8; 32];
        let a = pins.pin_locked(&mut pins.lock(), &[key], &[SnapshotId(1)]);
        let b = pins.pin_locked(&mut pins.lock(), &[key], &[]);
        drop(a);
        assert!(pins.lock().has_key(&key));
        assert!(pins.lock().snapshots().next().is_none());
        drop(b);
        assert!(!pins.lock().has_key(&key));
    }
}

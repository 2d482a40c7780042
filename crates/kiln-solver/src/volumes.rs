//! Leases on cache volumes for running execs: shared mounts use the
//! volume's main directory together, locked mounts take turns on it, and a
//! private mount gets a directory no other running exec holds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kiln_graph::CacheSharing;
use kiln_store::Volumes;
use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
struct VolumeState {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Running holders per instance.
    holders: HashMap<usize, usize>,
}

/// Hands out volume instances to execs.
pub struct VolumeLeases {
    volumes: Volumes,
    state: Mutex<HashMap<String, VolumeState>>,
}

/// An exec's hold on a volume instance, released on drop.
pub struct Lease {
    owner: Arc<VolumeLeases>,
    key: String,
    instance: usize,
    /// The instance's directory.
    pub path: PathBuf,
    /// Whether the directory was just created (and should be seeded).
    pub created: bool,
    _turn: Option<OwnedMutexGuard<()>>,
}

impl VolumeLeases {
    /// Leases over `volumes`.
    pub fn new(volumes: Volumes) -> Arc<Self> {
        Arc::new(Self {
            volumes,
            state: Mutex::new(HashMap::new()),
        })
    }

    /// The volumes.
    pub fn volumes(&self) -> &Volumes {
        &self.volumes
    }

    /// Waits for, and takes, an instance of volume `key`.
    pub async fn acquire(self: &Arc<Self>, key: &str, sharing: CacheSharing) -> std::io::Result<Lease> {
        let turn = match sharing {
            CacheSharing::Locked => {
                let lock = self
                    .state
                    .lock()
                    .expect("volumes lock")
                    .entry(key.to_string())
                    .or_default()
                    .lock
                    .clone();
                Some(lock.lock_owned().await)
            }
            _ => None,
        };
        let instance = {
            let mut state = self.state.lock().expect("volumes lock");
            let v = state.entry(key.to_string()).or_default();
            let instance = match sharing {
                CacheSharing::Private => (0..).find(|n| v.holders.get(n).copied().unwrap_or(0) == 0).unwrap_or(0),
                _ => 0,
            };
            *v.holders.entry(instance).or_default() += 1;
            instance
        };
        let (path, created) = match self.volumes.instance(key, instance) {
            Ok(found) => found,
            Err(e) => {
                self.release(key, instance);
                return Err(e);
            }
        };
        Ok(Lease {
            owner: self.clone(),
            key: key.to_string(),
            instance,
            path,
            created,
            _turn: turn,
        })
    }

    fn release(&self, key: &str, instance: usize) {
        let mut state = self.state.lock().expect("volumes lock");
        if let Some(v) = state.get_mut(key)
            && let Some(n) = v.holders.get_mut(&instance)
        {
            *n = n.saturating_sub(1);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.owner.release(&self.key, self.instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_leases_never_share_and_locked_ones_take_turns() {
        let t = tempfile::tempdir().unwrap();
        let leases = VolumeLeases::new(Volumes::open(t.path()).unwrap());
        let shared = leases.acquire("k", CacheSharing::Shared).await.unwrap();
        let p1 = leases.acquire("k", CacheSharing::Private).await.unwrap();
        let p2 = leases.acquire("k", CacheSharing::Private).await.unwrap();
        assert_ne!(p1.path, shared.path);
        assert_ne!(p1.path, p2.path);
        drop(p1);
        let p3 = leases.acquire("k", CacheSharing::Private).await.unwrap();
        assert!(!p3.created, "a released private instance is reused");

        let first = leases.acquire("k", CacheSharing::Locked).await.unwrap();
        let waiting = leases.clone();
        let second =
            tokio::spawn(async move { waiting.acquire("k", CacheSharing::Locked).await.map(|l| l.path.clone()) });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "a second locked lease waits for the first");
        drop(first);
        assert_eq!(second.await.unwrap().unwrap(), shared.path);
    }
}

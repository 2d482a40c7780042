//! Values worked out at most once per key and session, different keys at
//! the same time (a session's URL fetches, its git remotes' refs).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// The values found so far, and a lock per key while one is worked out.
pub(crate) struct PerKey<K, V>(Mutex<HashMap<K, Arc<tokio::sync::Mutex<Option<V>>>>>);

impl<K, V> Default for PerKey<K, V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V: Clone> PerKey<K, V> {
    /// The value of `key`: the one found before, or what `find` gives (kept
    /// when it succeeds). Others asking for the same key wait; other keys
    /// do not.
    pub(crate) async fn get_or_try<E, F: Future<Output = Result<V, E>>>(
        &self,
        key: K,
        find: impl FnOnce() -> F,
    ) -> Result<V, E> {
        let slot = self.0.lock().expect("per-key lock").entry(key).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(value) = slot.as_ref() {
            return Ok(value.clone());
        }
        let value = find().await?;
        *slot = Some(value.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_key_is_worked_out_once_and_a_failure_is_not_kept() {
        let values: PerKey<&str, u32> = PerKey::default();
        let calls = AtomicUsize::new(0);
        let find = |v: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, String>(v) }
        };
        assert_eq!(values.get_or_try("a", || find(1)).await, Ok(1));
        assert_eq!(values.get_or_try("a", || find(2)).await, Ok(1));
        assert_eq!(values.get_or_try("b", || find(3)).await, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let failed: Result<u32, String> = values.get_or_try("c", || async { Err("down".to_string()) }).await;
        assert!(failed.is_err());
        assert_eq!(values.get_or_try("c", || find(4)).await, Ok(4));
    }
}

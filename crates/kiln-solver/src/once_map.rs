//! Work started at most once per key: a second request for a key joins the
//! first one's future instead of starting it again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// A future that any number of waiters can await.
pub(crate) type Joinable<V> = Shared<BoxFuture<'static, V>>;

/// Futures by key.
pub(crate) struct OnceMap<K, V: Clone> {
    running: Mutex<HashMap<K, Joinable<V>>>,
    /// Whether a finished future is forgotten (the next request starts the
    /// work again) or kept (its result answers every later request).
    forget_when_done: bool,
}

impl<K, V> OnceMap<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A map that keeps results (a memo).
    pub(crate) fn memo() -> Arc<Self> {
        Arc::new(Self {
            running: Mutex::new(HashMap::new()),
            forget_when_done: false,
        })
    }

    /// A map of work in flight only.
    pub(crate) fn in_flight() -> Arc<Self> {
        Arc::new(Self {
            running: Mutex::new(HashMap::new()),
            forget_when_done: true,
        })
    }

    /// The future for `key`: the one already there, else `start()`'s.
    pub(crate) fn get_or_start(self: &Arc<Self>, key: K, start: impl FnOnce() -> BoxFuture<'static, V>) -> Joinable<V> {
        let mut running = self.running.lock().expect("once map lock");
        if let Some(fut) = running.get(&key) {
            return fut.clone();
        }
        let work = start();
        let fut = if self.forget_when_done {
            let map = Arc::clone(self);
            let k = key.clone();
            async move {
                let value = work.await;
                map.running.lock().expect("once map lock").remove(&k);
                value
            }
            .boxed()
            .shared()
        } else {
            work.shared()
        };
        running.insert(key, fut.clone());
        fut
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counted(runs: &Arc<AtomicUsize>) -> impl FnOnce() -> BoxFuture<'static, usize> + use<> {
        let runs = runs.clone();
        move || async move { runs.fetch_add(1, Ordering::SeqCst) + 1 }.boxed()
    }

    #[tokio::test]
    async fn joins_running_work_and_forgets_or_keeps_it_when_done() {
        let runs = Arc::new(AtomicUsize::new(0));
        let flight = OnceMap::in_flight();
        let (a, b) = (
            flight.get_or_start(1, counted(&runs)),
            flight.get_or_start(1, counted(&runs)),
        );
        assert_eq!((a.await, b.await), (1, 1), "the second request joined the first");
        assert_eq!(
            flight.get_or_start(1, counted(&runs)).await,
            2,
            "finished work starts again"
        );

        let memo = OnceMap::memo();
        assert_eq!(memo.get_or_start(1, counted(&runs)).await, 3);
        assert_eq!(memo.get_or_start(1, counted(&runs)).await, 3, "a memo keeps its result");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}

//! Jobs started at most once per key, owned by the map rather than by whoever
//! asked first.
//!
//! A job is a spawned task: it makes progress whether or not its waiters
//! poll it, and a second request for its key joins it. Every request holds
//! a [`Waiter`]; when the last waiter of an unfinished job goes away (the
//! client disconnected, the session ended), the job is cancelled: its task
//! is aborted, which drops its future, and with it everything the future
//! held (containers are killed by their guards, exec slots and volume locks
//! released, staged snapshots removed). Work already handed to a blocking
//! thread (a commit) finishes, so nothing is half-written.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::AbortHandle;

/// A job in progress.
struct Job<V> {
    /// `Some` once the job has finished.
    result: watch::Receiver<Option<V>>,
    /// How many waiters hold it (changed under the map's lock).
    waiters: usize,
    abort: Option<AbortHandle>,
}

enum Slot<V> {
    Running(Job<V>),
    /// A finished job's result, kept by a memo.
    Done(V),
}

/// Jobs by key.
pub(crate) struct OnceMap<K, V> {
    slots: Mutex<HashMap<K, (u64, Slot<V>)>>,
    /// Numbers jobs, so that a finished or cancelled job never touches the
    /// slot of a later job of the same key.
    next: AtomicU64,
    /// Whether a finished job's result stays (a memo) or goes (the next
    /// request starts the work again).
    keep_results: bool,
    /// The value a waiter gets when its job ended without a result (it
    /// panicked).
    lost: fn() -> V,
}

impl<K, V> OnceMap<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(keep_results: bool, lost: fn() -> V) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            keep_results,
            lost,
        })
    }

    /// A map that keeps results (a memo).
    pub(crate) fn memo(lost: fn() -> V) -> Arc<Self> {
        Self::new(true, lost)
    }

    /// A map of work in flight only.
    pub(crate) fn in_flight(lost: fn() -> V) -> Arc<Self> {
        Self::new(false, lost)
    }

    /// Waits for the job of `key`: the one running (or, in a memo, its kept
    /// result), else a new one running `start()`'s future.
    pub(crate) fn get_or_spawn<F>(self: &Arc<Self>, key: K, start: impl FnOnce() -> F) -> Waiter<K, V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut slots = self.slots.lock().expect("once map lock");
        match slots.get_mut(&key) {
            Some((_, Slot::Done(v))) => return Waiter::done(v.clone()),
            Some((id, Slot::Running(job))) => {
                job.waiters += 1;
                return Waiter::joined(self, key, *id, job.result.clone());
            }
            None => {}
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let map = Arc::clone(self);
        let finished_key = key.clone();
        let work = start();
        let task = tokio::spawn(async move {
            let value = work.await;
            // Under the lock, so that no waiter joins between the result
            // and the slot's update.
            let mut slots = map.slots.lock().expect("once map lock");
            let _ = tx.send(Some(value.clone()));
            if slots.get(&finished_key).is_some_and(|(i, _)| *i == id) {
                if map.keep_results {
                    slots.insert(finished_key, (id, Slot::Done(value)));
                } else {
                    slots.remove(&finished_key);
                }
            }
        });
        slots.insert(
            key.clone(),
            (
                id,
                Slot::Running(Job {
                    result: rx.clone(),
                    waiters: 1,
                    abort: Some(task.abort_handle()),
                }),
            ),
        );
        Waiter::joined(self, key, id, rx)
    }

    /// A waiter of job `id` left: the last one of an unfinished job cancels it.
    fn leave(&self, key: &K, id: u64) {
        let mut slots = self.slots.lock().expect("once map lock");
        let Some((slot_id, Slot::Running(job))) = slots.get_mut(key) else {
            return;
        };
        if *slot_id != id {
            return;
        }
        job.waiters -= 1;
        if job.waiters == 0 {
            if let Some(abort) = job.abort.take() {
                abort.abort();
            }
            slots.remove(key);
        }
    }

    /// How many jobs are running (for tests and diagnostics).
    pub(crate) fn running(&self) -> usize {
        let slots = self.slots.lock().expect("once map lock");
        slots.values().filter(|(_, s)| matches!(s, Slot::Running(_))).count()
    }

    /// How many requests wait for running jobs, in all.
    pub(crate) fn waiters(&self) -> usize {
        let slots = self.slots.lock().expect("once map lock");
        slots
            .values()
            .map(|(_, s)| match s {
                Slot::Running(job) => job.waiters,
                Slot::Done(_) => 0,
            })
            .sum()
    }
}

/// One request's hold on a job; await it for the job's result. Dropping it
/// before the result came lets go of the job (the last one cancels it).
pub(crate) struct Waiter<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    state: WaiterState<K, V>,
}

enum WaiterState<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Done(V),
    Joined {
        map: Arc<OnceMap<K, V>>,
        key: K,
        id: u64,
        result: watch::Receiver<Option<V>>,
        /// Set once the result was taken: nothing to let go of then.
        finished: bool,
    },
}

impl<K, V> Waiter<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn done(value: V) -> Self {
        Self {
            state: WaiterState::Done(value),
        }
    }

    fn joined(map: &Arc<OnceMap<K, V>>, key: K, id: u64, result: watch::Receiver<Option<V>>) -> Self {
        Self {
            state: WaiterState::Joined {
                map: Arc::clone(map),
                key,
                id,
                result,
                finished: false,
            },
        }
    }

    /// The job's result.
    pub(crate) async fn wait(mut self) -> V {
        match &mut self.state {
            WaiterState::Done(v) => v.clone(),
            WaiterState::Joined {
                map, result, finished, ..
            } => {
                match result.wait_for(Option::is_some).await {
                    Ok(v) => {
                        *finished = true;
                        v.clone().expect("waited for a result")
                    }
                    // The task ended without sending: it panicked. Dropping
                    // this waiter lets go of its slot.
                    Err(_) => (map.lost)(),
                }
            }
        }
    }
}

impl<K, V> Drop for Waiter<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        if let WaiterState::Joined {
            map,
            key,
            id,
            finished: false,
            ..
        } = &self.state
        {
            map.leave(key, *id);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The scheduler's guarantees with fake jobs (no root, no containers):
    //! dedupe, parallelism, cancellation when the last waiter leaves, and no
    //! leaked slot when a request is dropped.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::{Notify, Semaphore};

    use super::*;

    fn lost() -> Result<usize, String> {
        Err("lost".into())
    }

    /// Sets a flag when dropped (a container guard, a volume lock...).
    struct DropFlag(Arc<AtomicUsize>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn identical_requests_run_once_and_results_are_kept_or_forgotten() {
        let runs = Arc::new(AtomicUsize::new(0));
        let count = |runs: &Arc<AtomicUsize>| {
            let runs = runs.clone();
            move || async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
            }
        };
        let flight = OnceMap::in_flight(lost);
        let a = flight.get_or_spawn(1, count(&runs));
        let b = flight.get_or_spawn(1, count(&runs));
        assert_eq!(
            (a.wait().await, b.wait().await),
            (Ok(1), Ok(1)),
            "the second joined the first"
        );
        assert_eq!(
            flight.get_or_spawn(1, count(&runs)).wait().await,
            Ok(2),
            "finished work starts again"
        );

        let memo = OnceMap::memo(lost);
        assert_eq!(memo.get_or_spawn(1, count(&runs)).wait().await, Ok(3));
        assert_eq!(
            memo.get_or_spawn(1, count(&runs)).wait().await,
            Ok(3),
            "a memo keeps its result"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn failures_reach_every_waiter() {
        let flight = OnceMap::in_flight(lost);
        let fail = || async { Err::<usize, _>("exit 1".to_string()) };
        let (a, b) = (flight.get_or_spawn(7, fail), flight.get_or_spawn(7, fail));
        assert_eq!(a.wait().await, Err("exit 1".into()));
        assert_eq!(b.wait().await, Err("exit 1".into()));
    }

    #[tokio::test]
    async fn jobs_progress_without_being_polled_and_run_in_parallel() {
        let flight = OnceMap::in_flight(lost);
        let (both_started, started) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let job = |n: usize| {
            let (both_started, started) = (both_started.clone(), started.clone());
            move || async move {
                if started.fetch_add(1, Ordering::SeqCst) == 1 {
                    both_started.notify_one();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(n)
            }
        };
        let (a, b) = (flight.get_or_spawn(1, job(1)), flight.get_or_spawn(2, job(2)));
        // Neither waiter is polled yet: the jobs start anyway, at once.
        tokio::time::timeout(Duration::from_secs(10), both_started.notified())
            .await
            .expect("both jobs started before anyone awaited them");
        assert_eq!((a.wait().await, b.wait().await), (Ok(1), Ok(2)));
    }

    #[tokio::test]
    async fn the_last_waiter_leaving_cancels_the_job_and_frees_its_slot() {
        let flight = OnceMap::in_flight(lost);
        let slots = Arc::new(Semaphore::new(1));
        let dropped = Arc::new(AtomicUsize::new(0));
        let hold = || {
            let (slots, dropped) = (slots.clone(), dropped.clone());
            move || async move {
                let _slot = slots.acquire_owned().await.expect("slot");
                let _guard = DropFlag(dropped);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(0)
            }
        };
        let (a, b) = (flight.get_or_spawn(1, hold()), flight.get_or_spawn(1, hold()));
        // Let the job take its slot.
        while slots.available_permits() == 1 {
            tokio::task::yield_now().await;
        }
        drop(a);
        tokio::task::yield_now().await;
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "another waiter still wants it");
        assert_eq!(flight.running(), 1);
        drop(b);
        let freed = tokio::time::timeout(Duration::from_secs(10), slots.acquire()).await;
        assert!(freed.is_ok(), "the cancelled job's exec slot was released");
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the job's guards ran");
        assert_eq!(flight.running(), 0);
        // The key is free for new work.
        assert_eq!(flight.get_or_spawn(1, || async { Ok(5) }).wait().await, Ok(5));
    }

    #[tokio::test]
    async fn a_dropped_request_does_not_stall_the_others() {
        let flight = OnceMap::in_flight(lost);
        let gate = Arc::new(Notify::new());
        let job = {
            let gate = gate.clone();
            move || async move {
                gate.notified().await;
                Ok(9)
            }
        };
        let first = flight.get_or_spawn(3, job);
        let second = flight.get_or_spawn(3, || async { Ok(0) });
        drop(first);
        gate.notify_one();
        assert_eq!(second.wait().await, Ok(9), "the job went on for the remaining waiter");
    }

    #[tokio::test]
    async fn a_panicking_job_gives_the_lost_value() {
        let flight = OnceMap::in_flight(lost);
        let waiter = flight.get_or_spawn(4, || async { panic!("boom") });
        assert_eq!(waiter.wait().await, Err("lost".into()));
    }
}

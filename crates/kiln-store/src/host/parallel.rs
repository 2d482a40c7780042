//! Per-entry work (stats, hashes, copies) spread over one thread per CPU.
//! Plain scoped threads taking chunks from a shared counter: the work items
//! are a flat list, so no work-stealing pool is needed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Below this many items the work runs on the calling thread.
const MIN_PARALLEL: usize = 64;
/// Items a thread takes at once.
const CHUNK: usize = 32;
/// At most this many threads.
const MAX_THREADS: usize = 16;

/// Applies `f` to every item, on several threads; results are in item order.
pub(crate) fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
    if threads <= 1 || items.len() < MIN_PARALLEL {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let parts: Vec<Vec<(usize, R)>> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if start >= items.len() {
                            return done;
                        }
                        for (i, item) in items.iter().enumerate().skip(start).take(CHUNK) {
                            done.push((i, f(item)));
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    let mut out: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    for (i, r) in parts.into_iter().flatten() {
        out[i] = Some(r);
    }
    out.into_iter().map(|r| r.expect("every item was mapped")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_item_order() {
        let items: Vec<u64> = (0..1000).collect();
        assert_eq!(
            super::map(&items, |i| i * 2),
            items.iter().map(|i| i * 2).collect::<Vec<_>>()
        );
    }
}

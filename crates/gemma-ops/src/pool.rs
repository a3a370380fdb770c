//! A persistent pool of worker threads. Threads are spawned once; each parallel region hands out task
//! indices from an atomic counter, and the calling thread works too, so `ThreadPool::new(1)` spawns nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The work of one parallel region, with its lifetime erased (see `ThreadPool::run`).
type Job = &'static (dyn Fn(usize) + Sync);

struct Region {
    job: Job,
    n_tasks: usize,
    next: Arc<AtomicUsize>,
}

struct State {
    generation: u64,
    region: Option<Region>,
    /// Workers still inside the current region.
    busy: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    start: Condvar,
    done: Condvar,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises regions started from several threads at once.
    entry: Mutex<()>,
}

impl ThreadPool {
    /// A pool that runs regions on `n_threads` threads in all (the caller plus `n_threads - 1` workers).
    pub fn new(n_threads: usize) -> ThreadPool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                region: None,
                busy: 0,
                shutdown: false,
            }),
            start: Condvar::new(),
            done: Condvar::new(),
        });
        let workers = (1..n_threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("gemma-worker-{i}"))
                    .spawn(move || worker_loop(&shared))
                    .expect("failed to spawn a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            entry: Mutex::new(()),
        }
    }

    /// Threads taking part in each region.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every `i` in `0..n_tasks`, spread over the pool; returns when all calls have returned.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _entry = self.entry.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the reference is only used by workers between here and the wait below, which does not
        // return until every worker has left the region (`busy == 0`), so `f` outlives every use.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        let next = Arc::new(AtomicUsize::new(0));
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.generation += 1;
            st.region = Some(Region {
                job,
                n_tasks,
                next: next.clone(),
            });
            st.busy = self.workers.len();
            self.shared.start.notify_all();
        }
        drain(job, n_tasks, &next);
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.busy > 0 {
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.region = None;
    }

    /// Splits `0..n` into about `chunks_per_thread * n_threads` contiguous ranges of at least `min_chunk` and
    /// runs `f(range)` on each.
    pub fn for_ranges(
        &self,
        n: usize,
        min_chunk: usize,
        f: &(dyn Fn(std::ops::Range<usize>) + Sync),
    ) {
        let target = self.n_threads() * 4;
        let chunk = n.div_ceil(target).max(min_chunk.max(1));
        let n_chunks = n.div_ceil(chunk);
        self.run(n_chunks, &|c| f(c * chunk..((c + 1) * chunk).min(n)));
    }
}

fn drain(job: Job, n_tasks: usize, next: &AtomicUsize) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n_tasks {
            break;
        }
        job(i);
    }
}

fn worker_loop(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let (job, n_tasks, next) = {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while !st.shutdown && st.generation == seen {
                st = shared.start.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            match &st.region {
                Some(r) => (r.job, r.n_tasks, r.next.clone()),
                None => continue,
            }
        };
        drain(job, n_tasks, &next);
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.busy -= 1;
        if st.busy == 0 {
            shared.done.notify_all();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.shutdown = true;
            self.shared.start.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw pointer to an output buffer that several tasks write through, each to its own disjoint part.
#[derive(Clone, Copy)]
pub struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: users only write disjoint ranges from different tasks (documented at `slice`).
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(s: &mut [T]) -> Self {
        SharedMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// No two live slices obtained from the same `SharedMut` may overlap, and the original buffer must outlive them.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: std::ops::Range<usize>) -> &mut [T] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "SharedMut range out of bounds"
        );
        // SAFETY: bounds checked above; disjointness is the caller's contract.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.end - range.start)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            for n in [0, 1, 2, 7, 100] {
                let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                    "threads {threads} n {n}"
                );
            }
        }
    }

    #[test]
    fn ranges_cover_everything_once() {
        let pool = ThreadPool::new(2);
        let mut out = vec![0u32; 1003];
        let shared = SharedMut::new(&mut out);
        pool.for_ranges(1003, 10, &|r| {
            // SAFETY: ranges from for_ranges are disjoint.
            let s = unsafe { shared.slice(r.clone()) };
            for (k, v) in s.iter_mut().enumerate() {
                *v += (r.start + k) as u32;
            }
        });
        assert!(out.iter().enumerate().all(|(i, &v)| v == i as u32));
    }
}

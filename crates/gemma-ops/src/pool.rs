//! A persistent pool of worker threads. Threads are spawned once; each parallel region hands out task
//! indices from an atomic ticket, and the calling thread works too, so `ThreadPool::new(1)` spawns nothing.
//!
//! Between regions a worker spins for a short while before it parks: a decode step runs about a hundred
//! small regions, and waking a parked thread costs more than most of them take.
//!
//! A region waits only for the tasks, never for idle workers: a worker that is descheduled (a loaded machine)
//! or still waking simply takes no task, and the caller does the work. The ticket carries the region's
//! generation in its high half, so a late worker can never take a task of a later region with an earlier job.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The work of one parallel region, with its lifetime erased (see `ThreadPool::run`).
type Job = &'static (dyn Fn(usize) + Sync);

/// Most threads a pool may have (llama.cpp's `GGML_MAX_N_THREADS`): far more than any machine gains from,
/// and few enough that starting them cannot exhaust memory (thousands of threads abort the process in the
/// standard library's thread set-up, before an error could be returned).
pub const MAX_THREADS: usize = 512;

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(300);

struct Shared {
    /// Bumped (SeqCst) to start a region.
    generation: AtomicU64,
    /// The current region's work and generation; set by the caller before the bump.
    region: Mutex<Option<(Job, usize, u32)>>,
    /// `generation << 32 | next task index` of the current region.
    ticket: AtomicU64,
    /// Tasks of the current region finished.
    done: AtomicUsize,
    /// Workers parked on `wake` (changed under `park_lock`).
    parked: AtomicUsize,
    park_lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// The first panic of a task of the current region, re-raised by the caller once every task is done.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises regions started from several threads at once.
    entry: Mutex<()>,
}

impl ThreadPool {
    /// A pool that runs regions on `n_threads` threads in all (the caller plus `n_threads - 1` workers).
    /// Panics if the system refuses a thread; front ends, whose thread counts come from users, call
    /// [`ThreadPool::try_new`].
    pub fn new(n_threads: usize) -> ThreadPool {
        match Self::try_new(n_threads) {
            Ok(pool) => pool,
            Err(e) => panic!("cannot start {n_threads} threads: {e}"),
        }
    }

    /// [`ThreadPool::new`], or an error: more than [`MAX_THREADS`], or the system refused a thread (the
    /// threads already started are stopped again).
    pub fn try_new(n_threads: usize) -> std::io::Result<ThreadPool> {
        if n_threads > MAX_THREADS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{n_threads} threads is more than the {MAX_THREADS} a pool may have"),
            ));
        }
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            region: Mutex::new(None),
            ticket: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            park_lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let mut pool = ThreadPool { shared, workers: Vec::new(), entry: Mutex::new(()) };
        for i in 1..n_threads.max(1) {
            let shared = pool.shared.clone();
            // On error `pool` is dropped, which stops and joins the workers started so far.
            let worker =
                std::thread::Builder::new().name(format!("gemma-worker-{i}")).spawn(move || worker_loop(&shared))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Threads taking part in each region.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every `i` in `0..n_tasks`, spread over the pool; returns when all calls have returned.
    /// If a call panics, the other tasks still run, and once all have returned the first panic resumes here
    /// (the workers survive it).
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        assert!(n_tasks < 1 << 32, "{n_tasks} tasks do not fit the ticket");
        let _entry = self.entry.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        // SAFETY: a worker calls the job only after claiming one of this region's tasks (`claim` checks the
        // generation), and this function neither returns nor unwinds before every task has finished
        // (`done == n_tasks` below; `drain` counts a task that panicked as finished and keeps its panic for
        // the end), so `f` outlives every call.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        let gen = (sh.generation.load(Ordering::SeqCst) as u32).wrapping_add(1);
        *sh.region.lock().unwrap_or_else(|e| e.into_inner()) = Some((job, n_tasks, gen));
        sh.done.store(0, Ordering::SeqCst);
        sh.ticket.store((gen as u64) << 32, Ordering::SeqCst);
        sh.generation.store(gen as u64, Ordering::SeqCst);
        if sh.parked.load(Ordering::SeqCst) > 0 {
            let _g = sh.park_lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        drain(sh, job, n_tasks, gen);
        // A task still running elsewhere is usually a few microseconds from done; if its thread was descheduled
        // (more threads than cores), yielding lets it finish instead of burning this core.
        let mut spins = 0u32;
        while sh.done.load(Ordering::Acquire) < n_tasks {
            spins += 1;
            if spins < 1 << 10 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *sh.region.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(payload) = sh.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::panic::resume_unwind(payload);
        }
    }

    /// Splits `0..n` into about `4 * n_threads` contiguous ranges of at least `min_chunk` and runs `f(range)` on
    /// each.
    pub fn for_ranges(&self, n: usize, min_chunk: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let target = self.n_threads() * 4;
        let chunk = n.div_ceil(target).max(min_chunk.max(1));
        let n_chunks = n.div_ceil(chunk);
        self.run(n_chunks, &|c| f(c * chunk..((c + 1) * chunk).min(n)));
    }
}

impl ThreadPool {
    /// Splits `data` into consecutive pieces of `chunk` elements (the last may be shorter) and runs
    /// `f(piece_index, piece)` on each, in parallel.
    pub fn for_chunks_mut<T: Send>(&self, data: &mut [T], chunk: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
        let chunk = chunk.max(1);
        let len = data.len();
        let shared = SharedMut::new(data);
        self.run(len.div_ceil(chunk), &|i| {
            // SAFETY: piece i covers [i*chunk, min((i+1)*chunk, len)), disjoint from every other piece.
            let piece = unsafe { shared.slice(i * chunk..((i + 1) * chunk).min(len)) };
            f(i, piece);
        });
    }
}

/// Claims and runs tasks of region `gen` until none are left. A task that panics counts as done (so the
/// caller's wait ends) and its panic is kept for the caller.
fn drain(sh: &Shared, job: Job, n_tasks: usize, gen: u32) {
    while let Some(i) = claim(sh, n_tasks, gen) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(i))) {
            sh.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
        }
        sh.done.fetch_add(1, Ordering::Release);
    }
}

/// The next task index of region `gen`, or `None` when its tasks are all taken or a later region has begun.
fn claim(sh: &Shared, n_tasks: usize, gen: u32) -> Option<usize> {
    let mut t = sh.ticket.load(Ordering::Acquire);
    loop {
        let i = (t & 0xffff_ffff) as usize;
        if (t >> 32) as u32 != gen || i >= n_tasks {
            return None;
        }
        match sh.ticket.compare_exchange_weak(t, t + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(i),
            Err(now) => t = now,
        }
    }
}

/// Waits until the generation moves past `seen` (spinning first, then parked). `None` on shutdown.
fn wait_for_region(sh: &Shared, seen: u64) -> Option<u64> {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if sh.shutdown.load(Ordering::Acquire) {
            return None;
        }
        let g = sh.generation.load(Ordering::SeqCst);
        if g != seen {
            return Some(g);
        }
        spins += 1;
        if spins < 1 << 10 {
            std::hint::spin_loop();
            continue;
        }
        if start.elapsed() < SPIN {
            // Past a short spin, yield between checks so an oversubscribed core still runs the threads we wait on.
            std::thread::yield_now();
            continue;
        }
        let mut guard = sh.park_lock.lock().unwrap_or_else(|e| e.into_inner());
        sh.parked.fetch_add(1, Ordering::SeqCst);
        // The caller bumps the generation before reading `parked`, so either we see the new generation here
        // or the caller sees us parked and notifies under the lock.
        while sh.generation.load(Ordering::SeqCst) == seen && !sh.shutdown.load(Ordering::SeqCst) {
            guard = sh.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        sh.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker_loop(sh: &Shared) {
    let mut seen = 0u64;
    while let Some(g) = wait_for_region(sh, seen) {
        seen = g;
        let region = *sh.region.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((job, n_tasks, gen)) = region {
            drain(sh, job, n_tasks, gen);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.park_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
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
        SharedMut { ptr: s.as_mut_ptr(), len: s.len() }
    }

    /// # Safety
    /// No two live slices obtained from the same `SharedMut` may overlap, and the original buffer must outlive them.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: std::ops::Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len, "SharedMut range out of bounds");
        // SAFETY: bounds checked above; disjointness is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.end - range.start) }
    }

    /// The buffer's start, for kernels that write a strided part of it (the same disjointness contract).
    pub fn ptr(&self) -> *mut T {
        self.ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that panics, on the caller or on a worker: `run` waits for every other task, then re-raises the
    /// panic; no task runs after `run` has unwound, and the pool keeps working.
    #[test]
    fn a_panicking_task_unwinds_the_caller_after_every_task() {
        let pool = ThreadPool::new(3);
        for bad in [0usize, 37, 99] {
            let calls = AtomicUsize::new(0);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(100, &|i| {
                    std::thread::sleep(Duration::from_micros(200));
                    calls.fetch_add(1, Ordering::SeqCst);
                    assert!(i != bad, "task {i} fails");
                });
            }));
            let message = result.expect_err("the panic reaches the caller");
            let text = message.downcast_ref::<String>().map(String::as_str).unwrap_or("");
            assert_eq!(text, format!("task {bad} fails"));
            let after = calls.load(Ordering::SeqCst);
            assert_eq!(after, 100, "every task ran before the caller unwound");
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(calls.load(Ordering::SeqCst), after);
            let again = AtomicUsize::new(0);
            pool.run(50, &|_| {
                again.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(again.load(Ordering::SeqCst), 50, "the pool works after a panic");
        }
    }

    #[test]
    fn too_many_threads_is_an_error() {
        let err = ThreadPool::try_new(MAX_THREADS + 1).err().expect("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("more than the 512"), "{err}");
    }

    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            for n in [0, 1, 2, 7, 100] {
                let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "threads {threads} n {n}");
            }
        }
    }

    #[test]
    fn many_back_to_back_regions_and_parked_workers() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for round in 0..5_000 {
            pool.run(5, &|i| {
                total.fetch_add(i + 1, Ordering::Relaxed);
            });
            if round % 1_000 == 0 {
                // Let the workers park, then wake them with the next region.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        assert_eq!(total.load(Ordering::Relaxed), 5_000 * 15);
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

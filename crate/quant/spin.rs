//! The threaded wasm build's parallel-for: the mat-vecs' rows split among the engine's
//! thread and helpers that spin between mat-vecs instead of sleeping.
//!
//! Why not rayon alone, as natively: a decode step is a few hundred mat-vecs of tens of
//! microseconds each, with serial work (norms, RoPE, attention) between them. rayon's
//! workers go to sleep as soon as they run out of work (their back-off yields, and
//! `yield_now` does nothing in wasm), so each mat-vec woke a sleeping worker
//! (`Atomics.notify`) and then put the engine's thread to sleep until the pool had finished
//! (it is not one of the pool's threads, so it only waits): two wake-ups, tens of
//! microseconds each in a browser, per mat-vec — the threaded build decoded SmolLM2-135M
//! slower than the single-thread one. Here the engine's thread takes tasks itself, and the
//! helpers (long-running rayon jobs, one per extra thread) watch one atomic word between
//! mat-vecs; a helper that has seen no work for [`SPIN_LIMIT`] rounds (a few ms) returns, so
//! an idle engine burns no CPU, and the next mat-vec starts it again (one wake-up).
//!
//! Which thread runs a task never changes its result: each task writes its own rows.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The job being run: its task count (high 32 bits) and the next unclaimed task (low 32
/// bits). A task is claimed by incrementing the low half with a compare-exchange, so a
/// claim is only ever of the current job's tasks.
static CLAIM: AtomicU64 = AtomicU64::new(0);

/// Tasks of the current job that have finished.
static DONE: AtomicUsize = AtomicUsize::new(0);

/// The current job's function: the address of a `&(dyn Fn(usize) + Sync)` on the stack of
/// [`run`], which does not return before every task has finished.
static JOB: AtomicUsize = AtomicUsize::new(0);

/// Set while a job runs: a second caller (another thread, or a task that would start a
/// job itself) runs its tasks serially instead.
static BUSY: AtomicBool = AtomicBool::new(false);

/// Helpers started and not yet returned.
static HELPERS: AtomicUsize = AtomicUsize::new(0);

/// Rounds a helper watches for work before it returns: a few milliseconds (a round is one
/// atomic load; `spin_loop` is a no-op in wasm, a pause natively). Longer than the serial
/// work between two mat-vecs of a step, so helpers stay up through a step.
const SPIN_LIMIT: u32 = 1 << 22;

type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// Run `f(0) .. f(tasks - 1)`, each once, on this thread and up to `helpers` helper
/// threads (rayon jobs); returns when all have finished.
pub(crate) fn run(tasks: usize, helpers: usize, f: &(dyn Fn(usize) + Sync)) {
    if tasks <= 1 || helpers == 0 || tasks >= 1 << 31 || BUSY.swap(true, Ordering::Acquire) {
        (0..tasks).for_each(f);
        return;
    }
    start_helpers(helpers);
    let job: Job<'_> = f;
    JOB.store(&job as *const Job<'_> as usize, Ordering::Relaxed);
    DONE.store(0, Ordering::Relaxed);
    // Publishes JOB and DONE's reset with the job (Release; claims Acquire).
    CLAIM.store((tasks as u64) << 32, Ordering::Release);
    while take_task() {}
    while DONE.load(Ordering::Acquire) < tasks {
        std::hint::spin_loop();
    }
    BUSY.store(false, Ordering::Release);
}

/// Claim one task of the current job and run it; false when none is left.
fn take_task() -> bool {
    loop {
        let word = CLAIM.load(Ordering::Acquire);
        let (tasks, next) = (word >> 32, word & 0xffff_ffff);
        if next >= tasks {
            return false;
        }
        if CLAIM.compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            // SAFETY: the claim succeeded on the current job's word, so JOB (stored before
            // that word was published) is the current job's, and `run` keeps it alive until
            // DONE counts this task.
            let job = unsafe { *(JOB.load(Ordering::Relaxed) as *const Job<'static>) };
            job(next as usize);
            DONE.fetch_add(1, Ordering::Release);
            return true;
        }
    }
}

fn start_helpers(want: usize) {
    let mut alive = HELPERS.load(Ordering::Acquire);
    while alive < want {
        match HELPERS.compare_exchange_weak(alive, alive + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                rayon::spawn(helper);
                alive += 1;
            }
            Err(now) => alive = now,
        }
    }
}

fn helper() {
    let mut idle = 0u32;
    loop {
        if take_task() {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle >= SPIN_LIMIT {
            HELPERS.fetch_sub(1, Ordering::AcqRel);
            // A job published after the last look runs on its caller (and any other helper);
            // the next `run` starts a helper again.
            return;
        }
        std::hint::spin_loop();
    }
}

/// Helpers alive now (tests).
#[cfg(test)]
pub(crate) fn helpers_alive() -> usize {
    HELPERS.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Every task of every job runs exactly once, whichever thread takes it, across jobs of
    /// every size, back to back (helpers spinning) and after the helpers have returned.
    #[test]
    fn every_task_runs_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
        pool.install(|| {
            for round in 0..2 {
                for job in 0..2_000usize {
                    let tasks = 1 + job * 7 % 37;
                    let runs: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
                    let sum = AtomicUsize::new(0);
                    run(tasks, 2, &|i| {
                        runs[i].fetch_add(1, Ordering::Relaxed);
                        sum.fetch_add(i * job, Ordering::Relaxed);
                    });
                    assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1), "round {round} job {job}");
                    assert_eq!(sum.load(Ordering::Relaxed), job * tasks * (tasks - 1) / 2);
                }
                // Idle: the helpers give up and return; the next round starts them again.
                let t0 = std::time::Instant::now();
                while helpers_alive() > 0 {
                    assert!(t0.elapsed().as_secs() < 60, "helpers never returned");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        });
    }
}

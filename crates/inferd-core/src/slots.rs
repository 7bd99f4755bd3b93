//! The inference slots: a fixed set of long-lived OS threads, one per slot
//! (`INFERD_MAX_CONCURRENCY`), that run every model's batches.
//!
//! Why threads of their own rather than a blocking-pool task per batch: the
//! hand-off to tokio's blocking pool, the semaphore and the batcher's own task
//! cost a futex wake and a context switch or two per batch, about a quarter of
//! the CPU of a miss-path request on the LSTM; and a batcher that is a tokio
//! task waits in the same run queue as thousands of connection tasks, so under
//! overload the model sat idle while the reactor answered refusals. Here a
//! model's queue is scheduled onto the ready list when it gets its first job;
//! a free slot thread takes it, forms a batch and runs it in place. The kernel
//! schedules the slot threads beside the runtime's workers, never behind them.
//!
//! A queue with more jobs than one batch holds is put back on the ready list
//! after its batch is formed, so several batches of one model run at once, one
//! per free slot, and models take turns in the order their work arrived.
//!
//! A slot is a token as well as a thread: a batch that costs only
//! microseconds may run on the task that submits it (`try_take`, see
//! `batcher`), holding a slot as a thread would, so that at most `count`
//! batches run at once whoever runs them, and each model's pool of `count`
//! sessions always has one free for a batch that holds a slot.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Work a slot thread can run: a model queue forming and running one batch.
pub(crate) trait Work: Send + Sync + 'static {
    /// Forms and runs one batch.
    fn run(self: Arc<Self>);
}

/// The slot threads and their ready list. Dropping the last handle lets the
/// threads finish what is queued and exit.
pub struct Slots {
    shared: Arc<Shared>,
    count: usize,
    /// Stops batches whose requests were all abandoned (`cancel`).
    watcher: super::cancel::Watcher,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    count: usize,
}

struct State {
    ready: VecDeque<Arc<dyn Work>>,
    /// Slots held: by slot threads running work and by batches run in place.
    running: usize,
    /// Threads parked on `wake`: a notification (a futex syscall) is only
    /// paid when one of them can take the work.
    idle: usize,
    stop: bool,
}

impl Slots {
    /// Starts `count` slot threads (at least one).
    pub(crate) fn new(count: usize) -> Arc<Slots> {
        let count = count.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                running: 0,
                idle: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            count,
        });
        for i in 0..count {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("inferd-slot-{i}"))
                .spawn(move || shared.serve());
            if let Err(e) = spawned {
                // Fewer threads than slots still serves; none would hang every
                // request, which the first thread's error below makes visible.
                tracing::error!(error = %e, slot = i, "could not start an inference thread");
            }
        }
        Arc::new(Slots {
            shared,
            count,
            watcher: super::cancel::Watcher::new(),
        })
    }

    pub(crate) fn watcher(&self) -> &super::cancel::Watcher {
        &self.watcher
    }

    /// How many batches can run at once.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Puts `work` on the ready list; a free slot thread runs it.
    pub(crate) fn schedule(&self, work: Arc<dyn Work>) {
        let mut st = self.shared.lock();
        st.ready.push_back(work);
        let wake = st.idle > 0 && st.running < self.count;
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// A free slot for the caller to run one batch on its own thread, if
    /// there is one; the slot is given back when the guard drops.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Held> {
        let mut st = self.shared.lock();
        if st.running >= self.count || st.stop {
            return None;
        }
        st.running += 1;
        Some(Held {
            slots: self.clone(),
        })
    }
}

/// A slot taken by `try_take`.
pub(crate) struct Held {
    slots: Arc<Slots>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slots.shared.release();
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    /// A poisoned lock only means a thread panicked between two plain field
    /// updates: the list itself is still whole.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve(&self) {
        loop {
            let mut st = self.lock();
            let work = loop {
                if st.running < self.count {
                    if let Some(w) = st.ready.pop_front() {
                        st.running += 1;
                        break w;
                    }
                }
                if st.stop && st.ready.is_empty() {
                    return;
                }
                st.idle += 1;
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                st.idle -= 1;
            };
            drop(st);
            // A panic inside a backend fails that batch's requests (their
            // replies are dropped), not the slot.
            if catch_unwind(AssertUnwindSafe(|| work.run())).is_err() {
                tracing::error!("an inference batch panicked; its requests were failed");
            }
            self.release();
        }
    }

    /// Gives a slot back, waking a parked thread if work waits for one.
    fn release(&self) {
        let mut st = self.lock();
        st.running -= 1;
        let wake = st.idle > 0 && !st.ready.is_empty();
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }
}

/// Adds `nice` to the calling thread's nice value (Linux; elsewhere nothing).
/// Only ever lowers priority, which needs no privilege; threads this thread
/// starts afterwards inherit the value.
// Unsafe: std has no per-thread priority; see SAFETY.
#[allow(unsafe_code)]
pub fn nice_current_thread(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority have no memory effects; on Linux,
    // PRIO_PROCESS with a thread id changes that one thread's nice value. A
    // failure leaves the thread at its priority, which is only less polite.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, (now + nice).min(19));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Puts the calling thread in the kernel's idle scheduling class
/// (`SCHED_IDLE`, Linux): it runs only on a core nothing else wants, and a
/// waking thread of any other class preempts it at once, which a nice value
/// alone does not promise. Where that is refused, it falls back to nice 19.
// Unsafe: std has no scheduling policies; see SAFETY.
#[allow(unsafe_code)]
pub fn idle_priority_current_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler reads the parameter struct, which lives on
    // the stack for the call; pid 0 is the calling thread. A failure leaves
    // the policy as it was.
    let set = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
    };
    #[cfg(not(target_os = "linux"))]
    let set = false;
    if !set {
        nice_current_thread(19);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    struct Count(AtomicUsize, Mutex<mpsc::Sender<()>>);

    impl Work for Count {
        fn run(self: Arc<Self>) {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the first run panics");
            }
            let _ = self.1.lock().unwrap().send(());
        }
    }

    #[test]
    fn work_runs_on_the_threads_and_a_panic_costs_no_slot() {
        let slots = Slots::new(1);
        let (tx, rx) = mpsc::channel();
        let w = Arc::new(Count(AtomicUsize::new(0), Mutex::new(tx)));
        for _ in 0..3 {
            slots.schedule(w.clone());
        }
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(5)).expect("work ran");
        }
        assert_eq!(w.0.load(Ordering::SeqCst), 3);
    }

    /// Blocks its slot thread until told to finish.
    struct Hold(Mutex<mpsc::Receiver<()>>, Mutex<mpsc::Sender<()>>);

    impl Work for Hold {
        fn run(self: Arc<Self>) {
            let _ = self.1.lock().unwrap().send(());
            let _ = self.0.lock().unwrap().recv();
        }
    }

    #[test]
    fn slots_taken_in_place_and_by_threads_never_exceed_the_count() {
        let slots = Slots::new(2);
        let held = slots.try_take().expect("a free slot");
        let (go, wait) = mpsc::channel();
        let (started, running) = mpsc::channel();
        let w = Arc::new(Hold(Mutex::new(wait), Mutex::new(started)));
        slots.schedule(w.clone());
        running
            .recv_timeout(Duration::from_secs(5))
            .expect("a thread took the other slot");
        // Both slots are held: none is free in place, and queued work waits.
        assert!(slots.try_take().is_none());
        slots.schedule(w.clone());
        assert!(running.recv_timeout(Duration::from_millis(50)).is_err());
        // The slot given back in place goes to the waiting work.
        drop(held);
        running
            .recv_timeout(Duration::from_secs(5))
            .expect("the queued work ran once a slot was free");
        assert!(slots.try_take().is_none());
        go.send(()).unwrap();
        go.send(()).unwrap();
    }
}

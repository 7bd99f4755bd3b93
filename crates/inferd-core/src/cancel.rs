//! Stopping a batch nobody is waiting for. A batch runs on a slot thread
//! inside the runtime's own call; when every request in it has passed its
//! deadline (answered 504 already) or its client has gone, the rest of that
//! call is wasted work holding a slot that queued requests need.
//!
//! `RunControl` is the handle a backend gives its runtime's stop switch to
//! (ONNX Runtime: `RunOptions::terminate`, which the runtime checks between
//! graph nodes). `Watcher` is one thread that looks, every few milliseconds,
//! at the batches that have run longer than that, and pulls the switch of any
//! batch whose requests are all abandoned. Short batches, the common case,
//! finish before it ever looks at them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the watcher looks, and how old a batch must be for it to look.
const POLL: Duration = Duration::from_millis(5);

type Hook = Box<dyn FnOnce() + Send>;

/// A run's stop switch. The backend registers what stops its runtime
/// (`on_cancel`) just before the call and clears it (`finished`) just after,
/// so a late `cancel` can never stop the next run.
#[derive(Default)]
pub struct RunControl {
    cancelled: AtomicBool,
    hook: Mutex<Option<Hook>>,
}

impl RunControl {
    /// A batch's switch, before its run starts.
    pub fn new() -> Self {
        Self::default()
    }

    fn hook(&self) -> MutexGuard<'_, Option<Hook>> {
        self.hook.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the run if one is registered; marks it cancelled either way.
    pub fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::AcqRel) {
            let hook = self.hook().take();
            if let Some(stop) = hook {
                stop();
            }
        }
    }

    /// Whether the batch was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Registers `stop` for the run about to start; runs it at once if the
    /// batch was cancelled already.
    pub fn on_cancel(&self, stop: impl FnOnce() + Send + 'static) {
        let mut hook = self.hook();
        if self.is_cancelled() {
            drop(hook);
            stop();
        } else {
            *hook = Some(Box::new(stop));
        }
    }

    /// The run returned: nothing is left to stop.
    pub fn finished(&self) {
        self.hook().take();
    }
}

/// A running batch, as the watcher sees it.
pub(crate) trait Watched: Send + Sync {
    /// The batch's switch.
    fn control(&self) -> &RunControl;
    /// True when no one is waiting for the batch's results any more.
    fn abandoned(&self) -> bool;
}

struct Entry {
    id: u64,
    since: Instant,
    batch: Arc<dyn Watched>,
}

#[derive(Default)]
struct State {
    running: Vec<Entry>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    next_id: AtomicU64,
    cancelled: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve(&self) {
        let mut st = self.lock();
        loop {
            while st.running.is_empty() && !st.stop {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.stop {
                return;
            }
            st = self
                .wake
                .wait_timeout(st, POLL)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            let now = Instant::now();
            let due: Vec<Arc<dyn Watched>> = st
                .running
                .iter()
                .filter(|e| now.duration_since(e.since) >= POLL)
                .map(|e| e.batch.clone())
                .collect();
            if due.is_empty() {
                continue;
            }
            // The checks lock each batch's jobs: not under the watcher's lock,
            // which every batch start and end takes.
            drop(st);
            for b in due {
                if !b.control().is_cancelled() && b.abandoned() {
                    // Counted first: whoever sees the stop sees the count.
                    self.cancelled.fetch_add(1, Ordering::AcqRel);
                    b.control().cancel();
                }
            }
            st = self.lock();
        }
    }
}

/// The watcher thread; it stops when this handle is dropped.
pub(crate) struct Watcher {
    shared: Arc<Shared>,
}

/// Keeps a batch watched until dropped (when its call returns).
pub(crate) struct Watching<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(i) = st.running.iter().position(|e| e.id == self.id) {
            st.running.swap_remove(i);
        }
    }
}

impl Watcher {
    /// A watcher with nothing to watch yet.
    pub(crate) fn new() -> Watcher {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("inferd-cancel".into())
            .spawn(move || s.serve())
        {
            // Without it nothing is cancelled; everything else still works.
            tracing::error!(error = %e, "could not start the batch-cancelling thread");
        }
        Watcher { shared }
    }

    /// Watches `batch` until the returned guard is dropped.
    pub(crate) fn watch(&self, batch: Arc<dyn Watched>) -> Watching<'_> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut st = self.shared.lock();
        st.running.push(Entry {
            id,
            since: Instant::now(),
            batch,
        });
        let first = st.running.len() == 1;
        drop(st);
        if first {
            self.shared.wake.notify_one();
        }
        Watching {
            shared: &self.shared,
            id,
        }
    }

    /// Batches cancelled so far.
    #[cfg(test)]
    fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Ordering::Acquire)
    }
}

impl Default for Watcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Batch {
        control: RunControl,
        gone: AtomicBool,
    }

    impl Watched for Batch {
        fn control(&self) -> &RunControl {
            &self.control
        }
        fn abandoned(&self) -> bool {
            self.gone.load(Ordering::Acquire)
        }
    }

    #[test]
    fn an_abandoned_batch_is_stopped_and_a_wanted_one_is_not() {
        let w = Watcher::new();
        let batch = Arc::new(Batch {
            control: RunControl::new(),
            gone: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        batch.control.on_cancel(move || {
            let _ = tx.send(());
        });
        let _watching = w.watch(batch.clone());
        // Wanted: left running.
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        batch.gone.store(true, Ordering::Release);
        rx.recv_timeout(Duration::from_secs(2))
            .expect("stopped once abandoned");
        assert!(batch.control.is_cancelled());
        assert_eq!(w.cancelled(), 1);
    }

    #[test]
    fn a_cancel_after_the_run_finished_stops_nothing() {
        let c = RunControl::new();
        let (tx, rx) = mpsc::channel();
        c.on_cancel(move || {
            let _ = tx.send(());
        });
        c.finished();
        c.cancel();
        assert!(rx.try_recv().is_err());
        // And a run registered after a cancel is stopped at once.
        let c = RunControl::new();
        c.cancel();
        let (tx, rx) = mpsc::channel();
        c.on_cancel(move || {
            let _ = tx.send(());
        });
        assert!(rx.try_recv().is_ok());
    }
}

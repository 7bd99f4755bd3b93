//! Admission control: a bounded number of inferences run at once (the slot
//! threads, `slots`, each running one batch at a time), and a bounded number of requests
//! may wait for the model (the queue); past the bound a request is refused at
//! once (`QueueFull`) rather than queued until its client has given up. Deadlines end
//! every wait (see `batcher`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::error::CoreError;
use super::slots::Slots;
use crate::metrics::Metrics;

struct Queue {
    waiting: AtomicUsize,
    max: usize,
    metrics: Arc<Metrics>,
}

/// The inference slots and the bounded queue in front of them, shared by every model.
pub struct Admission {
    slots: Arc<Slots>,
    queue: Arc<Queue>,
}

/// One request's place in the queue; dropping it frees the place. The batcher
/// drops it when the request's instances are taken into a batch.
pub struct QueueTicket {
    queue: Arc<Queue>,
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
        self.queue.metrics.queue_depth.dec();
    }
}

impl Admission {
    /// `max_concurrency` slot threads and a queue of `max_queue` places.
    pub fn new(max_concurrency: usize, max_queue: usize, metrics: Arc<Metrics>) -> Self {
        Admission {
            slots: Slots::new(max_concurrency),
            queue: Arc::new(Queue {
                waiting: AtomicUsize::new(0),
                max: max_queue,
                metrics,
            }),
        }
    }

    /// A place in the queue, or `QueueFull` at once.
    pub fn enter(&self) -> Result<QueueTicket, CoreError> {
        let q = &self.queue;
        let before = q.waiting.fetch_add(1, Ordering::AcqRel);
        q.metrics.queue_depth.inc();
        let ticket = QueueTicket { queue: q.clone() };
        if before >= q.max {
            return Err(CoreError::QueueFull(before));
        }
        Ok(ticket)
    }

    /// The inference slots, shared by every model's batcher.
    pub fn slots(&self) -> Arc<Slots> {
        self.slots.clone()
    }

    /// Whether `enter` would refuse now (advisory: others may enter or leave
    /// the next moment).
    pub fn is_full(&self) -> bool {
        self.waiting() >= self.queue.max
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.queue.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_bound_refuses_at_once_and_frees_on_drop() {
        let a = Admission::new(1, 2, Arc::new(Metrics::default()));
        let t1 = a.enter().expect("first");
        let _t2 = a.enter().expect("second");
        assert_eq!(a.enter().err(), Some(CoreError::QueueFull(2)));
        assert_eq!(a.waiting(), 2);
        drop(t1);
        assert!(a.enter().is_ok());
    }
}

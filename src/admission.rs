//! Admission control: a bounded number of inferences run at once (a semaphore),
//! a bounded number of requests may wait for one (the queue), and every wait ends
//! at the request's deadline.
//!
//! Shedding at the door is what keeps latency bounded under overload: a request
//! that cannot start before its deadline is better refused at once (429, with a
//! hint to retry) than queued until the client has given up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("the wait queue is full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("the deadline passed while waiting for an inference slot")]
    Deadline,
}

pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queue: usize,
    metrics: Arc<Metrics>,
}

/// Holds one inference slot; dropping it frees the slot.
pub struct Permit {
    _permit: OwnedSemaphorePermit,
}

/// Decrements the waiting count however the wait ends (granted, timed out or the
/// request future dropped because the client went away).
struct WaitGuard<'a>(&'a Admission);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.queue_depth.dec();
    }
}

impl Admission {
    pub fn new(max_concurrency: usize, max_queue: usize, metrics: Arc<Metrics>) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            waiting: AtomicUsize::new(0),
            max_queue,
            metrics,
        }
    }

    /// Waits for a slot until `deadline`; refuses at once when the queue is full.
    pub async fn acquire(&self, deadline: Instant) -> Result<Permit, AdmissionError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(Permit { _permit: p });
        }
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        self.metrics.queue_depth.inc();
        let _guard = WaitGuard(self);
        if before >= self.max_queue {
            return Err(AdmissionError::QueueFull(before));
        }
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Permit { _permit: p }),
            // The semaphore is never closed, so only the deadline can end the wait.
            Ok(Err(_)) | Err(_) => Err(AdmissionError::Deadline),
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn admission(c: usize, q: usize) -> Admission {
        Admission::new(c, q, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn queue_bound_refuses_at_once() {
        let a = Arc::new(admission(1, 1));
        let far = Instant::now() + Duration::from_secs(5);
        let held = a.acquire(far).await.expect("first slot");
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.acquire(far).await.map(|_| ()) });
        while a.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        assert_eq!(
            a.acquire(far).await.err(),
            Some(AdmissionError::QueueFull(1))
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        drop(held);
        assert!(waiter.await.expect("join").is_ok());
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test]
    async fn deadline_ends_the_wait() {
        let a = admission(1, 8);
        let _held = a
            .acquire(Instant::now() + Duration::from_secs(5))
            .await
            .expect("slot");
        let r = a.acquire(Instant::now() + Duration::from_millis(20)).await;
        assert_eq!(r.err(), Some(AdmissionError::Deadline));
        assert_eq!(a.waiting(), 0);
    }
}

//! The circuit breaker in front of Redis.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Opens after `THRESHOLD` consecutive failures and stays open for a back-off
/// period that doubles each time it re-opens without a success in between
/// (capped at 16x). While open, calls are skipped; calls after the period are
/// trials, and one success closes it.
///
/// The back-off grows per opening, not per failure: under load one Redis stall
/// fails every call in flight at once, and counting each of those as a failed
/// trial would jump straight to the longest back-off and keep the shared cache
/// off for many seconds after a hiccup of a few milliseconds.
pub(crate) struct Breaker {
    failures: AtomicU32,
    /// Openings since the last success: the exponent of the back-off.
    openings: AtomicU32,
    open_until_ms: AtomicU64,
    base: Duration,
    epoch: Instant,
}

const THRESHOLD: u32 = 3;

impl Breaker {
    pub(crate) fn new(base: Duration) -> Self {
        Breaker {
            failures: AtomicU32::new(0),
            openings: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            base,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn is_open(&self) -> bool {
        self.now_ms() < self.open_until_ms.load(Ordering::Acquire)
    }

    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.openings.store(0, Ordering::Release);
    }

    pub(crate) fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        // Calls that were already in flight when it opened do not extend it.
        if n < THRESHOLD || self.is_open() {
            return;
        }
        let k = self.openings.fetch_add(1, Ordering::AcqRel).min(4);
        let until = self.now_ms() + (self.base * (1u32 << k)).as_millis() as u64;
        self.open_until_ms.store(until, Ordering::Release);
    }

    #[cfg(test)]
    fn open_for_ms(&self) -> u64 {
        self.open_until_ms
            .load(Ordering::Acquire)
            .saturating_sub(self.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_repeated_failures() {
        let b = Breaker::new(Duration::from_secs(60));
        b.failure();
        b.failure();
        assert!(!b.is_open());
        b.failure();
        assert!(b.is_open());
        let b = Breaker::new(Duration::from_millis(1));
        for _ in 0..3 {
            b.failure();
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(!b.is_open(), "half-open after the back-off");
    }

    #[test]
    fn a_burst_of_failures_opens_once_and_trials_double_the_back_off() {
        let b = Breaker::new(Duration::from_secs(10));
        // 50 calls in flight fail together: one opening at the base back-off.
        for _ in 0..50 {
            b.failure();
        }
        let first = b.open_for_ms();
        assert!((9_000..=10_000).contains(&first), "{first}");
        // The period ends and the trial fails: twice as long.
        b.open_until_ms.store(0, Ordering::Release);
        b.failure();
        let second = b.open_for_ms();
        assert!((19_000..=20_000).contains(&second), "{second}");
        // A success resets both the count and the back-off.
        b.open_until_ms.store(0, Ordering::Release);
        b.success();
        for _ in 0..3 {
            b.failure();
        }
        assert!(b.open_for_ms() <= 10_000);
    }
}

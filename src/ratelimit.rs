//! Rate-limited warnings. A fault that repeats (the database down, descriptors
//! exhausted) would otherwise log once per batch or per accept: thousands of
//! lines a second that bury everything else and cost the CPU the service is
//! short of. `Every` lets the first occurrence through, then at most one per
//! interval, each saying how many were held back since the last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The interval repeated warnings use unless a site has reason to differ.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// A site's limiter, for statics: `static X: LazyLock<Every> = every();`.
pub const fn every() -> std::sync::LazyLock<Every> {
    std::sync::LazyLock::new(|| Every::new(INTERVAL))
}

pub struct Every {
    interval_ms: u64,
    start: Instant,
    /// Milliseconds since `start` of the last line let through, plus one
    /// (0: none yet).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Every {
    pub fn new(interval: Duration) -> Self {
        Every {
            interval_ms: interval.as_millis() as u64,
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many
    /// were suppressed since the last one logged; `None` to stay quiet.
    pub fn tick(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Acquire);
        if (last == 0 || now >= last + self.interval_ms)
            && self
                .last
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_through_then_one_per_interval_with_the_count() {
        let e = Every::new(Duration::from_millis(50));
        assert_eq!(e.tick(), Some(0));
        for _ in 0..99 {
            assert_eq!(e.tick(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(e.tick(), Some(99));
        assert_eq!(e.tick(), None);
    }
}

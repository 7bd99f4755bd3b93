//! Rate-limited warnings. A fault that repeats (the database down, descriptors
//! exhausted) would otherwise log once per batch or per accept: thousands of
//! lines a second that bury everything else and cost the CPU the service is
//! short of. `Every` lets the first occurrence through, then at most one per
//! interval, each saying how many were held back since the last. What a burst
//! held back after its last line is reported by `report_held_back`, which the
//! server calls once per interval, so no count is left unsaid.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval repeated warnings use.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// A site's limiter, for statics:
/// `static SPILLED: LazyLock<Every> = every!("prediction log spilled to disk");`.
#[macro_export]
macro_rules! every {
    ($site:expr) => {
        std::sync::LazyLock::new(|| {
            $crate::ratelimit::Every::new($site, $crate::ratelimit::INTERVAL)
        })
    };
}
pub use every;

/// Every limiter that has ticked, for `report_held_back`.
static SITES: Mutex<Vec<&'static Every>> = Mutex::new(Vec::new());

/// Logs, for each site, the occurrences held back since its last line, once
/// its interval has passed: the tail of a burst that ended.
pub fn report_held_back() {
    report(false);
}

/// Logs every held-back count now, interval or not: at exit, where the last
/// burst's tail would otherwise never be told.
pub fn report_all_held_back() {
    report(true);
}

fn report(all: bool) {
    let sites = SITES.lock().map(|s| s.clone()).unwrap_or_default();
    for e in sites {
        if let Some(n) = e.flush(all) {
            tracing::warn!(site = e.site, suppressed = n, "repeated warnings held back");
        }
    }
}

/// One call site's limiter.
pub struct Every {
    site: &'static str,
    registered: AtomicBool,
    interval_ms: u64,
    start: Instant,
    /// Milliseconds since `start` of the last line let through, plus one
    /// (0: none yet).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Every {
    /// A limiter for `site` that lets one line through per `interval`.
    pub fn new(site: &'static str, interval: Duration) -> Self {
        Every {
            site,
            registered: AtomicBool::new(false),
            interval_ms: interval.as_millis() as u64,
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many
    /// were suppressed since the last one logged; `None` to stay quiet.
    pub fn tick(&'static self) -> Option<u64> {
        if !self.registered.swap(true, Ordering::AcqRel) {
            if let Ok(mut sites) = SITES.lock() {
                sites.push(self);
            }
        }
        self.tick_local()
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    /// The held-back count, when there is one and the interval has passed
    /// since the last line (or `now`); it starts a new interval.
    fn flush(&self, now_anyway: bool) -> Option<u64> {
        let now = self.now();
        let last = self.last.load(Ordering::Acquire);
        if self.suppressed.load(Ordering::Acquire) == 0
            || (!now_anyway && now < last + self.interval_ms)
        {
            return None;
        }
        self.last
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(self.suppressed.swap(0, Ordering::AcqRel)).filter(|n| *n > 0)
    }

    fn tick_local(&self) -> Option<u64> {
        let now = self.now();
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
        let e = Every::new("test", Duration::from_millis(50));
        assert_eq!(e.tick_local(), Some(0));
        for _ in 0..99 {
            assert_eq!(e.tick_local(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(e.tick_local(), Some(99));
        assert_eq!(e.tick_local(), None);
    }

    #[test]
    fn the_tail_of_a_burst_is_reported_once_its_interval_passes() {
        let e = Every::new("test", Duration::from_millis(50));
        assert_eq!(e.tick_local(), Some(0));
        for _ in 0..7 {
            assert_eq!(e.tick_local(), None);
        }
        // Not before the interval: the next line may still come.
        assert_eq!(e.flush(false), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(e.flush(false), Some(7));
        assert_eq!(e.flush(false), None);
    }

    #[test]
    fn at_exit_the_tail_is_reported_without_waiting() {
        let e = Every::new("test", Duration::from_secs(3600));
        assert_eq!(e.tick_local(), Some(0));
        for _ in 0..3 {
            assert_eq!(e.tick_local(), None);
        }
        assert_eq!(e.flush(false), None);
        assert_eq!(e.flush(true), Some(3));
        assert_eq!(e.flush(true), None);
    }
}

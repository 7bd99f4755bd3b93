//! Queueing by time: how many instances a model version's queue may hold,
//! from what the model measurably drains.
//!
//! A static queue bound is a number of requests, but what a client feels is
//! time: 512 queued requests are 100 ms for one model and a minute for
//! another, and the same model's cost changes with the machine it shares. So
//! each version's queue keeps two measurements, both taken where the batches
//! run:
//! - the **drain rate**, instances completed per second, measured over short
//!   windows in which the queue never emptied (only those say what the model
//!   can do; a window that ran dry says only "at least this much", as does
//!   one batch's size over its time, and may raise the estimate but never
//!   lower it);
//! - the **batch rate**, one batch's size over its service time (a moving
//!   average), from which the time of a full batch is estimated; and the
//!   service time's minimum over the last few seconds, which is the model's
//!   unloaded latency.
//!
//! From them the queue's limit is `drain × target` instances (Little's law:
//! the queue that drains within the target), never less than one full batch,
//! so that a model is never starved of work. The target is the manifest's or
//! the operator's if set, else the estimated time of two full batches (the
//! batch size over the batch rate; at low load, when batches are small and
//! cost more per instance, this errs long, so an idle server refuses
//! nothing), within [1 ms, half the request deadline]: a request that would
//! wait longer than that before it starts is refused at once (CoDel's
//! insight, applied at the door rather than at dequeue), and under any
//! overload the admitted requests keep a latency of about three batches
//! while the rest get a fast 429. The queue still holds a full batch for the
//! next free slot, so the model never idles for want of work. Why two: with
//! one, two clients each sending requests of two batches (the default
//! instance limit is 64, text batches are 32) were refused now and then on a
//! server they kept merely busy.
//!
//! Why not a gradient controller (Netflix's Gradient2, Envoy's adaptive
//! concurrency) over request latency: with dynamic batching, latency rises
//! with load by design (bigger batches take longer and are cheaper per
//! instance), so latency over its unloaded minimum reads as congestion when
//! it is efficiency, and such a controller shrinks the batches that give the
//! throughput. The wait in the queue is the part that is pure congestion, and
//! it is what this bounds.
//!
//! Everything here is plain state driven by the caller's clock (`Instant`s
//! passed in), so its behaviour is tested without sleeping.

use std::time::{Duration, Instant};

/// How a model's queue limit is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// False: only the global bound (`INFERD_MAX_QUEUE`) limits the queue,
    /// as before adaptive admission.
    pub adaptive: bool,
    /// The longest a request may expect to wait in the queue; `None`: the
    /// estimated time of two full batches.
    pub target: Option<Duration>,
    /// Batches measured to take less than this on average run on the task
    /// that submits them, in a free slot, instead of on a slot thread (see
    /// `batcher`); zero: always on a slot thread.
    pub in_place_under: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            adaptive: true,
            target: None,
            in_place_under: Duration::ZERO,
        }
    }
}

/// The shortest derived target: below it, timer and scheduling noise
/// dominate the measurement.
pub const MIN_TARGET: Duration = Duration::from_millis(1);
/// Derived target, in batch service times.
const SERVICE_MULTIPLE: f64 = 2.0;
/// A drain-rate sample spans at least this long.
const RATE_WINDOW: Duration = Duration::from_millis(25);
/// The unloaded latency is the minimum over the last one or two of these.
const MIN_WINDOW: Duration = Duration::from_secs(5);
/// Weight of a new drain sample: about four windows (100 ms) to follow a
/// change in the model's cost.
const DRAIN_WEIGHT: f64 = 0.5;
/// Weight of a new service-time sample.
const SERVICE_WEIGHT: f64 = 0.2;

/// A refusal by time: what the queue holds and how long it would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shed {
    /// Instances waiting now.
    pub queued: usize,
    /// The queue's limit now, in instances.
    pub limit: usize,
    /// How long this request would have waited before it started.
    pub wait: Duration,
    /// The queue's target wait.
    pub target: Duration,
    /// How long the queue takes to drain at the measured rate: when a retry
    /// has a fair chance.
    pub retry_after: Duration,
}

/// One model version's queue accounting; the batcher holds it under its
/// queue lock.
#[derive(Debug)]
pub(crate) struct Governor {
    tuning: Tuning,
    /// One full batch: the smallest limit.
    batch: usize,
    max_target: Duration,
    queued: usize,
    /// Instances per second; `None` until the first window closes.
    drain: Option<f64>,
    /// Seconds per batch, moving average (the unloaded latency's source is
    /// the minimum below; this one is kept for the target before the first
    /// batch rate).
    service: Option<f64>,
    /// Instances per second of one batch (its size over its time), moving
    /// average: what one slot does with the batches it gets.
    batch_rate: Option<f64>,
    window: Option<Window>,
    min_now: Option<Duration>,
    min_prev: Option<Duration>,
    min_since: Option<Instant>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    done: usize,
    backlogged: bool,
}

impl Governor {
    /// A queue whose batches take up to `batch` instances, for requests with
    /// a deadline of `deadline`.
    pub(crate) fn new(tuning: Tuning, batch: usize, deadline: Duration) -> Self {
        Governor {
            tuning,
            batch: batch.max(1),
            max_target: (deadline / 2).max(MIN_TARGET),
            queued: 0,
            drain: None,
            service: None,
            batch_rate: None,
            window: None,
            min_now: None,
            min_prev: None,
            min_since: None,
        }
    }

    /// Lets a request of `n` instances into the queue, or says why not. What
    /// counts is the work queued *ahead* of it, which sets when it starts: a
    /// large request's later parts wait behind its own first ones, and that
    /// is its size, not congestion. (Counted with its own size, two clients
    /// sending requests of two batches each were refused on an idle server.)
    /// So an empty queue always admits, and no model starves however slow
    /// it measured; the queue may pass its limit by one request.
    pub(crate) fn admit(&mut self, n: usize) -> Result<(), Shed> {
        if self.queued <= self.limit() {
            self.queued += n;
            return Ok(());
        }
        Err(self.shed())
    }

    /// The refusal of a request now.
    pub(crate) fn shed(&self) -> Shed {
        let drain = self.drain.unwrap_or(f64::INFINITY);
        let secs = |k: usize| Duration::try_from_secs_f64(k as f64 / drain).unwrap_or_default();
        Shed {
            queued: self.queued,
            limit: self.limit(),
            wait: secs(self.queued),
            target: self.target(),
            retry_after: secs(self.queued),
        }
    }

    /// `n` instances left the queue (taken into a batch, or dropped).
    pub(crate) fn taken(&mut self, n: usize) {
        self.queued = self.queued.saturating_sub(n);
    }

    /// A batch of `n` instances finished at `now` after running `took`.
    pub(crate) fn completed(&mut self, n: usize, took: Duration, now: Instant) {
        let s = took.as_secs_f64();
        let ewma = |old: Option<f64>, new: f64| match old {
            Some(v) => v + SERVICE_WEIGHT * (new - v),
            None => new,
        };
        self.service = Some(ewma(self.service, s));
        if s > 0.0 {
            self.batch_rate = Some(ewma(self.batch_rate, n as f64 / s));
        }
        if self
            .min_since
            .is_none_or(|t| now.duration_since(t) >= MIN_WINDOW)
        {
            self.min_prev = self.min_now.take();
            self.min_since = Some(now);
        }
        self.min_now = Some(self.min_now.map_or(took, |m| m.min(took)));

        let Some(w) = &mut self.window else {
            // Instances finished before a window opens are not in it.
            self.window = Some(Window {
                start: now,
                done: 0,
                backlogged: true,
            });
            return;
        };
        w.done += n;
        w.backlogged &= self.queued > 0;
        let elapsed = now.duration_since(w.start);
        if elapsed < RATE_WINDOW {
            return;
        }
        let rate = w.done as f64 / elapsed.as_secs_f64();
        // A window that ran dry measured the arrivals, not the model: at low
        // load that is a few requests a second, and a limit made from it
        // would refuse the first burst of an idle server. Its floor is what
        // one slot did per batch.
        let floor = rate.max(self.batch_rate.unwrap_or(0.0));
        self.drain = Some(match (self.drain, w.backlogged) {
            (None, true) => rate,
            (Some(d), true) => d + DRAIN_WEIGHT * (rate - d),
            (None, false) => floor,
            (Some(d), false) => d.max(floor),
        });
        *w = Window {
            start: now,
            done: 0,
            backlogged: true,
        };
    }

    /// The queue's limit in instances; unbounded (the global bound applies)
    /// when static or before the first measurement.
    pub(crate) fn limit(&self) -> usize {
        match (self.tuning.adaptive, self.drain) {
            (true, Some(d)) => {
                let k = d * self.target().as_secs_f64();
                (k as usize).max(self.batch)
            }
            _ => usize::MAX,
        }
    }

    /// The queue's target wait.
    pub(crate) fn target(&self) -> Duration {
        if let Some(t) = self.tuning.target {
            return t;
        }
        let full_batch = match self.batch_rate {
            Some(r) if r > 0.0 => self.batch as f64 / r,
            _ => self.service.unwrap_or(0.0),
        };
        let derived = full_batch * SERVICE_MULTIPLE;
        Duration::try_from_secs_f64(derived)
            .unwrap_or(MIN_TARGET)
            .clamp(MIN_TARGET, self.max_target)
    }

    /// Whether the next request would be refused.
    #[cfg(test)]
    pub(crate) fn full(&self) -> bool {
        self.queued > self.limit()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Instances per second, once measured.
    pub(crate) fn drain(&self) -> Option<f64> {
        self.drain
    }

    /// The shortest batch service time lately: the model's unloaded latency.
    pub(crate) fn unloaded(&self) -> Option<Duration> {
        match (self.min_now, self.min_prev) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
#[path = "governor_tests.rs"]
mod tests;

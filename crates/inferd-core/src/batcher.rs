//! Dynamic batching: concurrent requests for one model are merged into one
//! backend call of up to `max_batch_size` instances.
//!
//! Each model version has a queue. Its first job puts the queue on the slots'
//! ready list (`slots`); a free slot thread takes whatever is queued, up to
//! `max_batch_size`, waiting at most `max_batch_delay` for more (0: take what
//! is there, never wait), and runs the batch in place. Under load, jobs pile up
//! while the slots are busy, so batches form with no added delay; an idle
//! server answers at once. Jobs whose deadline has passed, or whose client has
//! gone, are dropped before the model runs. A queue holding more than one batch
//! goes back on the ready list, so several batches of one model can run at
//! once, one per slot.
//!
//! Optionally (`Tuning::in_place_under`, off by default), a model whose
//! batches take microseconds on average is not handed to a slot thread while
//! its requests come further apart than two batches: the request that
//! finds its queue idle takes a free slot (`Slots::try_take`) and runs the
//! batch on its own thread, with whatever else is queued, the first arrival
//! draining the queue for the others. Handing a batch to a thread and the
//! answer back costs two wake-ups and context switches (with the kernel's
//! futex work, a fifth of the LSTM's miss-path CPU in issue 27's first
//! profile, 7% after that other changes). Everything else is as on a
//! slot thread (deadlines, the abandoned-batch watcher, the instance limit,
//! the governor's measurements, metrics and spans); when no slot is free, or
//! the batch is not cheap, or batches are worth gathering, the queue goes to
//! the slot threads as before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{Gauge, Histogram, IntCounter, IntGauge};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::admission::QueueTicket;
use super::backend::{InputBatch, OutputBatch};
use super::cancel::{RunControl, Watched};
use super::error::CoreError;
use super::governor::{Governor, Shed, Tuning};
use super::repository::Model;
use super::slots::{Held, Slots, Work};
use crate::metrics::Metrics;
use inferd_telemetry::trace::{self, TraceRef};

/// What a job gets back: its own rows, and how long it queued and ran.
pub type JobResult = Result<(OutputBatch, Duration, Duration), CoreError>;

struct Job {
    input: InputBatch,
    deadline: Instant,
    enqueued: Instant,
    reply: oneshot::Sender<JobResult>,
    /// Counts against `INFERD_MAX_QUEUE` until the job is taken into a batch.
    ticket: Option<QueueTicket>,
    /// The request's trace: its queue, batch and inference spans hang there.
    trace: TraceRef,
}

/// A handle on one model version's queue; clones share it.
#[derive(Clone)]
pub struct Batcher {
    queue: Arc<ModelQueue>,
    /// Most instances in one backend call: a request with more is split.
    pub max_batch_size: usize,
}

impl Batcher {
    /// Starts the queue of `model`'s version, run on `slots`; its batches take up to
    /// `max_batch_size` instances and wait at most `max_delay` to fill; `tuning`
    /// bounds its queue by time (`governor`).
    pub fn start(
        model: Arc<Model>,
        slots: Arc<Slots>,
        metrics: Arc<Metrics>,
        max_batch_size: usize,
        max_delay: Duration,
        timeout_ms: u64,
        tuning: Tuning,
    ) -> Batcher {
        let max_batch_size = max_batch_size.max(1);
        let labels = [
            model.manifest.name.as_str(),
            model.manifest.version.as_str(),
        ];
        // Label lookups hash and lock: resolved once per version, not per batch.
        let handles = Handles {
            queue_wait: metrics.queue_wait.with_label_values(&labels),
            inference: metrics.inference_duration.with_label_values(&labels),
            instances: metrics.model_instances.with_label_values(&labels),
            batch_size: metrics.batch_size.with_label_values(&labels),
            batches: metrics.batches.with_label_values(&labels),
            cancelled: metrics.batches_cancelled.with_label_values(&labels),
            client_gone: metrics.rejections.with_label_values(&["client_gone"]),
            limit: metrics.queue_limit.with_label_values(&labels),
            queued: metrics.queue_instances.with_label_values(&labels),
            target: metrics.queue_target.with_label_values(&labels),
            drain: metrics.drain_rate.with_label_values(&labels),
            unloaded: metrics.unloaded_latency.with_label_values(&labels),
        };
        handles.limit.set(-1);
        let in_place_under = tuning.in_place_under;
        let governor = Governor::new(tuning, max_batch_size, Duration::from_millis(timeout_ms));
        let queue = Arc::new(ModelQueue {
            model,
            slots,
            metrics,
            handles,
            max_batch_size,
            max_delay,
            timeout_ms,
            in_place_under,
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                scheduled: false,
                gathering: false,
                governor,
                gap: None,
                last: None,
                batch_time: None,
            }),
            more: Condvar::new(),
            queued: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            entering: AtomicUsize::new(0),
        });
        Batcher {
            queue,
            max_batch_size,
        }
    }

    /// Queues `input` (at most `max_batch_size` instances) for the model, or
    /// refuses it (`Overloaded`) when the queue already holds what the model
    /// drains within its target wait.
    pub fn submit(
        &self,
        input: InputBatch,
        deadline: Instant,
        ticket: QueueTicket,
        trace: TraceRef,
    ) -> Result<oneshot::Receiver<JobResult>, CoreError> {
        let mut rx = self.submit_all(vec![(input, ticket)], deadline, trace)?;
        rx.pop()
            .ok_or(CoreError::Internal("a submitted job has no reply"))
    }

    /// Queues the parts of one request (each at most `max_batch_size`
    /// instances) together: the request is admitted or refused whole, so a
    /// large request is never half queued, and an empty queue takes it
    /// whatever its size.
    pub fn submit_all(
        &self,
        parts: Vec<(InputBatch, QueueTicket)>,
        deadline: Instant,
        trace: TraceRef,
    ) -> Result<Vec<oneshot::Receiver<JobResult>>, CoreError> {
        let n = parts.iter().map(|(p, _)| p.len()).sum();
        let q = &self.queue;
        let mut st = q.lock();
        if st.governor.admit(n).is_err() {
            // Jobs of requests already answered (504) or abandoned may still
            // sit in the queue: they must not be the reason for a refusal.
            q.purge(&mut st);
            if let Err(shed) = st.governor.admit(n) {
                q.note(&st);
                drop(st);
                return Err(q.overloaded(&shed));
            }
        }
        let now = Instant::now();
        st.arrived(now);
        let mut receivers = Vec::with_capacity(parts.len());
        for (input, ticket) in parts {
            let (reply, rx) = oneshot::channel();
            st.jobs.push_back(Job {
                input,
                deadline,
                enqueued: now,
                reply,
                ticket: Some(ticket),
                trace,
            });
            receivers.push(rx);
        }
        q.note(&st);
        if st.gathering {
            drop(st);
            q.more.notify_one();
        } else if !st.scheduled {
            st.scheduled = true;
            let in_place = q.cheap(&st).then(|| q.slots.try_take()).flatten();
            drop(st);
            match in_place {
                Some(slot) => q.run_in_place(slot),
                None => q.slots.schedule(q.clone()),
            }
        }
        Ok(receivers)
    }

    /// Whether the model's queue refuses new work now, counting the
    /// requests on their way to it (`enter`) as queued: they will be, a
    /// moment later. Advisory (atomic loads only): the front doors use it to
    /// refuse before reading a body.
    pub fn is_full(&self) -> bool {
        let q = &self.queue;
        let coming = q.queued.load(Ordering::Relaxed) + q.entering.load(Ordering::Relaxed);
        coming > q.limit.load(Ordering::Relaxed)
    }

    /// How full the queue is against its limit (0 with no limit): 1 means
    /// it refuses.
    pub fn fill(&self) -> f64 {
        let q = &self.queue;
        let limit = q.limit.load(Ordering::Relaxed);
        if limit == usize::MAX || limit == 0 {
            return 0.0;
        }
        let coming = q.queued.load(Ordering::Relaxed) + q.entering.load(Ordering::Relaxed);
        (coming as f64 / limit as f64).min(1.0)
    }

    /// The refusal a one-instance request gets now, if the queue refuses;
    /// takes the queue's lock only when it does.
    pub fn refusal(&self) -> Option<CoreError> {
        if !self.is_full() {
            return None;
        }
        let q = &self.queue;
        let mut st = q.lock();
        q.purge(&mut st);
        let full = st.governor.admit(0);
        q.note(&st);
        match full {
            Ok(()) => None,
            Err(shed) => Some(q.overloaded(&shed)),
        }
    }

    /// Counts a request resolved to this model as on its way to the queue
    /// until the guard drops (after decoding, the costly part of a text
    /// request), or refuses it now. Without this, the requests let in while
    /// the queue had room were all decoded, at the model's expense, and most
    /// then refused: the queue refills only as fast as requests decode, and
    /// every request arriving meanwhile passed the door.
    pub fn enter(&self) -> Result<Entering, CoreError> {
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        self.queue.entering.fetch_add(1, Ordering::Relaxed);
        Ok(Entering {
            queue: self.queue.clone(),
        })
    }
}

/// A request on its way to a model's queue (`Batcher::enter`).
pub struct Entering {
    queue: Arc<ModelQueue>,
}

impl Drop for Entering {
    fn drop(&mut self) {
        self.queue.entering.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Handles {
    queue_wait: Histogram,
    inference: Histogram,
    instances: IntCounter,
    batch_size: Histogram,
    batches: IntCounter,
    cancelled: IntCounter,
    client_gone: IntCounter,
    limit: IntGauge,
    queued: IntGauge,
    target: Gauge,
    drain: Gauge,
    unloaded: Gauge,
}

struct ModelQueue {
    model: Arc<Model>,
    slots: Arc<Slots>,
    metrics: Arc<Metrics>,
    handles: Handles,
    max_batch_size: usize,
    max_delay: Duration,
    timeout_ms: u64,
    /// `Tuning::in_place_under`.
    in_place_under: Duration,
    state: Mutex<QueueState>,
    /// Signalled by `submit` while a slot thread gathers a batch.
    more: Condvar,
    /// The governor's queue length and limit (`usize::MAX`: none),
    /// published for reading without the lock.
    queued: AtomicUsize,
    limit: AtomicUsize,
    /// Requests resolved to this version and still decoding.
    entering: AtomicUsize,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// On the ready list or being taken by a slot thread: set whenever `jobs`
    /// is not empty, so a queue is never forgotten with work in it.
    scheduled: bool,
    /// A slot thread is waiting (`max_batch_delay`) for more jobs.
    gathering: bool,
    /// Instances admitted and not yet taken, and the limit on them.
    governor: Governor,
    /// Moving average of the time between jobs, and the last job's arrival.
    gap: Option<Duration>,
    last: Option<Instant>,
    /// Moving average of the batches' run time.
    batch_time: Option<Duration>,
}

impl QueueState {
    fn arrived(&mut self, at: Instant) {
        if let Some(last) = self.last {
            let g = at.saturating_duration_since(last);
            self.gap = Some(match self.gap {
                Some(avg) => avg.mul_f64(1.0 - GAP_WEIGHT) + g.mul_f64(GAP_WEIGHT),
                None => g,
            });
        }
        self.last = Some(at);
    }
}

/// Weight of a new gap between jobs in their moving average.
const GAP_WEIGHT: f64 = 0.2;
/// Weight of a new batch's run time in their moving average.
const BATCH_WEIGHT: f64 = 0.1;
/// Batches run in place only while jobs arrive more than this many batch
/// times apart (`ModelQueue::cheap`).
const IN_PLACE_GAP: u32 = 2;

/// Whether a batch that is not full should wait up to `delay` for more:
/// only when jobs arrive, on average, more often than that (or before a
/// second job has shown how often they come). At low load the wait would
/// only add its length to every request; under load the next job is likely
/// within it, and a fuller batch costs less per instance.
fn worth_waiting(gap: Option<Duration>, delay: Duration) -> bool {
    !delay.is_zero() && gap.is_none_or(|g| g < delay)
}

impl Work for ModelQueue {
    fn run(self: Arc<Self>) {
        let mut jobs = Vec::new();
        let mut size = 0;
        let mut st = self.lock();
        self.take(&mut st, &mut jobs, &mut size);
        if size < self.max_batch_size && !jobs.is_empty() && worth_waiting(st.gap, self.max_delay) {
            let until = std::time::Instant::now() + self.max_delay;
            st.gathering = true;
            loop {
                self.take(&mut st, &mut jobs, &mut size);
                // Full, or the next job would not fit: the batch is formed.
                if size >= self.max_batch_size || !st.jobs.is_empty() {
                    break;
                }
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                st = self
                    .more
                    .wait_timeout(st, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            st.gathering = false;
        }
        self.formed(st);
        if !jobs.is_empty() {
            self.launch(jobs);
        }
    }
}

impl ModelQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch is formed: the queue leaves the ready list when it is empty,
    /// else goes back on it, so another free slot can start the next batch
    /// while this one runs.
    fn formed(self: &Arc<Self>, mut st: MutexGuard<'_, QueueState>) {
        self.note(&st);
        if st.jobs.is_empty() {
            st.scheduled = false;
            drop(st);
        } else {
            drop(st);
            self.slots.schedule(self.clone());
        }
    }

    /// Whether a batch is worth running on the submitting thread: its
    /// measured average is under the budget, jobs arrive further apart than
    /// two batches' time, and batches are not worth gathering (gathering
    /// waits, which only a slot thread may do). Jobs that come closer
    /// together than that would have queued behind a running batch and
    /// joined the next one: run in place one by one, each LSTM request paid
    /// a batch of its own, and at 16 connections the server answered 44%
    /// fewer requests for 2x the CPU each. With this condition, pinned to
    /// one core, in place served within run-to-run noise of the slot threads
    /// at 1 to 256 connections, which is why the budget is 0 by default.
    fn cheap(&self, st: &QueueState) -> bool {
        let Some(batch) = st.batch_time.filter(|t| *t < self.in_place_under) else {
            return false;
        };
        st.gap.is_none_or(|g| g > batch * IN_PLACE_GAP) && !worth_waiting(st.gap, self.max_delay)
    }

    /// One batch of what is queued, run here in `slot` (see the module's
    /// documentation); the rest, if any, goes to the slot threads.
    fn run_in_place(self: &Arc<Self>, slot: Held) {
        let mut jobs = Vec::new();
        let mut size = 0;
        let mut st = self.lock();
        self.take(&mut st, &mut jobs, &mut size);
        self.formed(st);
        if !jobs.is_empty() {
            // As on a slot thread: a panicking backend fails its batch's
            // requests (their replies are dropped), not the caller.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.launch(jobs)));
            if run.is_err() {
                tracing::error!("an inference batch panicked; its requests were failed");
            }
        }
        drop(slot);
    }

    fn overloaded(&self, shed: &Shed) -> CoreError {
        let ms = |d: Duration| d.as_millis() as u64;
        CoreError::Overloaded {
            model: self.model.manifest.name.clone(),
            wait_ms: ms(shed.wait),
            target_ms: ms(shed.target),
            retry_after_ms: ms(shed.retry_after),
        }
    }

    /// Drops the queued jobs that must not reach the model (deadline passed,
    /// client gone; see `live`), so they stop counting against the limit.
    /// Only called before a refusal: a scan of a queue at its limit. Under
    /// overload that is every refused request, so the usual case, nothing to
    /// drop, reads the clock once and moves nothing: rebuilding the queue and
    /// reading the clock per job took a tenth of the network thread's time
    /// (text model, 160 connections on one core, about 60 jobs queued and
    /// 15,000 refusals a second).
    fn purge(&self, st: &mut QueueState) {
        let now = Instant::now();
        if st.jobs.iter().all(|j| Self::alive(j, now)) {
            return;
        }
        let kept = VecDeque::with_capacity(st.jobs.len());
        let jobs = std::mem::replace(&mut st.jobs, kept);
        for j in jobs {
            let n = j.input.len();
            match self.live(j, now) {
                Some(j) => st.jobs.push_back(j),
                None => st.governor.taken(n),
            }
        }
    }

    /// Whether `live` would keep the job, at `now`.
    fn alive(job: &Job, now: Instant) -> bool {
        now < job.deadline && !job.reply.is_closed()
    }

    /// Publishes the governor's state after a change (atomic stores only).
    fn note(&self, st: &QueueState) {
        let g = &st.governor;
        self.queued.store(g.queued(), Ordering::Relaxed);
        self.limit.store(g.limit(), Ordering::Relaxed);
        self.handles.queued.set(g.queued() as i64);
    }

    /// Moves live jobs from the front of the queue into the batch while they
    /// fit; a job that does not fit stays first in line for the next batch.
    fn take(&self, st: &mut QueueState, jobs: &mut Vec<Job>, size: &mut usize) {
        let now = Instant::now();
        while *size < self.max_batch_size {
            let Some(next) = st.jobs.front() else { break };
            if !jobs.is_empty() && *size + next.input.len() > self.max_batch_size {
                break;
            }
            let Some(j) = st.jobs.pop_front() else { break };
            st.governor.taken(j.input.len());
            if let Some(j) = self.live(j, now) {
                *size += j.input.len();
                jobs.push(j);
            }
        }
    }

    /// The job, unless it must not reach the model: its deadline passed (the
    /// request was answered 504, or is about to be), or its client left before
    /// that. The deadline is checked first, so a request that timed out (and
    /// dropped its receiver) is not also counted as a client that went away.
    fn live(&self, job: Job, now: Instant) -> Option<Job> {
        if now >= job.deadline {
            let _ = job
                .reply
                .send(Err(CoreError::DeadlineExceeded(self.timeout_ms)));
            return None;
        }
        if job.reply.is_closed() {
            self.handles.client_gone.inc();
            return None;
        }
        Some(job)
    }

    /// Runs one merged batch on this slot thread and hands each job its rows.
    fn launch(&self, mut jobs: Vec<Job>) {
        let started = Instant::now();
        let h = &self.handles;
        for j in &mut jobs {
            // Running is not waiting: the queue bound counts only queued jobs.
            j.ticket = None;
            h.queue_wait.observe((started - j.enqueued).as_secs_f64());
        }
        let merged = merge(jobs.iter().map(|j| &j.input));
        let metrics = &self.metrics;
        let running = Arc::new(Running {
            jobs: Mutex::new(jobs),
            control: RunControl::new(),
        });
        metrics.in_flight.inc();
        let t = std::time::Instant::now();
        let watching = self.slots.watcher().watch(running.clone());
        let out = self.model.backend.infer_with(&merged, &running.control);
        drop(watching);
        let took = t.elapsed();
        metrics.in_flight.dec();
        h.inference.observe(took.as_secs_f64());
        h.instances.inc_by(merged.len() as u64);
        h.batch_size.observe(merged.len() as f64);
        h.batches.inc();
        self.measured(merged.len(), took);
        let jobs = std::mem::take(&mut *running.lock());
        // Read before the replies consume the jobs; recorded after them. Only
        // sampled jobs: at a low sampling rate most batches collect nothing.
        let traced: Vec<(TraceRef, std::time::Instant, usize)> = jobs
            .iter()
            .filter(|j| j.trace.sampled)
            .map(|j| (j.trace, j.enqueued.into_std(), j.input.len()))
            .collect();
        let requests = jobs.len();
        let ok = out.is_ok();
        match out {
            Ok(out) => {
                let mut row = 0;
                for j in jobs {
                    let n = j.input.len();
                    let part = OutputBatch {
                        rows: n,
                        cols: out.cols,
                        data: out.data[row * out.cols..(row + n) * out.cols].to_vec(),
                    };
                    row += n;
                    let _ = j.reply.send(Ok((part, started - j.enqueued, took)));
                }
            }
            // Stopped because nobody waits: each job's request was answered
            // (504) or its client left; say which, as `live` does.
            Err(_) if running.control.is_cancelled() => {
                h.cancelled.inc();
                let now = Instant::now();
                for j in jobs {
                    if let Some(j) = self.live(j, now) {
                        // Came back between the check and now: a real answer.
                        let _ = j
                            .reply
                            .send(Err(CoreError::DeadlineExceeded(self.timeout_ms)));
                    }
                }
            }
            Err(e) => {
                let e = CoreError::Backend(e);
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
        if !traced.is_empty() {
            let run = (started.into_std(), t + took);
            trace::batch(&traced, merged.len(), requests, run, ok);
        }
    }
}

impl ModelQueue {
    /// Feeds a finished batch to the governor and publishes what it measures.
    fn measured(&self, n: usize, took: Duration) {
        let mut st = self.lock();
        st.batch_time = Some(match st.batch_time {
            Some(avg) => avg.mul_f64(1.0 - BATCH_WEIGHT) + took.mul_f64(BATCH_WEIGHT),
            None => took,
        });
        let g = &mut st.governor;
        g.completed(n, took, std::time::Instant::now());
        let (limit, target, drain, unloaded) = (g.limit(), g.target(), g.drain(), g.unloaded());
        self.note(&st);
        drop(st);
        let h = &self.handles;
        h.limit.set(
            i64::try_from(limit)
                .ok()
                .filter(|l| *l < i64::MAX)
                .unwrap_or(-1),
        );
        h.target.set(target.as_secs_f64());
        if let Some(d) = drain {
            h.drain.set(d);
        }
        if let Some(u) = unloaded {
            h.unloaded.set(u.as_secs_f64());
        }
    }
}

/// A batch while its backend call runs, shared with the watcher that stops
/// it once every job is abandoned (`cancel`).
struct Running {
    jobs: Mutex<Vec<Job>>,
    control: RunControl,
}

impl Running {
    fn lock(&self) -> MutexGuard<'_, Vec<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Watched for Running {
    fn control(&self) -> &RunControl {
        &self.control
    }

    fn abandoned(&self) -> bool {
        let now = Instant::now();
        self.lock()
            .iter()
            .all(|j| now >= j.deadline || j.reply.is_closed())
    }
}

/// Concatenates the jobs' instances into one batch, in order.
pub fn merge<'a>(inputs: impl Iterator<Item = &'a InputBatch> + Clone) -> InputBatch {
    let mut it = inputs.clone();
    match it.next() {
        Some(InputBatch::Text(_)) => {
            let mut texts = Vec::new();
            for i in inputs {
                if let InputBatch::Text(t) = i {
                    texts.extend(t.iter().cloned());
                }
            }
            InputBatch::Text(texts)
        }
        Some(InputBatch::Windows {
            steps, features, ..
        }) => {
            let (steps, features) = (*steps, *features);
            let mut data = Vec::new();
            let mut batch = 0;
            for i in inputs {
                if let InputBatch::Windows {
                    data: d, batch: b, ..
                } = i
                {
                    data.extend_from_slice(d);
                    batch += b;
                }
            }
            InputBatch::Windows {
                data,
                batch,
                steps,
                features,
            }
        }
        None => InputBatch::Text(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_only_when_jobs_come_faster_than_the_delay() {
        let ms = Duration::from_millis;
        assert!(!worth_waiting(Some(ms(1)), Duration::ZERO), "no delay set");
        assert!(
            worth_waiting(None, ms(5)),
            "no second job seen yet: as configured"
        );
        assert!(!worth_waiting(Some(ms(50)), ms(5)), "low load");
        assert!(worth_waiting(Some(ms(1)), ms(5)), "busy");
        let mut st = QueueState {
            jobs: VecDeque::new(),
            scheduled: false,
            gathering: false,
            governor: Governor::new(Tuning::default(), 8, ms(1000)),
            gap: None,
            last: None,
            batch_time: None,
        };
        let t = Instant::now();
        for k in 0..20u64 {
            st.arrived(t + ms(2 * k));
        }
        assert_eq!(st.gap, Some(ms(2)));
    }

    #[test]
    fn merge_keeps_order() {
        let a = InputBatch::Windows {
            data: vec![1.0, 2.0],
            batch: 1,
            steps: 2,
            features: 1,
        };
        let b = InputBatch::Windows {
            data: vec![3.0, 4.0, 5.0, 6.0],
            batch: 2,
            steps: 2,
            features: 1,
        };
        match merge([a, b].iter()) {
            InputBatch::Windows { data, batch, .. } => {
                assert_eq!(batch, 3);
                assert_eq!(data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
            }
            _ => panic!("windows"),
        }
        let t = merge(
            [
                InputBatch::Text(vec!["a".into()]),
                InputBatch::Text(vec!["b".into(), "c".into()]),
            ]
            .iter(),
        );
        assert!(matches!(t, InputBatch::Text(v) if v == ["a", "b", "c"]));
    }
}

/// Batch formation on the scripted backend: exact, because the gate holds a
/// batch inside the model for as long as the test needs.
#[cfg(test)]
mod formation_tests {
    use std::time::Duration;

    use super::*;
    use crate::admission::Admission;
    use crate::backend::testing::{expected_row, forecaster_model, TestBackend};

    fn window(v: f32) -> InputBatch {
        InputBatch::Windows {
            data: vec![v, 0.0],
            batch: 1,
            steps: 2,
            features: 1,
        }
    }

    struct Rig {
        backend: Arc<TestBackend>,
        admission: Admission,
        metrics: Arc<Metrics>,
        batcher: Batcher,
    }

    /// One inference slot, so a gated batch blocks everything behind it.
    fn rig(max_batch_size: usize) -> Rig {
        rig_tuned(max_batch_size, Tuning::default())
    }

    fn rig_tuned(max_batch_size: usize, tuning: Tuning) -> Rig {
        let backend = TestBackend::forecaster(2, 1, 1);
        let metrics = Arc::new(Metrics::default());
        let admission = Admission::new(1, 64, metrics.clone());
        let model = Arc::new(forecaster_model("m", 2, max_batch_size, backend.clone()));
        let batcher = Batcher::start(
            model,
            admission.slots(),
            metrics.clone(),
            max_batch_size,
            Duration::ZERO,
            1000,
            tuning,
        );
        Rig {
            backend,
            admission,
            metrics,
            batcher,
        }
    }

    /// A failed assertion must not leave a batch parked in the model, holding
    /// its slot thread for the rest of the test binary's run.
    impl Drop for Rig {
        fn drop(&mut self) {
            self.backend.open_gate();
        }
    }

    impl Rig {
        fn submit(&self, v: f32, within: Duration) -> oneshot::Receiver<JobResult> {
            let ticket = self.admission.enter().expect("queue has room");
            self.batcher
                .submit(
                    window(v),
                    Instant::now() + within,
                    ticket,
                    TraceRef::default(),
                )
                .expect("the model's queue has room")
        }

        /// Submits `v` and waits until it is inside the model, holding the slot.
        async fn occupy(&self, v: f32) -> oneshot::Receiver<JobResult> {
            self.backend.close_gate();
            let rx = self.submit(v, Duration::from_secs(10));
            let t = Instant::now();
            while self.backend.running() == 0 {
                assert!(t.elapsed() < Duration::from_secs(5), "job never started");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rx
        }
    }

    async fn value(rx: oneshot::Receiver<JobResult>) -> Result<f32, CoreError> {
        let (out, _, _) = rx.await.expect("the batcher answers")?;
        assert_eq!(out.rows, 1);
        Ok(out.data[0])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cheap_models_batch_runs_in_place_while_a_slot_is_free() {
        let r = rig_tuned(
            8,
            Tuning {
                in_place_under: Duration::from_secs(3600),
                ..Tuning::default()
            },
        );
        // Not yet measured: the first batch goes to a slot thread.
        let first = r.submit(1.0, Duration::from_secs(10));
        assert_eq!(value(first).await, Ok(expected_row(&window(1.0), 0, 1)[0]));
        // Measured under the budget, and no arrival rate yet (the gap since
        // the first job is whatever this machine took): answered before
        // `submit` returns.
        {
            let mut st = r.batcher.queue.lock();
            assert!(st.batch_time.is_some(), "the first batch was measured");
            (st.gap, st.last) = (None, None);
        }
        // The slot thread gives its slot back just after answering: wait
        // for that (CI once submitted first and found none free).
        let t = Instant::now();
        while r.admission.slots().try_take().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the slot never came back"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut second = r.submit(2.0, Duration::from_secs(10));
        let (out, _, _) = second
            .try_recv()
            .expect("answered in place")
            .expect("a prediction");
        assert_eq!(out.data[0], expected_row(&window(2.0), 0, 1)[0]);
        assert_eq!(r.admission.waiting(), 0, "its ticket is freed");
        // Jobs closer together than two batches' time would batch on a
        // slot thread: not in place.
        {
            let mut st = r.batcher.queue.lock();
            st.batch_time = Some(Duration::from_millis(1));
            st.gap = Some(Duration::from_micros(1500));
            assert!(!r.batcher.queue.cheap(&st));
            st.gap = Some(Duration::from_micros(2500));
            assert!(r.batcher.queue.cheap(&st));
            (st.gap, st.last) = (None, None);
        }
        // With the one slot held, a job waits for it, then runs on a thread.
        let slot = r.admission.slots().try_take().expect("the free slot");
        let mut third = r.submit(3.0, Duration::from_secs(10));
        assert!(third.try_recv().is_err(), "no slot: queued, not run");
        assert_eq!(r.admission.waiting(), 1);
        drop(slot);
        assert_eq!(value(third).await, Ok(expected_row(&window(3.0), 0, 1)[0]));
        assert_eq!(r.backend.batches(), vec![vec![1.0], vec![2.0], vec![3.0]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_over_the_budget_stay_on_slot_threads() {
        // The test backend's batches take microseconds: over a budget of 1 ns.
        let r = rig_tuned(
            8,
            Tuning {
                in_place_under: Duration::from_nanos(1),
                ..Tuning::default()
            },
        );
        for v in [1.0, 2.0] {
            let rx = r.submit(v, Duration::from_secs(10));
            assert_eq!(value(rx).await, Ok(expected_row(&window(v), 0, 1)[0]));
            let st = r.batcher.queue.lock();
            assert!(st.batch_time.is_some());
            assert!(!r.batcher.queue.cheap(&st), "measured over the budget");
        }
        // The average, not one batch, decides: under the budget, in place.
        let mut st = r.batcher.queue.lock();
        st.batch_time = Some(Duration::ZERO);
        assert!(r.batcher.queue.cheap(&st));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_queued_behind_a_busy_slot_run_as_one_batch_in_order() {
        let r = rig(8);
        let a = r.occupy(1.0).await;
        let queued: Vec<_> = [2.0, 3.0, 4.0]
            .into_iter()
            .map(|v| r.submit(v, Duration::from_secs(10)))
            .collect();
        assert_eq!(r.admission.waiting(), 3, "all three wait for the slot");
        r.backend.open_gate();
        assert_eq!(value(a).await, Ok(1.0));
        for (rx, v) in queued.into_iter().zip([2.0, 3.0, 4.0]) {
            assert_eq!(value(rx).await, Ok(expected_row(&window(v), 0, 1)[0]));
        }
        assert_eq!(r.backend.batches(), vec![vec![1.0], vec![2.0, 3.0, 4.0]]);
        assert_eq!(r.admission.waiting(), 0, "tickets are freed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_batch_exceeds_the_maximum_and_every_job_runs_once() {
        let r = rig(2);
        let a = r.occupy(1.0).await;
        let queued: Vec<_> = (2..=6)
            .map(|v| r.submit(v as f32, Duration::from_secs(10)))
            .collect();
        r.backend.open_gate();
        value(a).await.unwrap();
        for rx in queued {
            value(rx).await.unwrap();
        }
        let batches = r.backend.batches();
        assert!(batches.iter().all(|b| b.len() <= 2), "{batches:?}");
        let seen: Vec<f32> = batches.into_iter().flatten().collect();
        assert_eq!(seen, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_jobs_never_reach_the_model() {
        let r = rig(8);
        let a = r.occupy(1.0).await;
        let short = r.submit(2.0, Duration::from_millis(30));
        let long = r.submit(3.0, Duration::from_secs(10));
        let short2 = r.submit(4.0, Duration::from_millis(30));
        tokio::time::sleep(Duration::from_millis(80)).await;
        r.backend.open_gate();
        value(a).await.unwrap();
        assert_eq!(value(short).await, Err(CoreError::DeadlineExceeded(1000)));
        assert_eq!(value(short2).await, Err(CoreError::DeadlineExceeded(1000)));
        assert_eq!(value(long).await, Ok(3.0));
        assert_eq!(r.backend.batches(), vec![vec![1.0], vec![3.0]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_whose_client_left_are_dropped_and_counted() {
        let r = rig(8);
        let a = r.occupy(1.0).await;
        let gone = r.submit(2.0, Duration::from_secs(10));
        let stays = r.submit(3.0, Duration::from_secs(10));
        drop(gone);
        r.backend.open_gate();
        value(a).await.unwrap();
        assert_eq!(value(stays).await, Ok(3.0));
        assert_eq!(r.backend.batches(), vec![vec![1.0], vec![3.0]]);
        let gone = r
            .metrics
            .rejections
            .with_label_values(&["client_gone"])
            .get();
        assert_eq!(gone, 1);
    }

    /// A queue at its limit refuses while its jobs are live, and drops the
    /// jobs whose clients left, counting them, rather than refuse for them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_only_for_jobs_still_wanted() {
        let r = rig(2);
        {
            // A measured drain rate of one instance a second: the limit is
            // one full batch.
            let mut st = r.batcher.queue.lock();
            let t0 = std::time::Instant::now();
            st.governor.completed(1, Duration::from_secs(1), t0);
            st.governor
                .completed(1, Duration::from_secs(1), t0 + Duration::from_secs(10));
            assert_eq!(st.governor.limit(), 2);
        }
        let a = r.occupy(1.0).await;
        let queued: Vec<_> = (0..3)
            .map(|i| r.submit(2.0 + i as f32, Duration::from_secs(10)))
            .collect();
        let one_more = || {
            let ticket = r.admission.enter().expect("global queue has room");
            r.batcher.submit(
                window(9.0),
                Instant::now() + Duration::from_secs(10),
                ticket,
                TraceRef::default(),
            )
        };
        assert!(matches!(one_more(), Err(CoreError::Overloaded { .. })));
        assert!(r.batcher.refusal().is_some());
        drop(queued);
        let kept = one_more().expect("the clients that left no longer count");
        let gone = r.metrics.rejections.with_label_values(&["client_gone"]);
        assert_eq!(gone.get(), 3);
        r.backend.open_gate();
        value(a).await.unwrap();
        assert_eq!(value(kept).await, Ok(9.0));
        assert_eq!(r.backend.batches(), vec![vec![1.0], vec![9.0]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_fails_each_of_its_jobs_and_frees_the_slot() {
        let r = rig(8);
        let a = r.occupy(1.0).await;
        let b = r.submit(2.0, Duration::from_secs(10));
        let c = r.submit(3.0, Duration::from_secs(10));
        r.backend.fail_next(2);
        r.backend.open_gate();
        for rx in [a, b, c] {
            assert!(matches!(value(rx).await, Err(CoreError::Backend(_))));
        }
        // The slot came back: the next job runs.
        assert_eq!(value(r.submit(5.0, Duration::from_secs(10))).await, Ok(5.0));
    }
}

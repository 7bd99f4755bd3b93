//! The run loop: sends the payloads through the protocol's `Target` in a
//! closed loop (N connections, each sending its next request when the last one
//! answers) or an open loop (a schedule of rates, one step for `--rate`;
//! latency counts from each request's scheduled start, so a stalled server
//! cannot hide queueing), records every measured request into `Samples`, and
//! shows progress while it runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use crate::cli::BenchConfig;
use crate::payloads;
use crate::protocol::{Outcome, Target};
use crate::report::{summarize, Report, Samples, WINDOW_MS};
use crate::schedule::Schedule;

/// Records measured requests, hands out the `--requests` tickets, and says
/// when the closed loop is over.
#[derive(Clone)]
struct Recorder {
    samples: Arc<Mutex<Samples>>,
    measured: Arc<AtomicU64>,
    /// Measured requests started so far (at most `limit` are).
    tickets: Arc<AtomicU64>,
    /// End of the warm-up: requests scheduled before it are not recorded.
    start: Instant,
    stop_at: Instant,
    limit: u64,
    /// The `--schedule` the per-step figures follow, if any.
    schedule: Option<Arc<Schedule>>,
}

impl Recorder {
    /// Whether a request scheduled at `scheduled` may start: always during the
    /// warm-up, and while `--requests` allows once measuring (it takes a ticket).
    fn admit(&self, scheduled: Instant) -> bool {
        scheduled < self.start || self.tickets.fetch_add(1, Ordering::Relaxed) < self.limit
    }

    /// No measured request may start any more.
    fn exhausted(&self) -> bool {
        self.tickets.load(Ordering::Relaxed) >= self.limit
    }

    /// One answered request; `scheduled` is when it should have started, and
    /// in the open loop, `lag` how late it did and whether it waited for one of
    /// the requests in flight to finish (`--max-in-flight`).
    fn observe(&self, scheduled: Instant, outcome: Outcome, lag: Option<(Duration, bool)>) {
        let answered = Instant::now();
        let ok = outcome.status.starts_with('2');
        // Every answer received while measuring counts as delivered, the
        // warm-up's late ones too: behind schedule, they are what the server
        // was doing then.
        let delivered = self.start <= answered && answered <= self.stop_at;
        if scheduled < self.start {
            if delivered {
                let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
                samples.record_delivered(ok);
            }
            return;
        }
        let latency_us = answered
            .saturating_duration_since(scheduled)
            .as_micros()
            .max(1) as u64;
        let offset = scheduled - self.start;
        let window = offset.as_millis() as u64 / WINDOW_MS;
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if let (true, Some(q)) = (ok, outcome.queue_us) {
            samples.record_less_queue(latency_us.saturating_sub(q));
        }
        let step = self.schedule.as_ref().and_then(|s| s.step_at(offset));
        if let Some((lag, waited)) = lag {
            samples.record_lag(step, lag.as_micros() as u64);
            if waited {
                samples.record_in_flight_wait();
            }
        }
        if let Some(schedule) = &self.schedule {
            if let Some(step) = step {
                samples.record_step(step, latency_us, &outcome.status);
            }
            if let Some(step) = schedule.step_at(answered - self.start) {
                samples.record_answer(step, ok);
            }
        }
        if delivered {
            samples.record_delivered(ok);
        }
        samples.record(window, latency_us, outcome.status);
        self.measured.fetch_add(1, Ordering::Relaxed);
    }
}

fn progress_bar(cfg: &BenchConfig) -> ProgressBar {
    if cfg.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new((cfg.warmup + cfg.measured_duration()).as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// The progress bar's message: requests so far, their rate, and with a
/// schedule, the step running now.
fn progress_message(n: u64, secs: f64, schedule: Option<&Schedule>) -> String {
    if secs <= 0.0 {
        return "warming up".to_string();
    }
    let so_far = format!("{n} requests, {:.0} req/s", n as f64 / secs);
    let step = schedule.and_then(|s| {
        let i = s.step_at(Duration::from_secs_f64(secs))?;
        Some(format!(
            "step {}/{} at {} req/s; ",
            i + 1,
            s.steps().len(),
            s.steps()[i].rate
        ))
    });
    format!("{}{so_far}", step.unwrap_or_default())
}

/// Runs the load described by `cfg` and returns its report.
pub async fn run(cfg: &BenchConfig) -> anyhow::Result<Report> {
    let open = cfg.open_schedule().map_err(anyhow::Error::msg)?;
    let payloads = match &cfg.payloads {
        Some(path) => payloads::read_file(path, cfg.protocol, cfg.instances)?,
        None => payloads::golden(
            &cfg.models_dir,
            &cfg.model,
            cfg.model_version.as_deref(),
            &cfg.golden_field,
            cfg.instances,
        )?,
    };
    let pool = match open {
        Some(_) => cfg.max_in_flight,
        None => cfg.connections,
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(pool.max(1))
        .tcp_nodelay(true)
        .timeout(crate::protocol::REQUEST_TIMEOUT)
        .build()?;
    let target = Arc::new(
        Target::connect(
            cfg.protocol,
            cfg.http_client,
            client,
            &cfg.url,
            &cfg.model,
            cfg.model_version.as_deref(),
            &payloads,
        )
        .await?,
    );
    let duration = cfg.measured_duration();
    let begin = Instant::now();
    let schedule = cfg.schedule.clone().map(Arc::new);
    let recorder = Recorder {
        samples: Arc::new(Mutex::new(Samples::with_steps(
            schedule.as_ref().map_or(0, |s| s.steps().len()),
        ))),
        measured: Arc::new(AtomicU64::new(0)),
        tickets: Arc::new(AtomicU64::new(0)),
        start: begin + cfg.warmup,
        stop_at: begin + cfg.warmup + duration,
        limit: cfg.requests.unwrap_or(u64::MAX),
        schedule: schedule.clone(),
    };

    let bar = progress_bar(cfg);
    let ticker = {
        let (bar, measured, start) = (bar.clone(), recorder.measured.clone(), recorder.start);
        let schedule = schedule.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(begin.elapsed().as_millis() as u64);
                let secs = Instant::now()
                    .saturating_duration_since(start)
                    .as_secs_f64();
                bar.set_message(progress_message(
                    measured.load(Ordering::Relaxed),
                    secs,
                    schedule.as_deref(),
                ));
            }
        })
    };

    match &open {
        Some(plan) => open_loop(&target, &recorder, begin, plan, cfg.max_in_flight).await,
        None => closed_loop(&target, &recorder, cfg.connections).await,
    }
    ticker.abort();
    bar.finish_and_clear();

    let measured_for = Instant::now().saturating_duration_since(recorder.start);
    // A run stopped by time counts its nominal duration (stragglers past the end
    // do not dilute the rate); one stopped by `--requests` counts what it took.
    let elapsed = if cfg.requests.is_some() {
        measured_for
    } else {
        measured_for.min(duration.max(Duration::from_millis(1)))
    };
    let samples = recorder.samples.lock().unwrap_or_else(|p| p.into_inner());
    Ok(summarize(cfg, &samples, elapsed, target.len()))
}

/// A stretch of the open loop: `rate` requests per second from `start` to `end`.
struct Segment {
    start: Instant,
    end: Instant,
    rate: f64,
}

/// The warm-up at the schedule's first non-zero rate, then each step: within a
/// step, a request every `1 / rate` from its start, whether or not earlier ones
/// answered. Request `k` of the run carries payload `k` (round robin).
///
/// The pace is kept by a thread of its own, which sleeps until each request is
/// due (or, above 10,000 a second, for `PACER_TICK`) and hands it to the
/// runtime: tokio's timer wakes on millisecond ticks, which would add up to a
/// millisecond to every latency measured from the scheduled start, and the
/// OS's sleep is good to tens of microseconds.
///
/// What the pacer hands over is spawned by a task on the runtime's workers, not
/// by this function's caller: that runs on the main thread (`block_on`), and
/// each request would wake it and then a worker, two futex wake-ups that cost
/// about as much CPU as sending the request (on one core, a third of it).
async fn open_loop(
    target: &Arc<Target>,
    recorder: &Recorder,
    begin: Instant,
    plan: &Schedule,
    max_in_flight: usize,
) {
    let mut segments = vec![Segment {
        start: begin,
        end: recorder.start,
        rate: plan.warmup_rate(),
    }];
    for (step, at) in plan.steps().iter().zip(plan.starts()) {
        segments.push(Segment {
            start: recorder.start + at,
            end: recorder.start + at + step.duration,
            rate: step.rate,
        });
    }
    let (due_tx, mut due) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let pacer = {
        let recorder = recorder.clone();
        std::thread::spawn(move || pace(&segments, &recorder, |k, at| due_tx.send((k, at)).is_ok()))
    };
    // A permit per request in flight; all of them back means all are done.
    let permits = u32::try_from(max_in_flight.max(1)).unwrap_or(u32::MAX);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(permits as usize));
    let (target, recorder) = (target.clone(), recorder.clone());
    let dispatch = tokio::spawn(async move {
        while let Some((k, scheduled)) = due.recv().await {
            // Waiting here means the server, not this process, holds the
            // schedule back: all the requests allowed in flight are unanswered.
            let (permit, waited) = match in_flight.clone().try_acquire_owned() {
                Ok(p) => (p, false),
                Err(_) => match in_flight.clone().acquire_owned().await {
                    Ok(p) => (p, true),
                    Err(_) => break,
                },
            };
            let (target, recorder) = (target.clone(), recorder.clone());
            tokio::spawn(async move {
                let lag = scheduled.elapsed();
                let outcome = target.send(k).await;
                recorder.observe(scheduled, outcome, Some((lag, waited)));
                drop(permit);
            });
        }
        // The channel closes when the pacer is done.
        let _ = in_flight.acquire_many(permits).await;
    });
    let _ = dispatch.await;
    let _ = pacer.join();
}

/// The pacer wakes at most once per tick and hands over every request due by
/// then. Above 10,000 requests a second, requests may start up to a tick late
/// (the send lag shows it), but each wake-up costs the one core two thread
/// switches and a wake of the runtime, and batches cost the server fewer
/// wake-ups too. Pinned to one core at 30,000 requests a second, waking for
/// each request took 15-25% more CPU and fell behind (p99 lag 1 ms to most of
/// a second); waking at most every 100 us held the schedule (p99 lag 0.25 ms).
const PACER_TICK: Duration = Duration::from_micros(100);

/// Sleeps until each request of `segments` is due and passes it (its number and
/// scheduled start) to `send`, until the segments end, `--requests` is used up,
/// or `send` refuses. A run that is not stopped early lasts until its end.
fn pace(segments: &[Segment], recorder: &Recorder, send: impl Fn(u64, Instant) -> bool) {
    let sleep_until = |t: Instant| {
        let now = Instant::now();
        if t > now {
            std::thread::sleep(t - now);
        }
    };
    let mut k: u64 = 0;
    let mut woke = Instant::now();
    for seg in segments {
        if seg.start >= seg.end {
            continue;
        }
        if seg.rate <= 0.0 {
            // A pause: nothing to send until its end, unless the run is over.
            if seg.start >= recorder.start && recorder.exhausted() {
                return;
            }
            sleep_until(seg.end);
            continue;
        }
        let span = (seg.end - seg.start).as_secs_f64();
        for j in 0u64.. {
            let offset = j as f64 / seg.rate;
            if offset >= span {
                break;
            }
            let scheduled = seg.start + Duration::from_secs_f64(offset);
            if !recorder.admit(scheduled) {
                return;
            }
            if scheduled > Instant::now() {
                sleep_until(scheduled.max(woke + PACER_TICK));
                woke = Instant::now();
            }
            if !send(k, scheduled) {
                return;
            }
            k += 1;
        }
    }
    // The last step lasts its whole duration, as the rate counts it.
    sleep_until(recorder.stop_at);
}

/// `connections` workers, each sending its next request when the last one
/// answers; worker `w` sends payloads `w, w + 1, ...` (round robin).
async fn closed_loop(target: &Arc<Target>, recorder: &Recorder, connections: usize) {
    let mut tasks = JoinSet::new();
    for w in 0..connections.max(1) {
        let (target, recorder) = (target.clone(), recorder.clone());
        tasks.spawn(async move {
            let mut k = w as u64;
            loop {
                let sent_at = Instant::now();
                if sent_at >= recorder.stop_at || !recorder.admit(sent_at) {
                    break;
                }
                let outcome = target.send(k).await;
                recorder.observe(sent_at, outcome, None);
                k += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

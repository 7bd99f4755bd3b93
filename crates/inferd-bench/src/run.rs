//! The run loop: sends the payloads to `<url>/predict` in a closed loop (N
//! connections, each sending its next request when the last one answers) or an
//! open loop (a fixed rate; latency counts from each request's scheduled start,
//! so a stalled server cannot hide queueing), records every measured request
//! into `Samples`, and shows progress while it runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use crate::cli::BenchConfig;
use crate::payloads::payloads;
use crate::report::{summarize, Report, Samples, WINDOW_MS};

/// Sends the next body (round robin over the payloads) and names the outcome.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    url: Arc<str>,
    bodies: Arc<Vec<Vec<u8>>>,
    next: Arc<AtomicU64>,
}

impl Sender {
    /// The HTTP status as a string, or `timeout` / `connect_error`, and the
    /// server's `x-queue-time` (microseconds) when it sent one.
    async fn send_next(&self) -> (String, Option<u64>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.bodies.len();
        let sent = self
            .client
            .post(&*self.url)
            .header("content-type", "application/json")
            .body(self.bodies[i].clone())
            .send()
            .await;
        match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                let queue_us = r
                    .headers()
                    .get("x-queue-time")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<f64>().ok())
                    .map(|ms| (ms * 1e3) as u64);
                // Read the body so the connection can be reused.
                let _ = r.bytes().await;
                (status.to_string(), queue_us)
            }
            Err(e) if e.is_timeout() => ("timeout".into(), None),
            Err(_) => ("connect_error".into(), None),
        }
    }
}

/// Records measured requests and says when the run is over.
#[derive(Clone)]
struct Recorder {
    samples: Arc<Mutex<Samples>>,
    measured: Arc<AtomicU64>,
    /// End of the warm-up: requests scheduled before it are not recorded.
    start: Instant,
    stop_at: Instant,
    limit: u64,
}

impl Recorder {
    /// One answered request; `scheduled` is when it should have started.
    fn observe(&self, scheduled: Instant, (status, queue_us): (String, Option<u64>)) {
        if scheduled < self.start {
            return;
        }
        let latency_us = scheduled.elapsed().as_micros().max(1) as u64;
        let window = (scheduled - self.start).as_millis() as u64 / WINDOW_MS;
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if let (true, Some(q)) = (status.starts_with('2'), queue_us) {
            samples.record_less_queue(latency_us.saturating_sub(q));
        }
        samples.record(window, latency_us, status);
        self.measured.fetch_add(1, Ordering::Relaxed);
    }

    fn done(&self) -> bool {
        Instant::now() >= self.stop_at || self.measured.load(Ordering::Relaxed) >= self.limit
    }
}

fn progress_bar(cfg: &BenchConfig) -> ProgressBar {
    if cfg.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new((cfg.warmup + cfg.duration).as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Runs the load described by `cfg` and returns its report.
pub async fn run(cfg: &BenchConfig) -> anyhow::Result<Report> {
    let interval = match cfg.rate {
        Some(rate) => {
            anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be positive");
            Some(
                Duration::try_from_secs_f64(1.0 / rate)
                    .map_err(|_| anyhow::anyhow!("--rate {rate} is too low"))?,
            )
        }
        None => None,
    };
    let sender = Sender {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(cfg.connections.max(1))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()?,
        url: format!("{}/predict", cfg.url.trim_end_matches('/')).into(),
        bodies: Arc::new(payloads(
            &cfg.models_dir,
            &cfg.model,
            cfg.model_version.as_deref(),
            &cfg.golden_field,
            cfg.instances,
        )?),
        next: Arc::new(AtomicU64::new(0)),
    };
    let begin = Instant::now();
    let recorder = Recorder {
        samples: Arc::new(Mutex::new(Samples::new())),
        measured: Arc::new(AtomicU64::new(0)),
        start: begin + cfg.warmup,
        stop_at: begin + cfg.warmup + cfg.duration,
        limit: cfg.requests.unwrap_or(u64::MAX),
    };

    let bar = progress_bar(cfg);
    let ticker = {
        let (bar, measured, start) = (bar.clone(), recorder.measured.clone(), recorder.start);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(begin.elapsed().as_millis() as u64);
                let n = measured.load(Ordering::Relaxed);
                let secs = Instant::now()
                    .saturating_duration_since(start)
                    .as_secs_f64();
                if secs > 0.0 {
                    bar.set_message(format!("{n} requests, {:.0} req/s", n as f64 / secs));
                } else {
                    bar.set_message("warming up".to_string());
                }
            }
        })
    };

    match interval {
        Some(interval) => open_loop(&sender, &recorder, begin, interval).await,
        None => closed_loop(&sender, &recorder, cfg.connections).await,
    }
    ticker.abort();
    bar.finish_and_clear();

    let measured_for = Instant::now().saturating_duration_since(recorder.start);
    // A run stopped by time counts its nominal duration (stragglers past the end
    // do not dilute the rate); one stopped by `--requests` counts what it took.
    let elapsed = if cfg.requests.is_some() {
        measured_for
    } else {
        measured_for.min(cfg.duration.max(Duration::from_millis(1)))
    };
    let samples = recorder.samples.lock().unwrap_or_else(|p| p.into_inner());
    Ok(summarize(cfg, &samples, elapsed))
}

/// A request every `interval` from `begin`, whether or not earlier ones answered.
async fn open_loop(sender: &Sender, recorder: &Recorder, begin: Instant, interval: Duration) {
    let mut tasks = JoinSet::new();
    let mut k: u64 = 0;
    while !recorder.done() {
        let scheduled = begin + interval.mul_f64(k as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (sender, recorder) = (sender.clone(), recorder.clone());
        tasks.spawn(async move {
            let status = sender.send_next().await;
            recorder.observe(scheduled, status);
        });
        k += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// `connections` workers, each sending its next request when the last one answers.
async fn closed_loop(sender: &Sender, recorder: &Recorder, connections: usize) {
    let mut tasks = JoinSet::new();
    for _ in 0..connections.max(1) {
        let (sender, recorder) = (sender.clone(), recorder.clone());
        tasks.spawn(async move {
            while !recorder.done() {
                let sent_at = Instant::now();
                let status = sender.send_next().await;
                recorder.observe(sent_at, status);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

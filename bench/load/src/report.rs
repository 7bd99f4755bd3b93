//! What a run measured and what it concludes: the samples the workers record
//! (HDR histograms overall, per time window and per schedule step, counts by
//! status), the `Report` built from them (percentiles, timeline, distribution,
//! steps), the targets checked against it, and the table printed at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::BenchConfig;

/// Width of one timeline window.
pub const WINDOW_MS: u64 = 100;

/// Buckets in the latency distribution.
const BUCKETS: u64 = 40;

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    /// `v1` or `v2`.
    pub protocol: String,
    /// Distinct requests sent round robin (golden cases or payload-file lines).
    pub payloads: usize,
    pub mode: String,
    pub connections: usize,
    pub rate: Option<f64>,
    /// `--schedule`, as `10s:100,30s:500`.
    pub schedule: Option<String>,
    pub instances_per_request: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    pub error_rate: f64,
    pub rps: f64,
    /// 2xx answers per second (the rest were refused or failed).
    pub goodput_rps: f64,
    /// Answers received while measuring, per second of the measured time.
    /// `rps` and `goodput_rps` count requests by when they were scheduled, so
    /// when a server falls behind an open loop (its requests answered after
    /// the run's end), they read as the rate asked; these read as what the
    /// server delivered.
    pub delivered_rps: f64,
    /// 2xx answers received while measuring, per second.
    pub delivered_goodput_rps: f64,
    pub latency_ms: Latency,
    /// The same percentiles per HTTP status (or `timeout` / `connect_error`).
    pub latency_ms_by_status: BTreeMap<String, Latency>,
    /// Admitted (2xx) requests' latency less the queue wait the server reported
    /// (`x-queue-time`): what admission costs a request beyond its wait.
    pub admitted_ms_less_queue: Option<Latency>,
    /// Open loop: how late requests started after their scheduled start (the
    /// load generator's own lag, which the latency includes; when it grows, the
    /// generator is short of CPU, not the server slow).
    pub send_lag_ms: Option<Latency>,
    /// Open loop: requests that started late because all `--max-in-flight`
    /// requests were unanswered (the server's pace, not the generator's CPU).
    pub in_flight_waits: Option<u64>,
    /// Per 100 ms window: [seconds since start, requests, p50 ms, p99 ms].
    pub timeline: Vec<[f64; 4]>,
    /// Per 100 ms window, as rates: [seconds since start, 2xx/s, refusals/s
    /// (429 and 503), other errors/s], by the window the request started in.
    pub answers_per_s: Vec<[f64; 4]>,
    /// Latency distribution: [bucket upper bound ms, requests], 40 equal buckets
    /// up to p99.9 (slower requests are in the last bucket).
    pub distribution: Vec<[f64; 2]>,
    /// One entry per `--schedule` step (none without a schedule).
    pub steps: Vec<StepReport>,
    pub targets: Vec<TargetResult>,
    pub passed: bool,
}

/// One schedule step. A request belongs to the step it was scheduled in (its
/// latency, status and count), except for `rps` and `goodput_rps`: answers
/// received during the step, over its duration, i.e. what the server delivered
/// then (below the target when it falls behind).
#[derive(Debug, Serialize)]
pub struct StepReport {
    /// 1-based.
    pub step: usize,
    /// When it started, in seconds since measuring began.
    pub start_s: f64,
    pub duration_s: f64,
    pub target_rps: f64,
    /// Requests scheduled in the step (answered or failed by the end of the run).
    pub requests: u64,
    pub ok: u64,
    /// Answers received during the step, per second.
    pub rps: f64,
    /// 2xx answers received during the step, per second.
    pub goodput_rps: f64,
    pub latency_ms: Latency,
    /// How late the step's requests started after their scheduled start.
    pub send_lag_ms: Latency,
    pub errors_by_status: BTreeMap<String, u64>,
    pub error_rate: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub limit: f64,
    pub value: f64,
    pub passed: bool,
}

/// Everything the workers record during the measured part of a run.
pub struct Samples {
    /// Latency in microseconds of every measured request.
    hist: Histogram<u64>,
    /// The same, per `WINDOW_MS` window since measuring began.
    windows: BTreeMap<u64, Histogram<u64>>,
    /// Per window: 2xx, refused (429, 503) and other answers.
    window_outcomes: BTreeMap<u64, [u64; 3]>,
    /// Requests by HTTP status, or `timeout` / `connect_error`.
    statuses: BTreeMap<String, u64>,
    /// Latency per status: under overload, how fast refusals come back and how
    /// slow admitted requests get are separate questions.
    by_status: BTreeMap<String, Histogram<u64>>,
    /// 2xx latency less the server's reported queue wait.
    less_queue: Histogram<u64>,
    /// Open loop: how late requests started after their scheduled start.
    lag: Histogram<u64>,
    /// Open loop: requests that waited for a free place among those in flight.
    in_flight_waits: u64,
    /// Per schedule step (empty without a schedule).
    steps: Vec<StepSamples>,
    /// Answers received while measuring (to requests of the warm-up too),
    /// and how many of them were 2xx.
    delivered: u64,
    delivered_ok: u64,
}

/// What one schedule step recorded.
struct StepSamples {
    /// Latency of the requests scheduled in the step.
    hist: Histogram<u64>,
    /// Their statuses.
    statuses: BTreeMap<String, u64>,
    /// How late they started.
    lag: Histogram<u64>,
    /// Answers received during the step, and how many of them were 2xx.
    answered: u64,
    answered_ok: u64,
}

impl Default for Samples {
    fn default() -> Self {
        Self::new()
    }
}

impl Samples {
    pub fn new() -> Self {
        Self::with_steps(0)
    }

    /// Samples with room for a schedule of `steps` steps.
    pub fn with_steps(steps: usize) -> Self {
        Samples {
            hist: new_hist(),
            windows: BTreeMap::new(),
            window_outcomes: BTreeMap::new(),
            statuses: BTreeMap::new(),
            by_status: BTreeMap::new(),
            less_queue: new_hist(),
            lag: new_hist(),
            in_flight_waits: 0,
            steps: (0..steps)
                .map(|_| StepSamples {
                    hist: new_hist(),
                    lag: new_hist(),
                    statuses: BTreeMap::new(),
                    answered: 0,
                    answered_ok: 0,
                })
                .collect(),
            delivered: 0,
            delivered_ok: 0,
        }
    }

    /// A request scheduled in `step`: its latency and status.
    pub fn record_step(&mut self, step: usize, latency_us: u64, status: &str) {
        if let Some(s) = self.steps.get_mut(step) {
            let _ = s.hist.record(latency_us);
            *s.statuses.entry(status.to_string()).or_insert(0) += 1;
        }
    }

    /// How late an open-loop request started, in microseconds (0 is on time),
    /// and the step it was scheduled in.
    /// A request that waited for one of the `--max-in-flight` requests to
    /// be answered before it could start.
    pub fn record_in_flight_wait(&mut self) {
        self.in_flight_waits += 1;
    }

    pub fn record_lag(&mut self, step: Option<usize>, us: u64) {
        // The histogram starts at 1 us; on time and 1 us late are one bucket.
        let _ = self.lag.record(us.max(1));
        if let Some(s) = step.and_then(|i| self.steps.get_mut(i)) {
            let _ = s.lag.record(us.max(1));
        }
    }

    /// An answer received during `step`.
    pub fn record_answer(&mut self, step: usize, ok: bool) {
        if let Some(s) = self.steps.get_mut(step) {
            s.answered += 1;
            s.answered_ok += u64::from(ok);
        }
    }

    /// An answer received before measuring ended.
    pub fn record_delivered(&mut self, ok: bool) {
        self.delivered += 1;
        self.delivered_ok += u64::from(ok);
    }

    /// An admitted request's latency less its queue wait, in microseconds.
    pub fn record_less_queue(&mut self, us: u64) {
        let _ = self.less_queue.record(us.max(1));
    }

    /// One request: `window` is its start in `WINDOW_MS` units since measuring began.
    pub fn record(&mut self, window: u64, latency_us: u64, status: String) {
        // Values past the histogram's bound (100 s) are dropped, as the client
        // times out well before.
        let _ = self.hist.record(latency_us);
        let _ = self
            .windows
            .entry(window)
            .or_insert_with(new_hist)
            .record(latency_us);
        let _ = self
            .by_status
            .entry(status.clone())
            .or_insert_with(new_hist)
            .record(latency_us);
        let outcome = match status.as_str() {
            s if s.starts_with('2') => 0,
            "429" | "503" | "ResourceExhausted" | "Unavailable" => 1,
            _ => 2,
        };
        self.window_outcomes.entry(window).or_insert([0; 3])[outcome] += 1;
        *self.statuses.entry(status).or_insert(0) += 1;
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 us .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// The report of a run that measured `samples` over `elapsed`, sending
/// `payloads` distinct requests.
pub fn summarize(
    cfg: &BenchConfig,
    samples: &Samples,
    elapsed: Duration,
    payloads: usize,
) -> Report {
    let hist = &samples.hist;
    let total = hist.len();
    let is_ok = |status: &str| status.starts_with('2');
    let ok = samples
        .statuses
        .iter()
        .filter(|(k, _)| is_ok(k))
        .map(|(_, v)| *v)
        .sum::<u64>();
    let errors_by_status: BTreeMap<String, u64> = samples
        .statuses
        .iter()
        .filter(|(k, _)| !is_ok(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let latency = latency_of(hist);
    let latency_ms_by_status = samples
        .by_status
        .iter()
        .map(|(k, h)| (k.clone(), latency_of(h)))
        .collect();
    let timeline = samples
        .windows
        .iter()
        .map(|(w, h)| {
            [
                (*w * WINDOW_MS) as f64 / 1e3,
                h.len() as f64,
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
            ]
        })
        .collect();
    let error_rate = if total == 0 {
        1.0
    } else {
        (total - ok) as f64 / total as f64
    };
    let rps = total as f64 / secs;
    let targets = targets(cfg, latency.p99, rps, error_rate);
    let passed = total > 0 && targets.iter().all(|t| t.passed);
    let steps = match &cfg.schedule {
        Some(schedule) => schedule
            .steps()
            .iter()
            .zip(schedule.starts())
            .zip(&samples.steps)
            .enumerate()
            .map(|(i, ((step, start), s))| {
                let requests = s.hist.len();
                let ok = s
                    .statuses
                    .iter()
                    .filter(|(k, _)| is_ok(k))
                    .map(|(_, v)| *v)
                    .sum::<u64>();
                let secs = step.duration.as_secs_f64();
                StepReport {
                    step: i + 1,
                    start_s: start.as_secs_f64(),
                    duration_s: secs,
                    target_rps: step.rate,
                    requests,
                    ok,
                    rps: s.answered as f64 / secs,
                    goodput_rps: s.answered_ok as f64 / secs,
                    latency_ms: latency_of(&s.hist),
                    send_lag_ms: latency_of(&s.lag),
                    errors_by_status: s
                        .statuses
                        .iter()
                        .filter(|(k, _)| !is_ok(k))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect(),
                    error_rate: if requests == 0 {
                        0.0
                    } else {
                        (requests - ok) as f64 / requests as f64
                    },
                }
            })
            .collect(),
        None => Vec::new(),
    };
    Report {
        model: cfg.model.clone(),
        protocol: cfg.protocol.to_string(),
        payloads,
        mode: if cfg.rate.is_some() || cfg.schedule.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        connections: cfg.connections,
        rate: cfg.rate,
        schedule: cfg.schedule.as_ref().map(|s| s.to_string()),
        instances_per_request: cfg.instances,
        duration_s: secs,
        requests: total,
        ok,
        errors_by_status,
        error_rate,
        rps,
        goodput_rps: ok as f64 / secs,
        delivered_rps: samples.delivered as f64 / secs,
        delivered_goodput_rps: samples.delivered_ok as f64 / secs,
        latency_ms: latency,
        latency_ms_by_status,
        admitted_ms_less_queue: (!samples.less_queue.is_empty())
            .then(|| latency_of(&samples.less_queue)),
        send_lag_ms: (!samples.lag.is_empty()).then(|| latency_of(&samples.lag)),
        in_flight_waits: (!samples.lag.is_empty()).then_some(samples.in_flight_waits),
        timeline,
        answers_per_s: samples
            .window_outcomes
            .iter()
            .map(|(w, [ok, refused, other])| {
                let per_s = 1e3 / WINDOW_MS as f64;
                [
                    (*w * WINDOW_MS) as f64 / 1e3,
                    *ok as f64 * per_s,
                    *refused as f64 * per_s,
                    *other as f64 * per_s,
                ]
            })
            .collect(),
        distribution: distribution(hist),
        steps,
        targets,
        passed,
    }
}

fn latency_of(hist: &Histogram<u64>) -> Latency {
    Latency {
        mean: hist.mean() / 1e3,
        p50: ms(hist.value_at_quantile(0.50)),
        p90: ms(hist.value_at_quantile(0.90)),
        p95: ms(hist.value_at_quantile(0.95)),
        p99: ms(hist.value_at_quantile(0.99)),
        p999: ms(hist.value_at_quantile(0.999)),
        max: ms(hist.max()),
    }
}

/// `BUCKETS` equal buckets up to p99.9; slower requests land in the last one.
fn distribution(hist: &Histogram<u64>) -> Vec<[f64; 2]> {
    let hi_us = hist.value_at_quantile(0.999).max(BUCKETS);
    let step = hi_us.div_ceil(BUCKETS);
    let mut buckets: Vec<[f64; 2]> = (1..=BUCKETS).map(|i| [ms(i * step), 0.0]).collect();
    let last = buckets.len() - 1;
    for v in hist.iter_recorded() {
        let b = ((v.value_iterated_to() / step) as usize).min(last);
        buckets[b][1] += v.count_at_value() as f64;
    }
    buckets
}

/// The targets the command line set, each checked against the measurement.
fn targets(cfg: &BenchConfig, p99_ms: f64, rps: f64, error_rate: f64) -> Vec<TargetResult> {
    let mut out = Vec::new();
    let mut check = |name: &str, limit: Option<f64>, value: f64, passed: fn(f64, f64) -> bool| {
        if let Some(limit) = limit {
            out.push(TargetResult {
                name: name.into(),
                limit,
                value,
                passed: passed(value, limit),
            });
        }
    };
    check("p99_max_ms", cfg.p99_max_ms, p99_ms, |v, l| v <= l);
    check("min_rps", cfg.min_rps, rps, |v, l| v >= l);
    check("max_error_rate", cfg.max_error_rate, error_rate, |v, l| {
        v <= l
    });
    out
}

pub fn print_table(r: &Report) {
    println!(
        "model {}  protocol {}  mode {}  connections {}  rate {}  instances/request {}  payloads {}",
        r.model,
        r.protocol,
        r.mode,
        r.connections,
        match (&r.schedule, r.rate) {
            (Some(s), _) => format!("schedule {s}"),
            (None, Some(v)) => format!("{v}/s"),
            (None, None) => "-".into(),
        },
        r.instances_per_request,
        r.payloads
    );
    println!(
        "{:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
    );
    let l = &r.latency_ms;
    println!(
        "{:>10} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9}",
        r.requests,
        r.rps,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        r.requests - r.ok
    );
    if !r.errors_by_status.is_empty() {
        println!("  2xx per second: {:.1}", r.goodput_rps);
    }
    for (status, n) in &r.errors_by_status {
        let p99 = r.latency_ms_by_status.get(status).map_or(0.0, |l| l.p99);
        println!("  status {status}: {n} (p99 {p99:.3} ms)");
    }
    if let Some(l) = &r.send_lag_ms {
        println!(
            "  started late vs schedule (load generator): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            l.p50, l.p99, l.max
        );
        match r.in_flight_waits {
            _ if l.p99 <= BEHIND_MS => {}
            Some(waits) if waits > 0 => println!(
                "  FELL BEHIND its schedule (p99 over {BEHIND_MS} ms late) because the server \
                 held every request allowed in flight (--max-in-flight) for {waits} of them: \
                 the rate sent was below the rate asked, and latencies include the delay"
            ),
            _ => println!(
                "  the load generator FELL BEHIND its schedule (p99 over {BEHIND_MS} ms late) \
                 for want of CPU: the rate sent was below the rate asked, and latencies \
                 include the delay"
            ),
        }
    }
    if r.mode == "open" {
        println!(
            "  answered while measuring: {:.1}/s, 2xx {:.1}/s (what the server delivered; \
             req/s above counts requests by when they were due)",
            r.delivered_rps, r.delivered_goodput_rps
        );
    }
    print_steps(&r.steps);
    for t in &r.targets {
        println!(
            "  target {} {} (limit {}, measured {:.3})",
            t.name,
            if t.passed { "met" } else { "MISSED" },
            t.limit,
            t.value
        );
    }
}

/// A p99 send lag past this says the generator, not the server, set the pace.
const BEHIND_MS: f64 = 1.0;

/// One line per schedule step, then each step's errors by status.
fn print_steps(steps: &[StepReport]) {
    if steps.is_empty() {
        return;
    }
    println!(
        "{:>5} {:>15} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "step",
        "seconds",
        "target/s",
        "requests",
        "req/s",
        "2xx/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors"
    );
    for s in steps {
        let l = &s.latency_ms;
        println!(
            "{:>5} {:>15} {:>9.1} {:>9} {:>9.1} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>7}",
            s.step,
            format!("{:.1}-{:.1}", s.start_s, s.start_s + s.duration_s),
            s.target_rps,
            s.requests,
            s.rps,
            s.goodput_rps,
            l.p50,
            l.p95,
            l.p99,
            s.requests - s.ok
        );
    }
    for s in steps {
        for (status, n) in &s.errors_by_status {
            println!("  step {} status {status}: {n}", s.step);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn cfg(args: &[&str]) -> BenchConfig {
        BenchConfig::try_parse_from(std::iter::once("inferd-bench").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn percentiles_errors_and_targets() {
        let mut s = Samples::new();
        for i in 1..=100u64 {
            let status = if i <= 98 { "200" } else { "503" };
            s.record(i / 50, i * 1000, status.into());
        }
        let r = summarize(
            &cfg(&[
                "--p99-max-ms",
                "50",
                "--min-rps",
                "10",
                "--max-error-rate",
                "0.05",
            ]),
            &s,
            Duration::from_secs(2),
            3,
        );
        assert_eq!((r.requests, r.ok), (100, 98));
        assert_eq!(r.errors_by_status.get("503"), Some(&2));
        assert!((r.error_rate - 0.02).abs() < 1e-9);
        assert!((r.rps - 50.0).abs() < 1e-9);
        assert!((r.goodput_rps - 49.0).abs() < 1e-9);
        // The two 503s were the slowest (99 and 100 ms); the 200s' p99 is 98 ms.
        let by = &r.latency_ms_by_status;
        assert!((by["503"].p50 - 99.0).abs() < 0.1, "{}", by["503"].p50);
        assert!((by["200"].max - 98.0).abs() < 0.1, "{}", by["200"].max);
        assert!(
            (r.latency_ms.p50 - 50.0).abs() < 0.1,
            "{}",
            r.latency_ms.p50
        );
        assert!((r.latency_ms.max - 100.0).abs() < 0.1);
        assert_eq!(r.timeline.len(), 3);
        assert_eq!(r.distribution.len(), BUCKETS as usize);
        let counted: f64 = r.distribution.iter().map(|b| b[1]).sum();
        assert_eq!(counted, 100.0);
        let by_name: BTreeMap<&str, bool> = r
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.passed))
            .collect();
        assert!(!by_name["p99_max_ms"]);
        assert!(by_name["min_rps"]);
        assert!(by_name["max_error_rate"]);
        assert!(!r.passed);
        assert_eq!(r.mode, "closed");
        assert_eq!((r.protocol.as_str(), r.payloads), ("v1", 3));
        assert!(r.steps.is_empty() && r.schedule.is_none() && r.send_lag_ms.is_none());
        assert_eq!(
            r.in_flight_waits, None,
            "closed loop: no schedule to wait on"
        );
    }

    #[test]
    fn a_server_behind_the_schedule_delivers_less_than_was_due() {
        // An open loop of 100 requests due in 2 s; the server answered 60 of
        // them (54 with 200) before the end, the rest after.
        let c = cfg(&["--rate", "50"]);
        let mut s = Samples::new();
        for i in 0..100u64 {
            let status = if i % 10 == 9 { "429" } else { "200" };
            s.record(i / 5, 1000 + i * 100, status.into());
            if i < 60 {
                s.record_delivered(status == "200");
            }
        }
        let r = summarize(&c, &s, Duration::from_secs(2), 1);
        assert!((r.rps - 50.0).abs() < 1e-9 && (r.goodput_rps - 45.0).abs() < 1e-9);
        assert!((r.delivered_rps - 30.0).abs() < 1e-9, "{}", r.delivered_rps);
        assert!(
            (r.delivered_goodput_rps - 27.0).abs() < 1e-9,
            "{}",
            r.delivered_goodput_rps
        );
    }

    #[test]
    fn steps_report_their_own_figures() {
        let c = cfg(&["--schedule", "1s:100,2s:50,1s:0"]);
        let mut s = Samples::with_steps(3);
        // Step 1: 100 requests, 1..=100 ms, the last 5 refused; all answered in
        // step 1 but 10, answered in step 2.
        for i in 1..=100u64 {
            let status = if i > 95 { "429" } else { "200" };
            s.record(i / 10, i * 1000, status.into());
            s.record_step(0, i * 1000, status);
            s.record_answer(if i > 90 { 1 } else { 0 }, status == "200");
        }
        // Step 2: 100 requests at 2 ms, answered in step 2.
        for _ in 0..100 {
            s.record(15, 2000, "200".into());
            s.record_step(1, 2000, "200");
            s.record_answer(1, true);
        }
        s.record_lag(Some(1), 300);
        s.record_lag(Some(1), 0);
        s.record_lag(None, 2000);
        s.record_in_flight_wait();
        let r = summarize(&c, &s, Duration::from_secs(4), 2);
        assert_eq!(r.mode, "open");
        assert_eq!(r.in_flight_waits, Some(1));
        let lag = r.send_lag_ms.as_ref().expect("open loop lag");
        assert!((lag.max - 2.0).abs() < 0.01, "{}", lag.max);
        assert!((r.steps[1].send_lag_ms.max - 0.3).abs() < 0.01);
        assert_eq!(r.steps[0].send_lag_ms.max, 0.0);
        assert_eq!(r.schedule.as_deref(), Some("1s:100,2s:50,1s:0"));
        assert_eq!(r.steps.len(), 3);
        let (a, b, z) = (&r.steps[0], &r.steps[1], &r.steps[2]);
        assert_eq!(
            (a.step, a.start_s, a.duration_s, a.target_rps),
            (1, 0.0, 1.0, 100.0)
        );
        assert_eq!((a.requests, a.ok), (100, 95));
        assert_eq!(a.errors_by_status.get("429"), Some(&5));
        assert!((a.error_rate - 0.05).abs() < 1e-9);
        assert!((a.rps - 90.0).abs() < 1e-9 && (a.goodput_rps - 90.0).abs() < 1e-9);
        assert!(
            (a.latency_ms.p50 - 50.0).abs() < 0.1,
            "{}",
            a.latency_ms.p50
        );
        assert!(
            (a.latency_ms.p95 - 95.0).abs() < 0.1,
            "{}",
            a.latency_ms.p95
        );
        assert!(
            (a.latency_ms.p99 - 99.0).abs() < 0.1,
            "{}",
            a.latency_ms.p99
        );
        assert_eq!(
            (b.start_s, b.target_rps, b.requests, b.ok),
            (1.0, 50.0, 100, 100)
        );
        // 110 answers over 2 s, 105 of them 2xx.
        assert!((b.rps - 55.0).abs() < 1e-9 && (b.goodput_rps - 52.5).abs() < 1e-9);
        assert!(b.errors_by_status.is_empty());
        assert_eq!((z.requests, z.rps, z.error_rate), (0, 0.0, 0.0));
        assert_eq!(r.requests, 200);
    }

    #[test]
    fn no_requests_is_a_failed_run() {
        let r = summarize(&cfg(&[]), &Samples::new(), Duration::from_secs(1), 1);
        assert_eq!(r.requests, 0);
        assert_eq!(r.error_rate, 1.0);
        assert!(r.targets.is_empty());
        assert!(!r.passed);
    }
}

//! What a run measured and what it concludes: the samples the workers record
//! (HDR histograms overall and per time window, counts by status), the `Report`
//! built from them (percentiles, timeline, distribution), the targets checked
//! against it, and the table printed at the end.

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
    pub mode: String,
    pub connections: usize,
    pub rate: Option<f64>,
    pub instances_per_request: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    pub error_rate: f64,
    pub rps: f64,
    /// 2xx answers per second (the rest were refused or failed).
    pub goodput_rps: f64,
    pub latency_ms: Latency,
    /// The same percentiles per HTTP status (or `timeout` / `connect_error`).
    pub latency_ms_by_status: BTreeMap<String, Latency>,
    /// Admitted (2xx) requests' latency less the queue wait the server reported
    /// (`x-queue-time`): what admission costs a request beyond its wait.
    pub admitted_ms_less_queue: Option<Latency>,
    /// Per 100 ms window: [seconds since start, requests, p50 ms, p99 ms].
    pub timeline: Vec<[f64; 4]>,
    /// Latency distribution: [bucket upper bound ms, requests], 40 equal buckets
    /// up to p99.9 (slower requests are in the last bucket).
    pub distribution: Vec<[f64; 2]>,
    pub targets: Vec<TargetResult>,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
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
    /// Requests by HTTP status, or `timeout` / `connect_error`.
    statuses: BTreeMap<String, u64>,
    /// Latency per status: under overload, how fast refusals come back and how
    /// slow admitted requests get are separate questions.
    by_status: BTreeMap<String, Histogram<u64>>,
    /// 2xx latency less the server's reported queue wait.
    less_queue: Histogram<u64>,
}

impl Default for Samples {
    fn default() -> Self {
        Self::new()
    }
}

impl Samples {
    pub fn new() -> Self {
        Samples {
            hist: new_hist(),
            windows: BTreeMap::new(),
            statuses: BTreeMap::new(),
            by_status: BTreeMap::new(),
            less_queue: new_hist(),
        }
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

/// The report of a run that measured `samples` over `elapsed`.
pub fn summarize(cfg: &BenchConfig, samples: &Samples, elapsed: Duration) -> Report {
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
    Report {
        model: cfg.model.clone(),
        mode: if cfg.rate.is_some() { "open" } else { "closed" }.into(),
        connections: cfg.connections,
        rate: cfg.rate,
        instances_per_request: cfg.instances,
        duration_s: secs,
        requests: total,
        ok,
        errors_by_status,
        error_rate,
        rps,
        goodput_rps: ok as f64 / secs,
        latency_ms: latency,
        latency_ms_by_status,
        admitted_ms_less_queue: (!samples.less_queue.is_empty())
            .then(|| latency_of(&samples.less_queue)),
        timeline,
        distribution: distribution(hist),
        targets,
        passed,
    }
}

fn latency_of(hist: &Histogram<u64>) -> Latency {
    Latency {
        mean: hist.mean() / 1e3,
        p50: ms(hist.value_at_quantile(0.50)),
        p90: ms(hist.value_at_quantile(0.90)),
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
        "model {}  mode {}  connections {}  rate {}  instances/request {}",
        r.model,
        r.mode,
        r.connections,
        r.rate
            .map(|v| format!("{v}/s"))
            .unwrap_or_else(|| "-".into()),
        r.instances_per_request
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
    }

    #[test]
    fn no_requests_is_a_failed_run() {
        let r = summarize(&cfg(&[]), &Samples::new(), Duration::from_secs(1));
        assert_eq!(r.requests, 0);
        assert_eq!(r.error_rate, 1.0);
        assert!(r.targets.is_empty());
        assert!(!r.passed);
    }
}

//! `inferd bench`: a load generator for a running inferd (or any server with the
//! same `/predict` contract).
//!
//! Closed loop (N connections, each sending its next request when the last one
//! answers) or open loop (a fixed request rate; latency is measured from each
//! request's scheduled start, so a stalled server cannot hide queueing from the
//! figures). Payloads are the model's held-out golden inputs. Percentiles come
//! from an HDR histogram; the report is a table, optional JSON, and an optional
//! SVG plot of latency over time and its distribution. Targets set the exit code.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Args)]
pub struct BenchConfig {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Model to load; payloads come from its golden.json.
    #[arg(long, default_value = "text-classifier")]
    pub model: String,
    #[arg(long, env = "INFERD_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,
    /// Instances per request.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Concurrent connections (closed loop).
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Requests per second (open loop); overrides the closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to measure, e.g. `10s`, `500ms`, `1m`.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many measured requests instead (whichever comes first).
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Unmeasured load before measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Fail (exit 2) if p99 latency exceeds this.
    #[arg(long)]
    pub p99_max_ms: Option<f64>,
    /// Fail (exit 2) if throughput is below this.
    #[arg(long)]
    pub min_rps: Option<f64>,
    /// Fail (exit 2) if the share of non-2xx or failed requests exceeds this (0..1).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (latency over time, latency histogram) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "s" | "" => v,
        "m" => v * 60.0,
        _ => return Err(format!("unknown unit in {s} (use ms, s or m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("not a duration: {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

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
    pub latency_ms: Latency,
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

/// Everything the workers record, merged at the end.
struct Record {
    hist: Histogram<u64>,
    /// (window index, latency us) per measured request.
    windows: BTreeMap<u64, Histogram<u64>>,
    statuses: BTreeMap<String, u64>,
}

impl Record {
    fn new() -> Self {
        Record {
            hist: new_hist(),
            windows: BTreeMap::new(),
            statuses: BTreeMap::new(),
        }
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 us .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

const WINDOW_MS: u64 = 100;

fn payloads(cfg: &BenchConfig) -> anyhow::Result<Vec<Vec<u8>>> {
    let path = cfg
        .models_dir
        .join(&cfg.model)
        .join("1")
        .join("golden.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let golden: Value = serde_json::from_str(&text)?;
    let inputs: Vec<Value> = golden["cases"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{}: no cases", path.display()))?
        .iter()
        .map(|c| c["input"].clone())
        .collect();
    anyhow::ensure!(!inputs.is_empty(), "{}: no cases", path.display());
    let n = cfg.instances.max(1);
    Ok((0..inputs.len())
        .map(|i| {
            let inst: Vec<Value> = (0..n)
                .map(|k| inputs[(i + k) % inputs.len()].clone())
                .collect();
            serde_json::to_vec(&json!({"model": cfg.model, "instances": inst})).unwrap_or_default()
        })
        .collect())
}

async fn send(client: &reqwest::Client, url: &str, body: &[u8]) -> String {
    match client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
    {
        Ok(r) => {
            let st = r.status().as_u16();
            let _ = r.bytes().await;
            st.to_string()
        }
        Err(e) if e.is_timeout() => "timeout".into(),
        Err(_) => "connect_error".into(),
    }
}

pub async fn run(cfg: BenchConfig) -> anyhow::Result<Report> {
    let bodies = Arc::new(payloads(&cfg)?);
    let url = format!("{}/predict", cfg.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.connections.max(1))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let record = Arc::new(Mutex::new(Record::new()));
    let started_measuring = Instant::now() + cfg.warmup;
    let stop_at = started_measuring + cfg.duration;
    let limit = cfg.requests.unwrap_or(u64::MAX);
    let measured = Arc::new(AtomicU64::new(0));
    let next_body = Arc::new(AtomicU64::new(0));

    let bar = if cfg.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new((cfg.warmup + cfg.duration).as_millis() as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let begin = Instant::now();
    let ticker = {
        let (bar, measured) = (bar.clone(), measured.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let el = begin.elapsed();
                bar.set_position(el.as_millis() as u64);
                let n = measured.load(Ordering::Relaxed);
                let secs = Instant::now()
                    .saturating_duration_since(started_measuring)
                    .as_secs_f64();
                if secs > 0.0 {
                    bar.set_message(format!("{n} requests, {:.0} req/s", n as f64 / secs));
                } else {
                    bar.set_message("warming up".to_string());
                }
            }
        })
    };

    // One measurement: `scheduled` is when the request should have started.
    let observe = {
        let (record, measured) = (record.clone(), measured.clone());
        move |scheduled: Instant, status: String| {
            if scheduled < started_measuring {
                return;
            }
            let lat = scheduled.elapsed().as_micros().max(1) as u64;
            let window = (scheduled - started_measuring).as_millis() as u64 / WINDOW_MS;
            let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
            let _ = r.hist.record(lat);
            let _ = r.windows.entry(window).or_insert_with(new_hist).record(lat);
            *r.statuses.entry(status).or_insert(0) += 1;
            measured.fetch_add(1, Ordering::Relaxed);
        }
    };
    let done = {
        let measured = measured.clone();
        move || Instant::now() >= stop_at || measured.load(Ordering::Relaxed) >= limit
    };

    if let Some(rate) = cfg.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut tasks = tokio::task::JoinSet::new();
        let mut k: u64 = 0;
        while !done() {
            let scheduled = begin + interval.mul_f64(k as f64);
            tokio::time::sleep_until(scheduled.into()).await;
            let (client, url, bodies, observe) =
                (client.clone(), url.clone(), bodies.clone(), observe.clone());
            let body_i = next_body.fetch_add(1, Ordering::Relaxed) as usize % bodies.len();
            tasks.spawn(async move {
                let st = send(&client, &url, &bodies[body_i]).await;
                observe(scheduled, st);
            });
            k += 1;
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    } else {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..cfg.connections.max(1) {
            let (client, url, bodies, observe, done, next_body) = (
                client.clone(),
                url.clone(),
                bodies.clone(),
                observe.clone(),
                done.clone(),
                next_body.clone(),
            );
            tasks.spawn(async move {
                while !done() {
                    let body_i = next_body.fetch_add(1, Ordering::Relaxed) as usize % bodies.len();
                    let t = Instant::now();
                    let st = send(&client, &url, &bodies[body_i]).await;
                    observe(t, st);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    ticker.abort();
    bar.finish_and_clear();

    let elapsed = Instant::now()
        .saturating_duration_since(started_measuring)
        .min(cfg.duration.max(Duration::from_millis(1)));
    let elapsed = if cfg.requests.is_some() {
        Instant::now().saturating_duration_since(started_measuring)
    } else {
        elapsed
    };
    let r = record.lock().unwrap_or_else(|p| p.into_inner());
    let total = r.hist.len();
    let ok = r
        .statuses
        .iter()
        .filter(|(k, _)| k.starts_with('2'))
        .map(|(_, v)| *v)
        .sum::<u64>();
    let errors: BTreeMap<String, u64> = r
        .statuses
        .iter()
        .filter(|(k, _)| !k.starts_with('2'))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let ms = |us: u64| us as f64 / 1e3;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let latency = Latency {
        mean: r.hist.mean() / 1e3,
        p50: ms(r.hist.value_at_quantile(0.50)),
        p90: ms(r.hist.value_at_quantile(0.90)),
        p99: ms(r.hist.value_at_quantile(0.99)),
        p999: ms(r.hist.value_at_quantile(0.999)),
        max: ms(r.hist.max()),
    };
    let timeline = r
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
    let hi_us = r.hist.value_at_quantile(0.999).max(40);
    let step = hi_us.div_ceil(40);
    let mut distribution: Vec<[f64; 2]> = (1..=40).map(|i| [ms(i * step), 0.0]).collect();
    for v in r.hist.iter_recorded() {
        let b = ((v.value_iterated_to() / step) as usize).min(39);
        distribution[b][1] += v.count_at_value() as f64;
    }
    let error_rate = if total == 0 {
        1.0
    } else {
        (total - ok) as f64 / total as f64
    };
    let rps = total as f64 / secs;
    let mut targets = Vec::new();
    if let Some(l) = cfg.p99_max_ms {
        targets.push(TargetResult {
            name: "p99_max_ms".into(),
            limit: l,
            value: latency.p99,
            passed: latency.p99 <= l,
        });
    }
    if let Some(l) = cfg.min_rps {
        targets.push(TargetResult {
            name: "min_rps".into(),
            limit: l,
            value: rps,
            passed: rps >= l,
        });
    }
    if let Some(l) = cfg.max_error_rate {
        targets.push(TargetResult {
            name: "max_error_rate".into(),
            limit: l,
            value: error_rate,
            passed: error_rate <= l,
        });
    }
    let passed = total > 0 && targets.iter().all(|t| t.passed);
    Ok(Report {
        model: cfg.model.clone(),
        mode: if cfg.rate.is_some() {
            "open".into()
        } else {
            "closed".into()
        },
        connections: cfg.connections,
        rate: cfg.rate,
        instances_per_request: cfg.instances,
        duration_s: secs,
        requests: total,
        ok,
        errors_by_status: errors,
        error_rate,
        rps,
        latency_ms: latency,
        timeline,
        distribution,
        targets,
        passed,
    })
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
    for (status, n) in &r.errors_by_status {
        println!("  status {status}: {n}");
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

/// Latency over time (p50 and p99 per window) above a latency histogram.
pub fn plot(r: &Report, path: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(350);
    let t_max = r
        .timeline
        .last()
        .map(|w| w[0] + WINDOW_MS as f64 / 1e3)
        .unwrap_or(1.0);
    let y_max = r
        .timeline
        .iter()
        .map(|w| w[3])
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: latency over time", r.model),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            r.timeline.iter().map(|w| (w[0], w[2])),
            &BLUE,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            r.timeline.iter().map(|w| (w[0], w[3])),
            &RED,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let buckets = r.distribution.len().max(1);
    let c_max = r
        .distribution
        .iter()
        .map(|b| b[1] as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let width = r.distribution.first().map(|b| b[0]).unwrap_or(1.0);
    let mut hist = ChartBuilder::on(&bottom)
        .caption("latency distribution (ms, up to p99.9)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d((0..buckets).into_segmented(), 0..c_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    hist.configure_mesh()
        .y_desc("requests")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                format!("{:.2}", (*i as f64 + 1.0) * width)
            }
            SegmentValue::Last => String::new(),
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    hist.draw_series(
        Histogram::vertical(&hist).style(BLUE.filled()).data(
            r.distribution
                .iter()
                .enumerate()
                .map(|(i, b)| (i, b[1] as u64)),
        ),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Runs the benchmark, prints and writes the report; exit code 2 if a target was missed.
pub async fn main(cfg: BenchConfig) -> anyhow::Result<bool> {
    let report = run(cfg.clone()).await?;
    print_table(&report);
    if let Some(p) = &cfg.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(p) = &cfg.plot {
        plot(&report, p)?;
    }
    Ok(report.passed)
}

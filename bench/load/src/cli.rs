//! The command line: every flag of `inferd-bench` (those `inferd bench` had,
//! plus `--payloads`, `--protocol` and `--schedule`) and the duration parser
//! they share.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::protocol::{HttpClient, Protocol};
use crate::schedule::{parse_schedule, Schedule};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "inferd-bench",
    version,
    about = "Load-test a running inferd with the models' held-out inputs or your own payloads"
)]
pub struct BenchConfig {
    /// Server base URL; with --protocol grpc, the server's gRPC address
    /// (INFERD_GRPC_LISTEN, e.g. http://127.0.0.1:8081).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Model to load; payloads come from its golden.json unless --payloads is given.
    #[arg(long, default_value = "text-classifier")]
    pub model: String,
    /// Wire protocol.
    #[arg(long, value_enum, default_value_t = Protocol::V1)]
    pub protocol: Protocol,
    /// The client for --protocol v1 and v2. `lean`: each request encoded
    /// whole once and written on keep-alive HTTP/1.1 connections, about a
    /// third of reqwest's CPU a request (on loopback 25-30 us, mostly the
    /// kernel's, against 70-100), so that one core holds an open loop of
    /// 30,000 requests a second; plain http:// only (another URL goes
    /// through reqwest). `reqwest`: reqwest/hyper, for comparison.
    #[arg(long, value_enum, default_value_t = HttpClient::Lean)]
    pub http_client: HttpClient,
    /// JSON-lines file of payloads to send instead of the golden inputs. Each
    /// non-blank line is either a full request body for --protocol, sent as it
    /// is (v1: `{"model": ..., "instances": [...]}`; v2: `{"inputs": [...]}`),
    /// or one bare instance (a string for a text model, an array of rows for a
    /// window model), wrapped into a request for --model with --instances
    /// instances (its own and the next bare lines'). A bad line stops start-up,
    /// naming it. Requests go round robin over the lines, in order: each
    /// closed-loop connection starts at its own line, the open loop at line 1.
    #[arg(long, value_name = "FILE")]
    pub payloads: Option<PathBuf>,
    /// Directory holding `<model>/1/golden.json` (the server's models directory).
    #[arg(long, env = "INFERD_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,
    /// Model version to request and to take the golden inputs from; default:
    /// the server's latest, with version 1's inputs.
    #[arg(long)]
    pub model_version: Option<String>,
    /// The golden cases' field to send: `input` (as a client sends it; raw
    /// messages for text-classifier 2) or `model_input` (as the model sees it
    /// after the server's preprocessing, where the golden file keeps it).
    #[arg(long, default_value = "input")]
    pub golden_field: String,
    /// Instances per request.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Concurrent connections (closed loop).
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Requests per second (open loop); overrides the closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: most requests in flight at once, and so most connections
    /// (each kept open for reuse). A request due while all are busy starts
    /// late, and its latency still counts from when it was due. Without a
    /// bound the client opens a connection per late answer and closes it
    /// again when idle, and the connection churn, not the server, sets the
    /// rate.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Open loop on a rate schedule: comma-separated DURATION:RATE steps, e.g.
    /// `10s:100,30s:500,10s:0` (durations as for --duration, rates in requests
    /// per second). Steps jump, they do not ramp: each holds its rate for its
    /// duration, then the next starts at its own (write a ramp as several short
    /// steps); a step at 0 sends nothing. Replaces --rate and --duration: the
    /// run measures the steps' total, after a warm-up at the first non-zero
    /// step's rate. The report adds a row per step: the requests scheduled in
    /// it (their count, p50/p95/p99 and errors by status) and the answers
    /// received during it per second (the rate achieved).
    #[arg(long, value_parser = parse_schedule, conflicts_with_all = ["rate", "duration"])]
    pub schedule: Option<Schedule>,
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
    /// Write a plot here: PNG for `.png`, SVG for `.svg` (latency over time on
    /// a log axis, 2xx, refusals and errors per second over time, the latency
    /// distribution). Another extension is refused before the run.
    #[arg(long, value_parser = plot_path)]
    pub plot: Option<PathBuf>,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

impl BenchConfig {
    /// The open loop's schedule: `--schedule`, or `--rate` for `--duration`;
    /// `None` for the closed loop.
    pub fn open_schedule(&self) -> Result<Option<Schedule>, String> {
        match (&self.schedule, self.rate) {
            (Some(s), _) => Ok(Some(s.clone())),
            (None, Some(rate)) => {
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(format!("--rate {rate}: must be positive"));
                }
                Schedule::constant(rate, self.duration.max(Duration::from_millis(1)))
                    .map(Some)
                    .map_err(|e| format!("--rate {rate}: {e}"))
            }
            (None, None) => Ok(None),
        }
    }

    /// How long the run measures: the schedule's total or `--duration`.
    pub fn measured_duration(&self) -> Duration {
        match &self.schedule {
            Some(s) => s.total(),
            None => self.duration,
        }
    }
}

/// `10s`, `500ms`, `1m`, or a bare number of seconds.
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

/// `--plot`: a path whose extension names a format the plot can write.
fn plot_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    crate::plot::Format::of(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration(" 2 "), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn flags_match_the_former_subcommand() {
        let cfg = BenchConfig::try_parse_from([
            "inferd-bench",
            "--url",
            "http://h:1",
            "--model",
            "lstm-forecaster",
            "-c",
            "64",
            "-d",
            "2s",
            "--rate",
            "100",
            "--json",
            "r.json",
            "--plot",
            "p.svg",
            "--p99-max-ms",
            "10",
            "--min-rps",
            "5000",
            "--max-error-rate",
            "0",
            "--models-dir",
            "m",
            "-n",
            "7",
            "--warmup",
            "0s",
            "--instances",
            "3",
            "--quiet",
        ])
        .expect("flags parse");
        assert_eq!(cfg.url, "http://h:1");
        assert_eq!(cfg.model, "lstm-forecaster");
        assert_eq!(cfg.connections, 64);
        assert_eq!(cfg.duration, Duration::from_secs(2));
        assert_eq!(cfg.rate, Some(100.0));
        assert_eq!(cfg.p99_max_ms, Some(10.0));
        assert_eq!(cfg.min_rps, Some(5000.0));
        assert_eq!(cfg.max_error_rate, Some(0.0));
        assert_eq!(cfg.models_dir, PathBuf::from("m"));
        assert_eq!(cfg.requests, Some(7));
        assert_eq!(cfg.instances, 3);
        assert!(cfg.quiet);
        assert_eq!(cfg.protocol, Protocol::V1);
        assert!(cfg.payloads.is_none() && cfg.schedule.is_none());
        let s = cfg.open_schedule().expect("valid").expect("open loop");
        assert_eq!(s.to_string(), "2s:100");
    }

    #[test]
    fn new_flags_parse_and_the_schedule_replaces_rate_and_duration() {
        let cfg = BenchConfig::try_parse_from([
            "inferd-bench",
            "--protocol",
            "v2",
            "--payloads",
            "p.jsonl",
            "--schedule",
            "2s:10,500ms:0",
        ])
        .expect("flags parse");
        assert_eq!(cfg.protocol, Protocol::V2);
        assert_eq!(cfg.payloads, Some(PathBuf::from("p.jsonl")));
        assert_eq!(cfg.measured_duration(), Duration::from_millis(2500));
        let s = cfg.open_schedule().expect("valid").expect("open loop");
        assert_eq!(s.steps().len(), 2);
        for clash in [["--rate", "5"], ["-d", "3s"]] {
            let e = BenchConfig::try_parse_from(
                ["inferd-bench", "--schedule", "1s:5"]
                    .into_iter()
                    .chain(clash),
            )
            .expect_err("conflict");
            assert!(e.to_string().contains("cannot be used with"), "{e}");
        }
        let e = BenchConfig::try_parse_from(["inferd-bench", "--schedule", "1s:5,x"])
            .expect_err("bad schedule");
        assert!(e.to_string().contains("step 2"), "{e}");
        let g = BenchConfig::try_parse_from(["inferd-bench", "--protocol", "grpc"]).expect("grpc");
        assert_eq!(g.protocol, Protocol::Grpc);
        let e = BenchConfig::try_parse_from(["inferd-bench", "--protocol", "http3"])
            .expect_err("unknown");
        assert!(
            e.to_string().contains("v1") && e.to_string().contains("grpc"),
            "{e}"
        );
        let closed = BenchConfig::try_parse_from(["inferd-bench"]).expect("defaults");
        assert_eq!(closed.open_schedule(), Ok(None));
        let zero = BenchConfig::try_parse_from(["inferd-bench", "--rate", "0"]).expect("parses");
        assert!(zero.open_schedule().is_err());
    }
}

//! The command line: every flag of `inferd-bench` (the same ones `inferd bench`
//! had) and the duration parser they share.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "inferd-bench",
    version,
    about = "Load-test a running inferd with the models' held-out inputs"
)]
pub struct BenchConfig {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Model to load; payloads come from its golden.json.
    #[arg(long, default_value = "text-classifier")]
    pub model: String,
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
    }
}

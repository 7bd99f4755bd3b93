//! Logs. (Traces are configured by the standard `OTEL_*` variables, read by
//! `inferd-otlp`.)

use clap::{Args, ValueEnum};
use serde::Serialize;

/// `INFERD_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `Logs` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Logs")]
pub struct TelemetryArgs {
    /// Log line format; filter lines with `RUST_LOG` (default `info`). Text is
    /// coloured only when written to a terminal.
    #[arg(long, env = "INFERD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

//! The prediction log.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use inferd_predlog::{SinkConfig, WriterConfig};
use serde::Serialize;

use super::{check, HOUR_MS};

/// `INFERD_PREDLOG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PredLogMode {
    /// PostgreSQL when `--database-url` is set, else the JSON-lines file.
    Auto,
    /// PostgreSQL (`--database-url` required).
    Postgres,
    /// The JSON-lines file.
    Jsonl,
    /// No prediction log.
    Off,
}

/// `INFERD_PREDLOG_INPUTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogInputs {
    /// The instance as sent, plus its hash.
    Full,
    /// Only the SHA-256 of the instance (inputs may be sensitive).
    Hash,
}

/// `Prediction log` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Prediction log")]
pub struct PredlogArgs {
    /// Prediction log sink.
    #[arg(id = "predlog", long = "predlog", value_name = "PREDLOG", env = "INFERD_PREDLOG", value_enum, default_value_t = PredLogMode::Auto)]
    #[serde(rename = "predlog")]
    pub sink: PredLogMode,

    /// PostgreSQL URL for the prediction log, e.g. `postgres://user:pass@host/db`.
    #[arg(long, env = "INFERD_DATABASE_URL")]
    pub database_url: Option<String>,

    /// The JSON-lines log file (when the sink is the file).
    #[arg(
        long,
        env = "INFERD_PREDLOG_PATH",
        default_value = "./data/predictions.jsonl"
    )]
    pub predlog_path: PathBuf,

    /// Size at which the JSON-lines file is rotated.
    #[arg(long, env = "INFERD_PREDLOG_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub predlog_max_bytes: u64,

    /// Rotated JSON-lines files kept.
    #[arg(long, env = "INFERD_PREDLOG_KEEP", default_value_t = 5)]
    pub predlog_keep: usize,

    /// Where records go while PostgreSQL is unreachable and the buffer is full.
    #[arg(
        long,
        env = "INFERD_PREDLOG_SPILL_PATH",
        default_value = "./data/predlog-spill.jsonl"
    )]
    pub predlog_spill_path: PathBuf,

    /// Log the instance itself (`full`) or only its SHA-256 (`hash`).
    #[arg(long, env = "INFERD_PREDLOG_INPUTS", value_enum, default_value_t = LogInputs::Full)]
    pub predlog_inputs: LogInputs,

    /// Records per database write.
    #[arg(long, env = "INFERD_PREDLOG_BATCH_ROWS", default_value_t = 500)]
    pub predlog_batch_rows: usize,

    /// Longest a record waits before its batch is written.
    #[arg(long, env = "INFERD_PREDLOG_FLUSH_MS", default_value_t = 200)]
    pub predlog_flush_ms: u64,

    /// Records the writer holds in memory while the sink fails; the overflow spills.
    #[arg(long, env = "INFERD_PREDLOG_BUFFER_ROWS", default_value_t = 100_000)]
    pub predlog_buffer_rows: usize,

    /// Capacity of the channel between requests and the writer; a record is
    /// dropped (counted and logged) only when it overflows.
    #[arg(long, env = "INFERD_PREDLOG_CHANNEL", default_value_t = 65_536)]
    pub predlog_channel: usize,
}

impl PredlogArgs {
    pub(super) fn validate(&self) -> Result<(), String> {
        check("predlog-max-bytes", self.predlog_max_bytes, 1, 1 << 50)?;
        check("predlog-keep", self.predlog_keep as u64, 0, 10_000)?;
        check(
            "predlog-batch-rows",
            self.predlog_batch_rows as u64,
            1,
            1_000_000,
        )?;
        check("predlog-flush-ms", self.predlog_flush_ms, 0, HOUR_MS)?;
        check(
            "predlog-buffer-rows",
            self.predlog_buffer_rows as u64,
            0,
            100_000_000,
        )?;
        check(
            "predlog-channel",
            self.predlog_channel as u64,
            1,
            100_000_000,
        )?;
        if self.sink == PredLogMode::Postgres && self.database_url.is_none() {
            return Err("--predlog postgres needs --database-url (INFERD_DATABASE_URL)".into());
        }
        Ok(())
    }

    /// The log writer's configuration; `shutdown_budget` bounds its last
    /// drain.
    pub fn writer(&self, shutdown_budget: Duration) -> WriterConfig {
        let jsonl = || SinkConfig::Jsonl {
            path: self.predlog_path.clone(),
            max_bytes: self.predlog_max_bytes,
            keep: self.predlog_keep,
        };
        let sink = match (self.sink, &self.database_url) {
            (PredLogMode::Off, _) => SinkConfig::Off,
            (PredLogMode::Jsonl, _) | (PredLogMode::Auto, None) => jsonl(),
            (PredLogMode::Postgres | PredLogMode::Auto, Some(url)) => SinkConfig::Postgres {
                url: url.clone(),
                spill_path: self.predlog_spill_path.clone(),
            },
            (PredLogMode::Postgres, None) => SinkConfig::Off, // refused by validate()
        };
        WriterConfig {
            sink,
            shutdown_budget,
            channel_capacity: self.predlog_channel,
            batch_rows: self.predlog_batch_rows,
            flush_interval: Duration::from_millis(self.predlog_flush_ms),
            buffer_rows: self.predlog_buffer_rows,
        }
    }
}

//! The prediction log: one record per served prediction (cached or not) and one
//! per failed request.
//!
//! It is written off the request path because the sink (a database, a disk) is
//! slower and less reliable than serving: a prediction must never wait on, or
//! fail because of, its own audit row. So a request only hands its record to a
//! bounded channel (`try_send`, never waits) and a background writer
//! (`writer`) batches records by count or age into the sink: PostgreSQL
//! (`postgres`), a local JSON-lines file with size-capped rotation (`jsonl`),
//! or nowhere.
//!
//! When the sink is slow or down, records wait in a bounded buffer, overflow to
//! a local spill file, failed writes are retried with back-off, and the spill
//! is replayed once the database keeps up again. Inserts are idempotent on the
//! record's UUID, so a retry cannot write a row twice. Records are dropped only
//! when the channel is full or the spill file cannot be written, and every drop
//! is counted and logged.

#![warn(missing_docs)]
// Request paths return typed errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod jsonl;
mod metrics;
mod postgres;
mod record;
mod writer;

pub use metrics::Metrics;
pub use record::{JsonText, Record, FEEDBACK};
pub use writer::{SinkConfig, WriterConfig};

use std::sync::{Arc, LazyLock};

use inferd_telemetry::ratelimit::{every, Every};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The request-path handle.
pub struct PredLog {
    tx: Option<mpsc::Sender<Record>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl PredLog {
    /// Starts the writer for `cfg.sink` (none when it is off).
    pub fn start(cfg: WriterConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        if matches!(cfg.sink, SinkConfig::Off) {
            return Ok(PredLog {
                tx: None,
                metrics,
                stop,
                writer: tokio::sync::Mutex::new(None),
            });
        }
        let (tx, handle) = writer::spawn(&cfg, metrics.clone(), stop.clone())?;
        Ok(PredLog {
            tx: Some(tx),
            metrics,
            stop,
            writer: tokio::sync::Mutex::new(Some(handle)),
        })
    }

    /// Whether records are kept at all: callers skip building them when not.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Never blocks. A full channel means the writer cannot keep up even with its
    /// own buffer; the record is dropped and counted.
    pub fn log(&self, r: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(r) {
            Ok(()) => self.metrics.predlog_queue.inc(),
            // Only after shutdown (or if the writer died): no handler should
            // be left to log then, so any such record is a bug worth seeing.
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.metrics
                    .predlog_dropped
                    .with_label_values(&["writer_stopped"])
                    .inc();
                static STOPPED: LazyLock<Every> = every!("prediction log writer stopped");
                if let Some(suppressed) = STOPPED.tick() {
                    tracing::error!(
                        suppressed,
                        "prediction log writer has stopped: record dropped"
                    );
                }
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.metrics
                    .predlog_dropped
                    .with_label_values(&["channel_full"])
                    .inc();
                static FULL: LazyLock<Every> = every!("prediction log channel full");
                if let Some(suppressed) = FULL.tick() {
                    tracing::warn!(
                        suppressed,
                        "prediction log channel full: record dropped \
                         (inferd_predlog_dropped_total{{reason=\"channel_full\"}} counts them all)"
                    );
                }
            }
        }
    }

    /// Flushes everything (or spills it) and stops the writer.
    pub async fn shutdown(&self, within: Duration) {
        self.stop.cancel();
        if let Some(h) = self.writer.lock().await.take() {
            if tokio::time::timeout(within, h).await.is_err() {
                tracing::error!("prediction log writer did not finish within {within:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::record::{read_spill, test_record};
    use super::*;
    use uuid::Uuid;

    /// With the database unreachable and no shutdown budget, every logged
    /// record must end up in the spill file (past the buffer bound while
    /// running, the rest at shutdown), none dropped and none duplicated.
    #[tokio::test]
    async fn database_down_spills_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let spill_path = dir.path().join("spill.jsonl");
        let metrics = Arc::new(Metrics::default());
        let cfg = WriterConfig {
            sink: SinkConfig::Postgres {
                url: "postgres://inferd@127.0.0.1:1/none".into(),
                spill_path: spill_path.clone(),
            },
            shutdown_budget: Duration::ZERO,
            channel_capacity: 64,
            batch_rows: 2,
            flush_interval: Duration::from_millis(10),
            buffer_rows: 4,
        };
        let log = PredLog::start(cfg, metrics.clone()).unwrap();
        assert!(log.enabled());
        let sent: Vec<Record> = (0..10).map(test_record).collect();
        for r in &sent {
            log.log(r.clone());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        log.shutdown(Duration::from_secs(10)).await;

        let mut back: Vec<Uuid> = read_spill(&spill_path)
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().id)
            .collect();
        let mut want: Vec<Uuid> = sent.iter().map(|r| r.id).collect();
        back.sort();
        want.sort();
        assert_eq!(back, want);
        assert_eq!(metrics.predlog_spilled.get(), 10);
        assert!(metrics.predlog_retries.get() >= 1);
    }
}

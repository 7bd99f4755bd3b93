//! The background writer: drains the request channel into a bounded buffer and
//! flushes it to the sink in batches, one flush at a time in a task of its own.
//!
//! It never waits for a write while receiving, so a slow or failing sink cannot
//! back up the channel (and so the request path). Past the buffer bound the
//! oldest records spill to an append-only local file instead of growing memory
//! without limit; failed writes go back to the front of the buffer and are
//! retried with back-off. When the database keeps up again the next flush
//! replays the spill file, then the buffer, and removes the file. At shutdown it
//! writes for a bounded time and spills the rest, so a stop neither hangs nor
//! loses records that a later start could still write.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use inferd_telemetry::ratelimit::{every, Every};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::jsonl::{self, JsonlSink};
use super::postgres::PgSink;
use super::record::{append_jsonl, replaying, Record};
use crate::metrics::Metrics;

/// Where records go.
pub enum SinkConfig {
    /// Nowhere.
    Off,
    /// A local JSON-lines file, rotated by size.
    Jsonl {
        /// The file.
        path: PathBuf,
        /// Size at which it is rotated.
        max_bytes: u64,
        /// Rotated files kept.
        keep: usize,
    },
    /// PostgreSQL, with a local spill file while it is away.
    Postgres {
        /// The database.
        url: String,
        /// Where records wait while it is unreachable.
        spill_path: PathBuf,
    },
}

/// How the writer batches, buffers and stops.
pub struct WriterConfig {
    /// Where records go.
    pub sink: SinkConfig,
    /// At shutdown, how long to keep writing to the sink before spilling the
    /// rest to disk (a later start replays it).
    pub shutdown_budget: Duration,
    /// Records the channel from requests holds.
    pub channel_capacity: usize,
    /// Records per write.
    pub batch_rows: usize,
    /// Longest a record waits before its batch is written.
    pub flush_interval: Duration,
    /// Records held in memory while the sink fails; the overflow spills.
    pub buffer_rows: usize,
}

/// Opens the sink and starts the writer on it. `cfg.sink` must not be `Off`.
pub(super) fn spawn(
    cfg: &WriterConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<(mpsc::Sender<Record>, JoinHandle<()>)> {
    let sink = Sink::open(&cfg.sink)?;
    let (tx, rx) = mpsc::channel(cfg.channel_capacity.max(1));
    let writer = Writer {
        sink,
        buf: VecDeque::new(),
        batch_rows: cfg.batch_rows.max(1),
        flush_interval: cfg.flush_interval,
        buffer_rows: cfg.buffer_rows.max(cfg.batch_rows),
        metrics,
        retry_at: None,
        backoff: Duration::from_millis(100),
        shutdown_budget: cfg.shutdown_budget,
    };
    Ok((tx, tokio::spawn(writer.run(rx, stop))))
}

/// Where flushed records go. Cloned into each flush task.
#[derive(Clone)]
enum Sink {
    Jsonl(Arc<std::sync::Mutex<JsonlSink>>),
    Postgres(Arc<PgSink>),
}

impl Sink {
    fn open(cfg: &SinkConfig) -> anyhow::Result<Sink> {
        Ok(match cfg {
            SinkConfig::Off => anyhow::bail!("no writer for the off sink"),
            SinkConfig::Jsonl {
                path,
                max_bytes,
                keep,
            } => Sink::Jsonl(Arc::new(std::sync::Mutex::new(JsonlSink::open(
                path.clone(),
                *max_bytes,
                *keep,
            )?))),
            SinkConfig::Postgres { url, spill_path } => {
                Sink::Postgres(Arc::new(PgSink::new(url, spill_path.clone())?))
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Sink::Jsonl(_) => "jsonl",
            Sink::Postgres(_) => "postgres",
        }
    }

    fn spill_path(&self) -> Option<&Path> {
        match self {
            Sink::Postgres(pg) => Some(pg.spill_path()),
            Sink::Jsonl(_) => None,
        }
    }

    /// Writes one batch; on error the caller still holds it for a retry.
    /// `replay`: write spilled records first (not at shutdown, where time is short).
    async fn write(
        self,
        batch: Arc<Vec<Record>>,
        batch_rows: usize,
        metrics: Arc<Metrics>,
        replay: bool,
    ) -> anyhow::Result<()> {
        match self {
            Sink::Jsonl(s) => jsonl::write_shared(s, batch, metrics).await,
            Sink::Postgres(pg) => pg.flush(&batch, batch_rows, &metrics, replay).await,
        }
    }
}

struct Writer {
    sink: Sink,
    buf: VecDeque<Record>,
    batch_rows: usize,
    flush_interval: Duration,
    buffer_rows: usize,
    metrics: Arc<Metrics>,
    /// While the sink is failing: when to try again.
    retry_at: Option<Instant>,
    backoff: Duration,
    shutdown_budget: Duration,
}

/// Records received per turn beyond the buffer bound, spilled in one append.
const SPILL_CHUNK: usize = 16_384;

/// A flush under way. The writer keeps a handle on its batch: if the flush
/// fails, or is still stuck at shutdown (a database that accepts connections
/// but never answers), the records are still here to retry or spill.
struct Flush {
    task: JoinHandle<anyhow::Result<()>>,
    batch: Arc<Vec<Record>>,
}

impl Writer {
    /// Receives continuously; at most one flush runs at a time in a task of its
    /// own, so a slow or failing sink never stops the channel from draining.
    /// Past `buffer_rows`, the oldest records spill to disk instead.
    async fn run(mut self, mut rx: mpsc::Receiver<Record>, stop: CancellationToken) {
        // Create the schema now if the database is up; otherwise the first
        // flush retries it.
        if let Sink::Postgres(pg) = &self.sink {
            if let Err(e) = pg.migrate().await {
                tracing::warn!("prediction log database not reachable yet: {e:#}");
            }
        }
        let mut inflight: Option<Flush> = None;
        let mut next_flush = Instant::now() + self.flush_interval;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                done = async { match inflight.as_mut() { Some(f) => (&mut f.task).await, None => std::future::pending().await } } => {
                    if let Some(f) = inflight.take() {
                        self.finished(done, f.batch);
                    }
                }
                r = rx.recv() => match r {
                    Some(r) => {
                        self.metrics.predlog_queue.dec();
                        self.buf.push_back(r);
                        // Take a large bite: past the bound, each turn ends in one
                        // spill append, and small bites cannot keep up with a
                        // burst (the channel would overflow and drop).
                        while self.buf.len() < self.buffer_rows.saturating_add(SPILL_CHUNK.max(self.batch_rows)) {
                            match rx.try_recv() {
                                Ok(r) => { self.metrics.predlog_queue.dec(); self.buf.push_back(r); }
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(next_flush) => {}
            }
            self.enforce_bound().await;
            let now = Instant::now();
            let due = now >= next_flush;
            let backing_off = self.retry_at.is_some_and(|t| now < t);
            let has_spill = self
                .sink
                .spill_path()
                .is_some_and(|p| p.exists() || replaying(p).exists());
            if inflight.is_none()
                && !backing_off
                && (self.buf.len() >= self.batch_rows
                    || (due && (!self.buf.is_empty() || has_spill)))
            {
                inflight = Some(self.start_flush());
                next_flush = now + self.flush_interval;
            } else if due {
                next_flush = now + self.flush_interval;
            }
            self.metrics.predlog_buffered.set(self.buf.len() as i64);
        }
        // Shutdown: finish the flush under way, take what is still queued, write
        // for as long as the budget allows (without replaying old spills), then
        // spill whatever is left: on disk it survives until the next start.
        let budget_end = Instant::now() + self.shutdown_budget;
        if let Some(mut f) = inflight.take() {
            match tokio::time::timeout_at(budget_end, &mut f.task).await {
                Ok(done) => self.finished(done, f.batch),
                Err(_) => {
                    // Stuck past the budget: its records go to the spill file
                    // with the rest. Had the insert committed after all, the
                    // replay's `ON CONFLICT DO NOTHING` keeps one copy.
                    f.task.abort();
                    tracing::warn!(
                        records = f.batch.len(),
                        "prediction log write still running at the end of the shutdown budget: spilling its records"
                    );
                    self.requeue(f.batch);
                }
            }
        }
        while let Ok(r) = rx.try_recv() {
            self.metrics.predlog_queue.dec();
            self.buf.push_back(r);
        }
        while !self.buf.is_empty() && Instant::now() < budget_end {
            let n = self.buf.len().min(self.batch_rows);
            let batch: Arc<Vec<Record>> = Arc::new(self.buf.drain(..n).collect());
            let left = budget_end.saturating_duration_since(Instant::now());
            let write = self.sink.clone().write(
                batch.clone(),
                self.batch_rows,
                self.metrics.clone(),
                false,
            );
            let done = match tokio::time::timeout(left, write).await {
                Ok(done) => done,
                Err(_) => Err(anyhow::anyhow!("no answer within the shutdown budget")),
            };
            let failed = done.is_err();
            self.finished(Ok(done), batch);
            if failed {
                break;
            }
        }
        if !self.buf.is_empty() {
            let n = self.buf.len();
            self.spill_oldest(n).await;
        }
        self.metrics.predlog_buffered.set(self.buf.len() as i64);
        tracing::info!(sink = self.sink.name(), "prediction log flushed");
    }

    fn start_flush(&mut self) -> Flush {
        let n = self.buf.len().min(self.batch_rows);
        let batch: Arc<Vec<Record>> = Arc::new(self.buf.drain(..n).collect());
        let task = tokio::spawn(self.sink.clone().write(
            batch.clone(),
            self.batch_rows,
            self.metrics.clone(),
            true,
        ));
        Flush { task, batch }
    }

    /// Puts a batch back in front of the buffer, in order.
    fn requeue(&mut self, batch: Arc<Vec<Record>>) {
        // The flush task has ended, so this is the last handle: no copy.
        let back = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
        for r in back.into_iter().rev() {
            self.buf.push_front(r);
        }
    }

    fn finished(
        &mut self,
        done: Result<anyhow::Result<()>, tokio::task::JoinError>,
        batch: Arc<Vec<Record>>,
    ) {
        match done {
            Ok(Ok(())) => {
                self.retry_at = None;
                self.backoff = Duration::from_millis(100);
                inferd_telemetry::trace::logged(
                    batch.iter().map(|r| (r.trace, r.ts.into())),
                    self.sink.name(),
                );
            }
            Ok(Err(e)) => {
                self.requeue(batch);
                self.metrics.predlog_retries.inc();
                tracing::warn!(
                    backoff_ms = self.backoff.as_millis() as u64,
                    "prediction log write failed, will retry: {e:#}"
                );
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                // A panic in the flush task: the batch is still ours.
                tracing::error!("prediction log flush task failed: {e}");
                self.requeue(batch);
            }
        }
    }

    /// Keeps the in-memory buffer within its bound by spilling the oldest records.
    async fn enforce_bound(&mut self) {
        if self.buf.len() > self.buffer_rows {
            let n = self.buf.len() - self.buffer_rows;
            self.spill_oldest(n).await;
        }
    }

    async fn spill_oldest(&mut self, n: usize) {
        let Some(path) = self.sink.spill_path().map(Path::to_path_buf) else {
            // The file sink has no second place to go: the bound only holds if
            // the disk keeps up, which it does unless it fails.
            return;
        };
        let batch: Vec<Record> = self.buf.drain(..n).collect();
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || append_jsonl(&p, &batch))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match r {
            Ok(()) => {
                self.metrics.predlog_spilled.inc_by(n as u64);
                // Once per batch while the database is down: thousands a second.
                static SPILLED: LazyLock<Every> = every!("prediction log spilled to disk");
                if let Some(suppressed) = SPILLED.tick() {
                    tracing::warn!(
                        records = n,
                        suppressed,
                        total = self.metrics.predlog_spilled.get(),
                        path = %path.display(),
                        "prediction log spilled to disk"
                    );
                }
            }
            Err(e) => {
                self.metrics
                    .predlog_dropped
                    .with_label_values(&["spill_failed"])
                    .inc_by(n as u64);
                static FAILED: LazyLock<Every> = every!("prediction log spill failed");
                if let Some(suppressed) = FAILED.tick() {
                    tracing::error!(
                        records = n,
                        suppressed,
                        "prediction log spill failed, records dropped: {e}"
                    );
                }
            }
        }
    }
}

//! The prediction log: one record per served prediction (cached or not) and one
//! per failed request, written off the request path.
//!
//! Requests hand records to a bounded channel (`try_send`: never waits). A
//! background writer batches them by count or age and writes them to the sink:
//! PostgreSQL (deadpool-postgres; schema by versioned migrations), a local
//! JSON-lines file with size-capped rotation, or nowhere.
//!
//! The writer never waits for a write while receiving: one flush at a time runs
//! in a task of its own. When the sink is slower than the offered rows, or down,
//! records accumulate in memory up to a bound and the overflow spills to an
//! append-only local file; failed writes are retried with back-off. When the
//! database keeps up again it replays the spill file, then the buffer, and
//! removes the file. Inserts are keyed by the record's UUID with `ON CONFLICT DO NOTHING`,
//! so a retry after an ambiguous failure (commit done, reply lost) cannot write a
//! row twice. Records are dropped only when the channel is full or the spill file
//! cannot be written, and every drop is counted and logged.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: Uuid,
    pub ts: DateTime<Utc>,
    pub request_id: String,
    pub model: String,
    pub version: String,
    pub status: u16,
    /// The instance as sent, when `INFERD_PREDLOG_INPUTS=full`.
    pub instance: Option<serde_json::Value>,
    /// SHA-256 of the instance's canonical encoding (the cache key's hash).
    pub instance_sha256: Option<String>,
    pub prediction: Option<serde_json::Value>,
    pub cached: bool,
    pub latency_ms: f32,
    pub client: Option<String>,
    pub error: Option<String>,
}

pub enum SinkConfig {
    Off,
    Jsonl {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
    Postgres {
        url: String,
        spill_path: PathBuf,
    },
}

pub struct WriterConfig {
    pub sink: SinkConfig,
    /// At shutdown, how long to keep writing to the sink before spilling the
    /// rest to disk (a later start replays it).
    pub shutdown_budget: Duration,
    pub channel_capacity: usize,
    pub batch_rows: usize,
    pub flush_interval: Duration,
    pub buffer_rows: usize,
}

/// The request-path handle.
pub struct PredLog {
    tx: Option<mpsc::Sender<Record>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl PredLog {
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
        let sink = Sink::open(&cfg.sink)?;
        let (tx, rx) = mpsc::channel(cfg.channel_capacity.max(1));
        let writer = Writer {
            sink,
            buf: VecDeque::new(),
            batch_rows: cfg.batch_rows.max(1),
            flush_interval: cfg.flush_interval,
            buffer_rows: cfg.buffer_rows.max(cfg.batch_rows),
            metrics: metrics.clone(),
            retry_at: None,
            backoff: Duration::from_millis(100),
            shutdown_budget: cfg.shutdown_budget,
        };
        let handle = tokio::spawn(writer.run(rx, stop.clone()));
        Ok(PredLog {
            tx: Some(tx),
            metrics,
            stop,
            writer: tokio::sync::Mutex::new(Some(handle)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Never blocks. A full channel means the writer cannot keep up even with its
    /// own buffer; the record is dropped and counted.
    pub fn log(&self, r: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(r) {
            Ok(()) => self.metrics.predlog_queue.inc(),
            Err(_) => {
                self.metrics
                    .predlog_dropped
                    .with_label_values(&["channel_full"])
                    .inc();
                tracing::warn!("prediction log channel full: record dropped");
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
            Sink::Postgres(pg) => Some(&pg.spill_path),
            Sink::Jsonl(_) => None,
        }
    }

    /// Writes one batch. On error the records come back for a retry.
    /// `replay`: write spilled records first (not at shutdown, where time is short).
    async fn write(
        self,
        batch: Vec<Record>,
        batch_rows: usize,
        metrics: Arc<Metrics>,
        replay: bool,
    ) -> (Vec<Record>, anyhow::Result<()>) {
        match self {
            Sink::Jsonl(s) => {
                let joined = tokio::task::spawn_blocking(move || {
                    let t = std::time::Instant::now();
                    let r = s
                        .lock()
                        .map_err(|_| anyhow::anyhow!("sink lock poisoned"))
                        .and_then(|mut s| Ok(s.write(&batch)?));
                    (batch, r, t.elapsed())
                })
                .await;
                match joined {
                    Ok((batch, Ok(()), took)) => {
                        record_written(&metrics, "jsonl", batch.len(), took);
                        (Vec::new(), Ok(()))
                    }
                    // A local file that cannot be written will not heal by retrying
                    // the same records forever: count them as dropped.
                    Ok((batch, Err(e), _)) => {
                        metrics
                            .predlog_dropped
                            .with_label_values(&["jsonl_write"])
                            .inc_by(batch.len() as u64);
                        tracing::error!(
                            "prediction log file write failed, {} records dropped: {e:#}",
                            batch.len()
                        );
                        (Vec::new(), Ok(()))
                    }
                    Err(e) => (
                        Vec::new(),
                        Err(anyhow::anyhow!("jsonl writer task failed: {e}")),
                    ),
                }
            }
            Sink::Postgres(pg) => {
                let r = pg.flush(&batch, batch_rows, &metrics, replay).await;
                match r {
                    Ok(()) => (Vec::new(), Ok(())),
                    Err(e) => (batch, Err(e)),
                }
            }
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

type Flush = JoinHandle<(Vec<Record>, anyhow::Result<()>)>;

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
                done = async { match inflight.as_mut() { Some(h) => h.await, None => std::future::pending().await } } => {
                    inflight = None;
                    self.finished(done);
                }
                r = rx.recv() => match r {
                    Some(r) => {
                        self.metrics.predlog_queue.dec();
                        self.buf.push_back(r);
                        // Take a large bite: past the bound, each turn ends in one
                        // spill append, and small bites cannot keep up with a
                        // burst (the channel would overflow and drop).
                        while self.buf.len() < self.buffer_rows + SPILL_CHUNK.max(self.batch_rows) {
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
        if let Some(h) = inflight.take() {
            let done = h.await;
            self.finished(done);
        }
        while let Ok(r) = rx.try_recv() {
            self.metrics.predlog_queue.dec();
            self.buf.push_back(r);
        }
        while !self.buf.is_empty() && Instant::now() < budget_end {
            let n = self.buf.len().min(self.batch_rows);
            let batch: Vec<Record> = self.buf.drain(..n).collect();
            let done = self
                .sink
                .clone()
                .write(batch, self.batch_rows, self.metrics.clone(), false)
                .await;
            let failed = done.1.is_err();
            self.finished(Ok(done));
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
        let batch: Vec<Record> = self.buf.drain(..n).collect();
        tokio::spawn(
            self.sink
                .clone()
                .write(batch, self.batch_rows, self.metrics.clone(), true),
        )
    }

    fn finished(
        &mut self,
        done: Result<(Vec<Record>, anyhow::Result<()>), tokio::task::JoinError>,
    ) {
        match done {
            Ok((_, Ok(()))) => {
                self.retry_at = None;
                self.backoff = Duration::from_millis(100);
            }
            Ok((back, Err(e))) => {
                // Put the batch back in front, in order, for the retry.
                for r in back.into_iter().rev() {
                    self.buf.push_front(r);
                }
                self.metrics.predlog_retries.inc();
                tracing::warn!(
                    backoff_ms = self.backoff.as_millis() as u64,
                    "prediction log write failed, will retry: {e:#}"
                );
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => tracing::error!("prediction log flush task failed: {e}"),
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
                tracing::warn!(records = n, path = %path.display(), "prediction log spilled to disk");
            }
            Err(e) => {
                self.metrics
                    .predlog_dropped
                    .with_label_values(&["spill_failed"])
                    .inc_by(n as u64);
                tracing::error!(
                    records = n,
                    "prediction log spill failed, records dropped: {e}"
                );
            }
        }
    }
}

/// The spill file while it is being replayed: appends go to a fresh spill file
/// meanwhile, so nothing appended during a replay is removed with it.
fn replaying(spill: &Path) -> PathBuf {
    PathBuf::from(format!("{}.replaying", spill.display()))
}

fn record_written(metrics: &Metrics, sink: &str, rows: usize, took: Duration) {
    metrics
        .predlog_written
        .with_label_values(&[sink])
        .inc_by(rows as u64);
    metrics
        .predlog_write_duration
        .with_label_values(&[sink])
        .observe(took.as_secs_f64());
}

fn append_jsonl(path: &Path, records: &[Record]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut out = Vec::with_capacity(records.len() * 512);
    for r in records {
        serde_json::to_writer(&mut out, r)?;
        out.push(b'\n');
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(&out)?;
    f.flush()
}

struct JsonlSink {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
}

impl JsonlSink {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        Ok(JsonlSink {
            path,
            max_bytes,
            keep: keep.max(1),
        })
    }

    fn write(&mut self, records: &[Record]) -> std::io::Result<()> {
        let size = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size >= self.max_bytes {
            self.rotate()?;
        }
        append_jsonl(&self.path, records)
    }

    /// `predictions.jsonl` -> `.1` -> `.2` ... up to `keep` old files.
    fn rotate(&self) -> std::io::Result<()> {
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = fs::rename(name(i), name(i + 1));
        }
        fs::rename(&self.path, name(1))
    }
}

struct PgSink {
    pool: deadpool_postgres::Pool,
    spill_path: PathBuf,
    migrated: std::sync::atomic::AtomicBool,
}

/// Versioned schema migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "predictions table",
    "CREATE TABLE IF NOT EXISTS predictions (
        id uuid PRIMARY KEY,
        ts timestamptz NOT NULL,
        request_id text NOT NULL,
        model text NOT NULL,
        version text NOT NULL,
        status smallint NOT NULL,
        instance jsonb,
        instance_sha256 text,
        prediction jsonb,
        cached boolean NOT NULL,
        latency_ms real NOT NULL,
        client text,
        error text
    );
    CREATE INDEX IF NOT EXISTS predictions_ts_brin ON predictions USING brin (ts);
    CREATE INDEX IF NOT EXISTS predictions_model_ts ON predictions (model, ts);",
)];

/// Taken by the migrating transaction so several workers starting at once do
/// not race each other.
const MIGRATION_LOCK: i64 = 0x696e_6665_7264;

const INSERT: &str = "INSERT INTO predictions
    (id, ts, request_id, model, version, status, instance, instance_sha256, prediction, cached, latency_ms, client, error)
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::smallint[],
        $7::jsonb[], $8::text[], $9::jsonb[], $10::bool[], $11::real[], $12::text[], $13::text[])
    ON CONFLICT (id) DO NOTHING";

impl PgSink {
    fn new(url: &str, spill_path: PathBuf) -> anyhow::Result<Self> {
        let mut cfg = deadpool_postgres::Config::new();
        cfg.url = Some(url.to_string());
        let mut pool = deadpool_postgres::PoolConfig::new(4);
        pool.timeouts.wait = Some(Duration::from_secs(2));
        pool.timeouts.create = Some(Duration::from_secs(2));
        pool.timeouts.recycle = Some(Duration::from_secs(2));
        cfg.pool = Some(pool);
        let pool = cfg.create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )?;
        Ok(PgSink {
            pool,
            spill_path,
            migrated: false.into(),
        })
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS inferd_schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        for (version, name, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM inferd_schema_migrations WHERE version = $1",
                    &[version],
                )
                .await?
                .is_some();
            if !done {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO inferd_schema_migrations (version, name) VALUES ($1, $2)",
                    &[version, name],
                )
                .await?;
                tracing::info!(version, name, "applied prediction log migration");
            }
        }
        tx.commit().await?;
        self.migrated
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    async fn insert(&self, rows: &[Record], metrics: &Metrics) -> anyhow::Result<()> {
        let t = std::time::Instant::now();
        let client = self.pool.get().await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let ts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.ts).collect();
        let rid: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        let model: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
        let version: Vec<&str> = rows.iter().map(|r| r.version.as_str()).collect();
        let status: Vec<i16> = rows.iter().map(|r| r.status as i16).collect();
        let instance: Vec<Option<&serde_json::Value>> =
            rows.iter().map(|r| r.instance.as_ref()).collect();
        let sha: Vec<Option<&str>> = rows.iter().map(|r| r.instance_sha256.as_deref()).collect();
        let pred: Vec<Option<&serde_json::Value>> =
            rows.iter().map(|r| r.prediction.as_ref()).collect();
        let cached: Vec<bool> = rows.iter().map(|r| r.cached).collect();
        let latency: Vec<f32> = rows.iter().map(|r| r.latency_ms).collect();
        let client_addr: Vec<Option<&str>> = rows.iter().map(|r| r.client.as_deref()).collect();
        let error: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
        client
            .execute(
                INSERT,
                &[
                    &ids,
                    &ts,
                    &rid,
                    &model,
                    &version,
                    &status,
                    &instance,
                    &sha,
                    &pred,
                    &cached,
                    &latency,
                    &client_addr,
                    &error,
                ],
            )
            .await?;
        record_written(metrics, "postgres", rows.len(), t.elapsed());
        Ok(())
    }

    /// Replays any spilled records (when `replay`), then writes `batch`.
    async fn flush(
        &self,
        batch: &[Record],
        batch_rows: usize,
        metrics: &Metrics,
        replay: bool,
    ) -> anyhow::Result<()> {
        if !self.migrated.load(std::sync::atomic::Ordering::Acquire) {
            self.migrate().await?;
        }
        let replay_file = replaying(&self.spill_path);
        if replay && !replay_file.exists() && self.spill_path.exists() {
            fs::rename(&self.spill_path, &replay_file)?;
        }
        if replay && replay_file.exists() {
            let replay_path = replay_file.clone();
            let records = tokio::task::spawn_blocking(move || read_spill(&replay_path)).await??;
            let mut corrupt = 0u64;
            let mut good = Vec::with_capacity(records.len());
            for r in records {
                match r {
                    Some(r) => good.push(r),
                    None => corrupt += 1,
                }
            }
            if corrupt > 0 {
                // A torn last line from a crash mid-append: nothing to recover.
                metrics
                    .predlog_dropped
                    .with_label_values(&["spill_corrupt"])
                    .inc_by(corrupt);
                tracing::error!(lines = corrupt, "skipped unreadable spill lines");
            }
            for chunk in good.chunks(batch_rows.max(1)) {
                self.insert(chunk, metrics).await?;
            }
            fs::remove_file(&replay_file)?;
            metrics.predlog_replayed.inc_by(good.len() as u64);
            tracing::info!(
                records = good.len(),
                "replayed spilled prediction log records"
            );
        }
        for chunk in batch.chunks(batch_rows.max(1)) {
            self.insert(chunk, metrics).await?;
        }
        Ok(())
    }
}

fn read_spill(path: &Path) -> std::io::Result<Vec<Option<Record>>> {
    let f = File::open(path)?;
    BufReader::new(f)
        .lines()
        .map(|l| l.map(|l| serde_json::from_str::<Record>(&l).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u32) -> Record {
        Record {
            id: Uuid::new_v4(),
            ts: Utc::now(),
            request_id: format!("r{i}"),
            model: "m".into(),
            version: "1".into(),
            status: 200,
            instance: Some(serde_json::json!("text")),
            instance_sha256: Some("ab".into()),
            prediction: Some(serde_json::json!({"label": "ham"})),
            cached: false,
            latency_ms: 0.5,
            client: Some("127.0.0.1:1".into()),
            error: None,
        }
    }

    #[test]
    fn jsonl_rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let mut s = JsonlSink::open(path.clone(), 200, 2).unwrap();
        for i in 0..10 {
            s.write(&[record(i)]).unwrap();
        }
        assert!(path.exists());
        assert!(dir.path().join("p.jsonl.1").exists());
        assert!(dir.path().join("p.jsonl.2").exists());
        assert!(!dir.path().join("p.jsonl.3").exists());
        let line = fs::read_to_string(&path).unwrap();
        let back: Record = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(back.model, "m");
    }
}

//! The PostgreSQL sink: batched inserts through a small deadpool-postgres pool,
//! the schema by versioned migrations, and replay of the writer's spill file.
//!
//! The server creates the schema itself (under an advisory lock, so several
//! workers starting at once do not race) so that the log works against an empty
//! database with no separate deploy step. Inserts are keyed by the record's UUID
//! with `ON CONFLICT DO NOTHING`, so a retry after an ambiguous failure (commit
//! done, reply lost) cannot write a row twice.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::record::{read_spill, replaying};
use super::record::{record_written, Record};
use crate::metrics::Metrics;
use crate::record::{JsonText, FEEDBACK};

/// A document for a `jsonb` column, sent as the text it already is.
fn jsonb(j: &Option<JsonText>) -> Option<Json<&RawValue>> {
    j.as_ref().map(|j| Json(j.raw()))
}

/// One schema change. `version` is recorded once applied and never reused;
/// `name` is what `inferd_schema_migrations` shows.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Versioned schema migrations, applied in order, each once. A new one is a new
/// file in `migrations/` plus a line here; an applied one is never edited.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "predictions table",
        sql: include_str!("migrations/0001_predictions_table.sql"),
    },
    Migration {
        version: 2,
        name: "input sha256",
        sql: include_str!("migrations/0002_input_sha256.sql"),
    },
    Migration {
        version: 3,
        name: "trace id",
        sql: include_str!("migrations/0003_trace_id.sql"),
    },
    Migration {
        version: 4,
        name: "feedback",
        sql: include_str!("migrations/0004_feedback.sql"),
    },
];

/// Taken by the migrating transaction so several workers starting at once do
/// not race each other.
const MIGRATION_LOCK: i64 = 0x696e_6665_7264;

/// One statement per batch: the columns go as arrays, so a batch costs one
/// round trip whatever its size.
const INSERT: &str = "INSERT INTO predictions
    (id, ts, request_id, model, version, status, instance, instance_sha256, prediction, cached, latency_ms, client, error, input_sha256, trace_id, instance_index, role)
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::smallint[],
        $7::jsonb[], $8::text[], $9::jsonb[], $10::bool[], $11::real[], $12::text[], $13::text[], $14::text[], $15::text[],
        $16::int4[], $17::text[])
    ON CONFLICT (id) DO NOTHING";

/// Labels land in their own table, one row per served instance: a resent
/// label is a no-op and a changed one replaces the old (the latest wins, by
/// the time it was received), so a replayed spill file cannot undo a newer
/// label with an older one.
const UPSERT_FEEDBACK: &str = "INSERT INTO feedback (request_id, instance_index, model, label, ts)
    SELECT DISTINCT ON (r, i) r, i, m, l, t
    FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::jsonb[], $5::timestamptz[]) AS u(r, i, m, l, t)
    ORDER BY r, i, t DESC
    ON CONFLICT (request_id, instance_index) DO UPDATE
        SET label = EXCLUDED.label, ts = EXCLUDED.ts, model = EXCLUDED.model
        WHERE feedback.ts <= EXCLUDED.ts";

pub(super) struct PgSink {
    pool: deadpool_postgres::Pool,
    spill_path: PathBuf,
    migrated: AtomicBool,
}

impl PgSink {
    pub(super) fn new(url: &str, spill_path: PathBuf) -> anyhow::Result<Self> {
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

    /// Where the writer spills what the database cannot take yet.
    pub(super) fn spill_path(&self) -> &Path {
        &self.spill_path
    }

    /// Creates or upgrades the schema; until it succeeds every flush tries again.
    pub(super) async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS inferd_schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        for m in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM inferd_schema_migrations WHERE version = $1",
                    &[&m.version],
                )
                .await?
                .is_some();
            if !done {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO inferd_schema_migrations (version, name) VALUES ($1, $2)",
                    &[&m.version, &m.name],
                )
                .await?;
                tracing::info!(
                    version = m.version,
                    name = m.name,
                    "applied prediction log migration"
                );
            }
        }
        tx.commit().await?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    async fn insert(&self, all: &[Record], metrics: &Metrics) -> anyhow::Result<()> {
        let t = std::time::Instant::now();
        let client = self.pool.get().await?;
        let (labels, rows): (Vec<&Record>, Vec<&Record>) = all
            .iter()
            .partition(|r| r.role.as_deref() == Some(FEEDBACK));
        if !labels.is_empty() {
            let rid: Vec<&str> = labels.iter().map(|r| r.request_id.as_str()).collect();
            let idx: Vec<i32> = labels
                .iter()
                .map(|r| r.instance_index.map_or(0, |i| i as i32))
                .collect();
            let model: Vec<&str> = labels.iter().map(|r| r.model.as_str()).collect();
            let label: Vec<Option<Json<&RawValue>>> =
                labels.iter().map(|r| jsonb(&r.prediction)).collect();
            let ts: Vec<DateTime<Utc>> = labels.iter().map(|r| r.ts).collect();
            client
                .execute(UPSERT_FEEDBACK, &[&rid, &idx, &model, &label, &ts])
                .await?;
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let ts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.ts).collect();
        let rid: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        let model: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
        let version: Vec<&str> = rows.iter().map(|r| r.version.as_str()).collect();
        let status: Vec<i16> = rows.iter().map(|r| r.status as i16).collect();
        let instance: Vec<Option<Json<&RawValue>>> =
            rows.iter().map(|r| jsonb(&r.instance)).collect();
        let sha: Vec<Option<&str>> = rows.iter().map(|r| r.instance_sha256.as_deref()).collect();
        let pred: Vec<Option<Json<&RawValue>>> =
            rows.iter().map(|r| jsonb(&r.prediction)).collect();
        let cached: Vec<bool> = rows.iter().map(|r| r.cached).collect();
        let latency: Vec<f32> = rows.iter().map(|r| r.latency_ms).collect();
        let client_addr: Vec<Option<&str>> = rows.iter().map(|r| r.client.as_deref()).collect();
        let error: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
        let input_sha: Vec<Option<&str>> = rows.iter().map(|r| r.input_sha256.as_deref()).collect();
        let trace_id: Vec<Option<&str>> = rows.iter().map(|r| r.trace_id.as_deref()).collect();
        let index: Vec<Option<i32>> = rows
            .iter()
            .map(|r| r.instance_index.map(|i| i as i32))
            .collect();
        let role: Vec<Option<&str>> = rows.iter().map(|r| r.role.as_deref()).collect();
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
                    &input_sha,
                    &trace_id,
                    &index,
                    &role,
                ],
            )
            .await?;
        record_written(metrics, "postgres", all.len(), t.elapsed());
        Ok(())
    }

    /// Replays any spilled records (when `replay`), then writes `batch`.
    pub(super) async fn flush(
        &self,
        batch: &[Record],
        batch_rows: usize,
        metrics: &Metrics,
        replay: bool,
    ) -> anyhow::Result<()> {
        if !self.migrated.load(Ordering::Acquire) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The runner applies migrations in list order and records each version
    /// once, so an out-of-order or repeated version would skip or re-run SQL.
    #[test]
    fn migrations_are_ordered_by_unique_version_and_non_empty() {
        assert!(!MIGRATIONS.is_empty());
        assert_eq!(MIGRATIONS[0].version, 1);
        for pair in MIGRATIONS.windows(2) {
            assert!(
                pair[0].version < pair[1].version,
                "migration {} listed before {}",
                pair[0].version,
                pair[1].version
            );
        }
        for m in MIGRATIONS {
            assert!(!m.name.trim().is_empty(), "migration {} unnamed", m.version);
            assert!(!m.sql.trim().is_empty(), "migration {} empty", m.version);
        }
    }

    /// A `.sql` file that is not in the list would silently never run.
    #[test]
    fn every_migration_file_is_listed_under_its_version_and_name() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/migrations");
        let mut files = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            let stem = file.strip_suffix(".sql").expect("only .sql files");
            let (version, name) = stem.split_once('_').expect("NNNN_name.sql");
            let version: i32 = version.parse().unwrap();
            let m = MIGRATIONS
                .iter()
                .find(|m| m.version == version)
                .unwrap_or_else(|| panic!("{file} is not in MIGRATIONS"));
            assert_eq!(m.name.replace(' ', "_"), name, "{file}");
            assert_eq!(m.sql, fs::read_to_string(&path).unwrap(), "{file}");
            files += 1;
        }
        assert_eq!(files, MIGRATIONS.len());
    }
}

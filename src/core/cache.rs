//! The prediction cache: one entry per (model, version, instance), so a request
//! whose instances are partly cached runs the model on the rest only.
//!
//! Keys hash a canonical encoding of the *decoded* instance (the UTF-8 text, or
//! the float32 window's bits), so JSON key order, whitespace and number spelling
//! (`362.5` vs `3.625e2`) cannot split one instance into two entries.
//!
//! Two backends: in-process (`moka`, bounded by bytes; the default) and Redis
//! (with a small in-process L1 in front).
//! The cache must never fail or slow a prediction: every Redis call has a short
//! timeout, errors fail open (the model runs), and a circuit breaker stops calling
//! a Redis that keeps failing until a back-off period has passed, so a dead Redis
//! costs one atomic load per request.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use super::backend::InputBatch;
use crate::metrics::Metrics;

pub type Key = [u8; 32];

/// Hashes one instance of `batch` with the model's identity.
pub fn instance_key(model: &str, version: &str, batch: &InputBatch, i: usize) -> Key {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(version.as_bytes());
    h.update([0]);
    match batch {
        InputBatch::Text(texts) => {
            h.update(b"text\0");
            h.update(texts[i].as_bytes());
        }
        InputBatch::Windows {
            steps, features, ..
        } => {
            h.update(b"f32\0");
            h.update((*steps as u64).to_le_bytes());
            h.update((*features as u64).to_le_bytes());
            for v in batch.window(i).unwrap_or_default() {
                // -0.0 and 0.0 are the same input to the model.
                let v = if *v == 0.0 { 0.0f32 } else { *v };
                h.update(v.to_bits().to_le_bytes());
            }
        }
    }
    h.finalize().into()
}

pub struct RedisSettings {
    pub url: String,
    pub timeout: Duration,
    pub breaker_backoff: Duration,
}

/// A local (in-process) store, and optionally Redis behind it. With Redis, the
/// local store is a small, short-lived L1: hot keys skip the round trip, and a
/// result is visible locally before the request that computed it finishes, which
/// closes the window in which a concurrent request could miss and recompute.
pub struct Cache {
    local: moka::future::Cache<Key, Bytes>,
    remote: Option<RedisCache>,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

/// Bounds of the L1 in front of Redis.
const L1_MAX_BYTES: u64 = 64 * 1024 * 1024;
const L1_MAX_TTL: Duration = Duration::from_secs(10);

/// What an entry costs the process beyond its value's bytes: moka's entry,
/// its access-order and timer nodes, the 32-byte key, the `Bytes` handle and
/// the allocator's rounding. Measured (tests/lifecycle/test_memory.py): text
/// predictions of ~125 bytes cost ~570 bytes of resident memory each; weighed
/// at value + 64 bytes, a 2 MiB bound held 9.1-9.7 MiB. Counting the
/// overhead makes `INFERD_CACHE_MAX_BYTES` a bound on resident bytes.
const ENTRY_OVERHEAD: usize = 512;

fn local_store(max_bytes: u64, ttl: Duration) -> moka::future::Cache<Key, Bytes> {
    moka::future::Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|_k: &Key, v: &Bytes| {
            v.len()
                .saturating_add(ENTRY_OVERHEAD)
                .try_into()
                .unwrap_or(u32::MAX)
        })
        .time_to_live(ttl)
        .build()
}

impl Cache {
    pub fn memory(max_bytes: u64, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Cache {
            local: local_store(max_bytes, ttl),
            remote: None,
            ttl,
            metrics,
        }
    }

    pub fn redis(
        settings: RedisSettings,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(Cache {
            local: local_store(L1_MAX_BYTES, ttl.min(L1_MAX_TTL)),
            remote: Some(RedisCache::new(settings)?),
            ttl,
            metrics,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        if self.remote.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    pub fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Looks up every key, locally first, then in Redis; `None` for a miss or
    /// when Redis is unavailable.
    pub async fn get_many(&self, model: &str, version: &str, keys: &[Key]) -> Vec<Option<Bytes>> {
        let start = Instant::now();
        let mut out = self.peek_many(keys).await;
        if let Some(r) = &self.remote {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
            if !missing.is_empty() {
                let ks: Vec<Key> = missing.iter().map(|&i| keys[i]).collect();
                match r.mget(model, version, &ks).await {
                    Ok(vals) => {
                        for (i, v) in missing.into_iter().zip(vals) {
                            if let Some(v) = v {
                                self.local.insert(keys[i], v.clone()).await;
                                out[i] = Some(v);
                            }
                        }
                    }
                    Err(e) => self.record_error("get", &e),
                }
            }
        }
        self.metrics
            .cache_latency
            .with_label_values(&["get", self.backend_name()])
            .observe(start.elapsed().as_secs_f64());
        let hits = out.iter().filter(|v| v.is_some()).count() as u64;
        self.metrics
            .cache_requests
            .with_label_values(&["hit"])
            .inc_by(hits);
        self.metrics
            .cache_requests
            .with_label_values(&["miss"])
            .inc_by(keys.len() as u64 - hits);
        out
    }

    /// Local lookups only, not counted as hits or misses.
    pub async fn peek_many(&self, keys: &[Key]) -> Vec<Option<Bytes>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.local.get(k).await);
        }
        out
    }

    /// Stores values in the local store (cheap; callers await it inline).
    pub async fn set_local(&self, items: &[(Key, Bytes)]) {
        for (k, v) in items {
            self.local.insert(*k, v.clone()).await;
        }
    }

    /// Stores values in Redis, if configured; errors are counted and ignored.
    pub async fn set_remote(&self, model: &str, version: &str, items: Vec<(Key, Bytes)>) {
        let Some(r) = &self.remote else { return };
        let start = Instant::now();
        if let Err(e) = r.set_many(model, version, items, self.ttl).await {
            self.record_error("set", &e);
        }
        self.metrics
            .cache_latency
            .with_label_values(&["set", "redis"])
            .observe(start.elapsed().as_secs_f64());
    }

    fn record_error(&self, op: &str, e: &CacheError) {
        let kind = match e {
            CacheError::Open => "breaker_open",
            CacheError::Timeout => "timeout",
            CacheError::Redis(_) => "redis",
        };
        self.metrics
            .cache_errors
            .with_label_values(&[op, kind])
            .inc();
        if let Some(r) = &self.remote {
            self.metrics
                .cache_breaker_open
                .set(i64::from(r.breaker.is_open()));
        }
        if !matches!(e, CacheError::Open) {
            tracing::debug!(op, error = %e, "cache call failed; serving from the model");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("circuit breaker open")]
    Open,
    #[error("timed out")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Opens after `THRESHOLD` consecutive failures and stays open for a back-off
/// period that doubles each time it re-opens without a success in between
/// (capped at 16x). While open, calls are skipped; calls after the period are
/// trials, and one success closes it.
///
/// The back-off grows per opening, not per failure: under load one Redis stall
/// fails every call in flight at once, and counting each of those as a failed
/// trial would jump straight to the longest back-off and keep the shared cache
/// off for many seconds after a hiccup of a few milliseconds.
pub struct Breaker {
    failures: AtomicU32,
    /// Openings since the last success: the exponent of the back-off.
    openings: AtomicU32,
    open_until_ms: AtomicU64,
    base: Duration,
    epoch: Instant,
}

const THRESHOLD: u32 = 3;

impl Breaker {
    pub fn new(base: Duration) -> Self {
        Breaker {
            failures: AtomicU32::new(0),
            openings: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            base,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_open(&self) -> bool {
        self.now_ms() < self.open_until_ms.load(Ordering::Acquire)
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.openings.store(0, Ordering::Release);
    }

    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        // Calls that were already in flight when it opened do not extend it.
        if n < THRESHOLD || self.is_open() {
            return;
        }
        let k = self.openings.fetch_add(1, Ordering::AcqRel).min(4);
        let until = self.now_ms() + (self.base * (1u32 << k)).as_millis() as u64;
        self.open_until_ms.store(until, Ordering::Release);
    }

    #[cfg(test)]
    fn open_for_ms(&self) -> u64 {
        self.open_until_ms
            .load(Ordering::Acquire)
            .saturating_sub(self.now_ms())
    }
}

pub struct RedisCache {
    conn: ConnectionManager,
    timeout: Duration,
    pub breaker: Breaker,
}

fn redis_key(model: &str, version: &str, k: &Key) -> String {
    format!("inferd:p1:{model}:{version}:{}", hex::encode(k))
}

impl RedisCache {
    fn new(s: RedisSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(s.url.as_str())?;
        // Lazy: start even when Redis is down; the manager reconnects by itself.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(s.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client.get_connection_manager_lazy(config)?;
        Ok(RedisCache {
            conn,
            timeout: s.timeout,
            breaker: Breaker::new(s.breaker_backoff),
        })
    }

    async fn guarded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        if self.breaker.is_open() {
            return Err(CacheError::Open);
        }
        let r = match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(CacheError::Timeout),
            Ok(Err(e)) => Err(CacheError::Redis(e)),
            Ok(Ok(v)) => Ok(v),
        };
        match &r {
            Ok(_) => self.breaker.success(),
            Err(_) => self.breaker.failure(),
        }
        r
    }

    async fn mget(
        &self,
        model: &str,
        version: &str,
        keys: &[Key],
    ) -> Result<Vec<Option<Bytes>>, CacheError> {
        let names: Vec<String> = keys.iter().map(|k| redis_key(model, version, k)).collect();
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&names);
        let vals: Vec<Option<Vec<u8>>> = self.guarded(cmd.query_async(&mut conn)).await?;
        Ok(vals.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn set_many(
        &self,
        model: &str,
        version: &str,
        items: Vec<(Key, Bytes)>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        let secs = ttl.as_secs().max(1);
        for (k, v) in &items {
            pipe.cmd("SET")
                .arg(redis_key(model, version, k))
                .arg(v.as_ref())
                .arg("EX")
                .arg(secs)
                .ignore();
        }
        let mut conn = self.conn.clone();
        self.guarded(pipe.query_async::<()>(&mut conn)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_values_not_spelling() {
        let a = InputBatch::Windows {
            data: vec![1.0, 2.0, -0.0],
            batch: 1,
            steps: 3,
            features: 1,
        };
        let b = InputBatch::Windows {
            data: vec![1.0, 2.0, 0.0],
            batch: 1,
            steps: 3,
            features: 1,
        };
        let c = InputBatch::Windows {
            data: vec![1.0, 2.0, 0.5],
            batch: 1,
            steps: 3,
            features: 1,
        };
        assert_eq!(instance_key("m", "1", &a, 0), instance_key("m", "1", &b, 0));
        assert_ne!(instance_key("m", "1", &a, 0), instance_key("m", "1", &c, 0));
        assert_ne!(instance_key("m", "1", &a, 0), instance_key("m", "2", &a, 0));
    }

    #[test]
    fn breaker_opens_after_repeated_failures() {
        let b = Breaker::new(Duration::from_secs(60));
        b.failure();
        b.failure();
        assert!(!b.is_open());
        b.failure();
        assert!(b.is_open());
        let b = Breaker::new(Duration::from_millis(1));
        for _ in 0..3 {
            b.failure();
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(!b.is_open(), "half-open after the back-off");
    }

    #[test]
    fn a_burst_of_failures_opens_once_and_trials_double_the_back_off() {
        let b = Breaker::new(Duration::from_secs(10));
        // 50 calls in flight fail together: one opening at the base back-off.
        for _ in 0..50 {
            b.failure();
        }
        let first = b.open_for_ms();
        assert!((9_000..=10_000).contains(&first), "{first}");
        // The period ends and the trial fails: twice as long.
        b.open_until_ms.store(0, Ordering::Release);
        b.failure();
        let second = b.open_for_ms();
        assert!((19_000..=20_000).contains(&second), "{second}");
        // A success resets both the count and the back-off.
        b.open_until_ms.store(0, Ordering::Release);
        b.success();
        for _ in 0..3 {
            b.failure();
        }
        assert!(b.open_for_ms() <= 10_000);
    }
}

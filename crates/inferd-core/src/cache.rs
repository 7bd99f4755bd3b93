//! The prediction cache: one entry per (model, version, instance), so a request
//! whose instances are partly cached runs the model on the rest only.
//!
//! Keys hash a canonical encoding of the *decoded* instance (the UTF-8 text, or
//! the float32 window's bits), so JSON key order, whitespace and number spelling
//! (`362.5` vs `3.625e2`) cannot split one instance into two entries.
//!
//! Entries live in process (`moka`, bounded by bytes), and optionally in a
//! shared store behind them: `RemoteStore` is the port such a store plugs into
//! (`inferd-cache-redis` is the Redis one), and the in-process store is then a
//! small, short-lived L1 in front of it. The cache must never fail or slow a
//! prediction: a store answers within its own short timeout or fails, and a
//! failure is counted and served from the model (the cache fails open).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::backend::InputBatch;
use crate::metrics::Metrics;

/// A cache key: the SHA-256 of the model, version and canonical instance.
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

/// Why a shared store did not answer. Every kind fails open: the request is
/// served from the model, and the kind is the `kind` label of
/// `inferd_cache_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's circuit breaker is open: it was not called at all.
    #[error("circuit breaker open")]
    BreakerOpen,
    /// It did not answer within its timeout.
    #[error("timed out")]
    Timeout,
    /// It answered with an error, or the connection failed.
    #[error("{store}: {message}")]
    Failed {
        /// The store's name (`RemoteStore::name`), the metric's kind.
        store: &'static str,
        /// What it said.
        message: String,
    },
}

impl StoreError {
    fn kind(&self) -> &'static str {
        match self {
            StoreError::BreakerOpen => "breaker_open",
            StoreError::Timeout => "timeout",
            StoreError::Failed { store, .. } => store,
        }
    }
}

/// The port a shared cache store plugs into. Implementations bound every call
/// by a short timeout of their own and may refuse calls while a breaker is
/// open; the cache counts their failures and serves from the model.
pub trait RemoteStore: Send + Sync + 'static {
    /// The store's name: the `backend` label of the cache metrics.
    fn name(&self) -> &'static str;

    /// The values of `keys`, in order; `None` for each one missing.
    fn get_many<'a>(
        &'a self,
        model: &'a str,
        version: &'a str,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>, StoreError>>;

    /// Stores `items`, each expiring after `ttl`.
    fn set_many<'a>(
        &'a self,
        model: &'a str,
        version: &'a str,
        items: Vec<(Key, Bytes)>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether calls are being skipped after repeated failures (the
    /// `inferd_cache_breaker_open` gauge).
    fn breaker_open(&self) -> bool {
        false
    }
}

/// A local (in-process) store, and optionally a shared one behind it. With a
/// shared store, the local one is a small, short-lived L1: hot keys skip the
/// round trip, and a result is visible locally before the request that
/// computed it finishes, which closes the window in which a concurrent
/// request could miss and recompute.
pub struct Cache {
    local: moka::future::Cache<Key, Bytes>,
    remote: Option<Arc<dyn RemoteStore>>,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

/// Bounds of the L1 in front of a shared store.
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
    /// An in-process cache of at most `max_bytes` (entries and their overhead).
    pub fn memory(max_bytes: u64, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Cache {
            local: local_store(max_bytes, ttl),
            remote: None,
            ttl,
            metrics,
        }
    }

    /// A cache whose entries live in `store`, with a small L1 in process.
    pub fn shared(store: Arc<dyn RemoteStore>, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Cache {
            local: local_store(L1_MAX_BYTES, ttl.min(L1_MAX_TTL)),
            remote: Some(store),
            ttl,
            metrics,
        }
    }

    /// `memory`, or the shared store's name.
    pub fn backend_name(&self) -> &'static str {
        self.remote.as_ref().map_or("memory", |r| r.name())
    }

    /// Whether a shared store sits behind the local one.
    pub fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Looks up every key, locally first, then in the shared store; `None` for
    /// a miss or when the store is unavailable.
    pub async fn get_many(&self, model: &str, version: &str, keys: &[Key]) -> Vec<Option<Bytes>> {
        let start = Instant::now();
        let mut out = self.peek_many(keys).await;
        if let Some(r) = &self.remote {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
            if !missing.is_empty() {
                let ks: Vec<Key> = missing.iter().map(|&i| keys[i]).collect();
                match r.get_many(model, version, &ks).await {
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

    /// Stores values in the shared store, if there is one; errors are counted
    /// and ignored.
    pub async fn set_remote(&self, model: &str, version: &str, items: Vec<(Key, Bytes)>) {
        let Some(r) = &self.remote else { return };
        let start = Instant::now();
        if let Err(e) = r.set_many(model, version, items, self.ttl).await {
            self.record_error("set", &e);
        }
        self.metrics
            .cache_latency
            .with_label_values(&["set", r.name()])
            .observe(start.elapsed().as_secs_f64());
    }

    fn record_error(&self, op: &str, e: &StoreError) {
        self.metrics
            .cache_errors
            .with_label_values(&[op, e.kind()])
            .inc();
        if let Some(r) = &self.remote {
            self.metrics
                .cache_breaker_open
                .set(i64::from(r.breaker_open()));
        }
        if !matches!(e, StoreError::BreakerOpen) {
            tracing::debug!(op, error = %e, "cache call failed; serving from the model");
        }
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
}

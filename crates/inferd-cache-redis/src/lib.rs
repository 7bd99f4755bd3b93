//! The shared prediction cache in Redis, behind inferd-core's cache port
//! (`inferd_core::cache::RemoteStore`).
//!
//! The cache must never fail or slow a prediction: every Redis call has a
//! short timeout, errors fail open (the core serves from the model), and a
//! circuit breaker stops calling a Redis that keeps failing until a back-off
//! period has passed, so a dead Redis costs one atomic load per request.
//! Connecting is lazy: the server starts with Redis down, and the connection
//! manager reconnects by itself.

#![warn(missing_docs)]
// Request paths return typed errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod breaker;

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use inferd_core::cache::{Key, RemoteStore, StoreError};
use redis::aio::ConnectionManager;

use breaker::Breaker;

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Each call's timeout; past it the call fails open.
    pub timeout: Duration,
    /// How long the breaker skips Redis after repeated failures (doubling on
    /// each failed trial, up to 16x).
    pub breaker_backoff: Duration,
}

/// Redis as the cache's shared store.
pub struct RedisStore {
    conn: ConnectionManager,
    timeout: Duration,
    breaker: Breaker,
}

/// Why a `RedisStore` could not be made: the URL does not parse.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct InvalidUrl(#[from] redis::RedisError);

fn redis_key(model: &str, version: &str, k: &Key) -> String {
    format!("inferd:p1:{model}:{version}:{}", hex::encode(k))
}

impl RedisStore {
    /// A store for `settings.url`; no connection is made until the first call.
    pub fn new(s: RedisSettings) -> Result<Self, InvalidUrl> {
        let client = redis::Client::open(s.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(s.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client.get_connection_manager_lazy(config)?;
        Ok(RedisStore {
            conn,
            timeout: s.timeout,
            breaker: Breaker::new(s.breaker_backoff),
        })
    }

    /// One `PING` within the call timeout: for the start-up report, not the
    /// request path (the breaker does not count it).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        within(
            self.timeout.max(Duration::from_millis(500)),
            cmd.query_async::<String>(&mut conn),
        )
        .await
        .map(drop)
    }

    async fn guarded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if self.breaker.is_open() {
            return Err(StoreError::BreakerOpen);
        }
        let r = within(self.timeout, fut).await;
        match &r {
            Ok(_) => self.breaker.success(),
            Err(_) => self.breaker.failure(),
        }
        r
    }
}

/// A Redis call bounded by `limit`, its failure in the port's terms.
async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(StoreError::Timeout),
        Ok(Err(e)) => Err(StoreError::Failed {
            store: "redis",
            message: e.to_string(),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

impl RemoteStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get_many<'a>(
        &'a self,
        model: &'a str,
        version: &'a str,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>, StoreError>> {
        async move {
            let names: Vec<String> = keys.iter().map(|k| redis_key(model, version, k)).collect();
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("MGET");
            cmd.arg(&names);
            let vals: Vec<Option<Vec<u8>>> = self.guarded(cmd.query_async(&mut conn)).await?;
            Ok(vals.into_iter().map(|v| v.map(Bytes::from)).collect())
        }
        .boxed()
    }

    fn set_many<'a>(
        &'a self,
        model: &'a str,
        version: &'a str,
        items: Vec<(Key, Bytes)>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
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
        .boxed()
    }

    fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }
}

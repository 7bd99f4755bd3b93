//! The result cache.

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{check, DAY_MS, HOUR_MS};

/// `INFERD_CACHE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Redis when `--redis-url` is set, else in-process.
    On,
    /// No cache.
    Off,
}

/// Which cache the server builds.
#[derive(Debug, Clone)]
pub enum CacheChoice {
    /// None.
    Off,
    /// In process, bounded by bytes.
    Memory {
        /// Entries and their overhead.
        max_bytes: u64,
        /// Entries' time to live.
        ttl: Duration,
    },
    /// In Redis, with a small L1 in process.
    Redis {
        /// Where, and how long to wait.
        settings: inferd_cache_redis::RedisSettings,
        /// Entries' time to live.
        ttl: Duration,
    },
}

/// `Cache` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Cache")]
pub struct CacheArgs {
    /// Result cache: `on` (Redis if `--redis-url`, else in-process) or `off`.
    /// Models whose manifest says `[cache] enabled = false` are never cached.
    #[arg(id = "cache", long = "cache", value_name = "CACHE", env = "INFERD_CACHE", value_enum, default_value_t = CacheMode::On)]
    #[serde(rename = "cache")]
    pub mode: CacheMode,

    /// Redis URL for the shared cache, e.g. `redis://127.0.0.1:6379/0`.
    #[arg(long, env = "INFERD_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Time to live of cache entries.
    #[arg(long, env = "INFERD_CACHE_TTL_SECS", default_value_t = 3600)]
    pub cache_ttl_secs: u64,

    /// Bound on the in-process cache's resident memory: each entry weighs its
    /// value plus 512 bytes of bookkeeping (measured: ~570 bytes of RSS for a
    /// ~125-byte prediction).
    #[arg(long, env = "INFERD_CACHE_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub cache_max_bytes: u64,

    /// Timeout of each Redis call; past it the request is served from the model.
    #[arg(long, env = "INFERD_CACHE_TIMEOUT_MS", default_value_t = 20)]
    pub cache_timeout_ms: u64,

    /// How long the circuit breaker skips Redis after repeated failures (doubles
    /// on each failed trial, up to 16x).
    #[arg(long, env = "INFERD_CACHE_BREAKER_MS", default_value_t = 1000)]
    pub cache_breaker_ms: u64,
}

impl CacheArgs {
    pub(super) fn validate(&self) -> Result<(), String> {
        check(
            "cache-ttl-secs",
            self.cache_ttl_secs,
            1,
            100 * 365 * 24 * 3600,
        )?;
        check("cache-max-bytes", self.cache_max_bytes, 0, 1 << 40)?;
        check("cache-timeout-ms", self.cache_timeout_ms, 1, HOUR_MS)?;
        check("cache-breaker-ms", self.cache_breaker_ms, 0, DAY_MS)
    }

    /// The cache these settings ask for.
    pub fn choice(&self) -> CacheChoice {
        let ttl = Duration::from_secs(self.cache_ttl_secs);
        match (self.mode, &self.redis_url) {
            (CacheMode::Off, _) => CacheChoice::Off,
            (CacheMode::On, Some(url)) => CacheChoice::Redis {
                settings: inferd_cache_redis::RedisSettings {
                    url: url.clone(),
                    timeout: Duration::from_millis(self.cache_timeout_ms),
                    breaker_backoff: Duration::from_millis(self.cache_breaker_ms),
                },
                ttl,
            },
            (CacheMode::On, None) => CacheChoice::Memory {
                max_bytes: self.cache_max_bytes,
                ttl,
            },
        }
    }
}

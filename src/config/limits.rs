//! Admission and request limits.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::{check, DAY_MS};

/// `Limits` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Inferences allowed to run at once, across all models: the inference
    /// threads, and each model's sessions (one per thread). Default: physical
    /// cores.
    #[arg(long, env = "INFERD_MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,

    /// Requests allowed to wait for a free inference slot; past this, 429.
    #[arg(long, env = "INFERD_MAX_QUEUE", default_value_t = 512)]
    pub max_queue: usize,

    /// Deadline for one request, counted from its header's arrival and covering
    /// the body, the queue wait and inference; past it, 504. A batch whose
    /// requests have all passed it (or whose clients all left) is stopped and
    /// its slot freed.
    #[arg(long, env = "INFERD_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Largest request body accepted; past it, 413.
    #[arg(long, env = "INFERD_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most instances in one request; past it, 422.
    #[arg(long, env = "INFERD_MAX_INSTANCES", default_value_t = 64)]
    pub max_instances: usize,
}

impl LimitArgs {
    pub(super) fn validate(&self) -> Result<(), String> {
        let concurrency = self.max_concurrency.unwrap_or(1) as u64;
        check("max-concurrency", concurrency, 1, 1024)?;
        check("max-queue", self.max_queue as u64, 1, 1_000_000)?;
        check("request-timeout-ms", self.request_timeout_ms, 1, DAY_MS)?;
        check("max-body-bytes", self.max_body_bytes as u64, 1, 1 << 30)?;
        check("max-instances", self.max_instances as u64, 1, 65_536)
    }

    /// Inference slots: the configured number, else the physical cores.
    pub fn concurrency(&self) -> usize {
        self.max_concurrency
            .unwrap_or_else(num_cpus::get_physical)
            .max(1)
    }

    /// A request's deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The core pipeline's limits.
    pub fn pipeline(&self) -> inferd_core::pipeline::Limits {
        inferd_core::pipeline::Limits {
            max_instances: self.max_instances,
            timeout_ms: self.request_timeout_ms,
        }
    }
}

//! Overrides of the manifests' dynamic batching.

use clap::Args;
use serde::Serialize;

use super::check;

/// `Batching` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Batching")]
pub struct BatchingArgs {
    /// Override every model's `[batching].max_batch_size`: instances per
    /// backend call (the shipped manifests say 32 for text, 64 for the LSTM).
    #[arg(long, env = "INFERD_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,

    /// Override every model's `[batching].max_batch_delay_ms`: how long a batch may
    /// wait for more requests once a slot is free (0, the shipped manifests'
    /// value: never wait).
    #[arg(long, env = "INFERD_MAX_BATCH_DELAY_MS")]
    pub max_batch_delay_ms: Option<u64>,
}

impl BatchingArgs {
    pub(super) fn validate(&self) -> Result<(), String> {
        check(
            "max-batch-size",
            self.max_batch_size.unwrap_or(1) as u64,
            1,
            65_536,
        )?;
        check(
            "max-batch-delay-ms",
            self.max_batch_delay_ms.unwrap_or(0),
            0,
            60_000,
        )
    }
}

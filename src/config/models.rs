//! The models directory and model control.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::check;

/// `INFERD_MODEL_CONTROL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelControlMode {
    /// On when admin keys are configured.
    Auto,
    /// On.
    On,
    /// Off: the index stays readable.
    Off,
}

/// `Models and model control` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Models and model control")]
pub struct ModelArgs {
    /// Directory holding `<model>/<version>/{model.onnx,model.toml}`.
    #[arg(long, env = "INFERD_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,

    /// Warm-up inferences per session before the server reports ready.
    #[arg(long, env = "INFERD_WARMUP_RUNS", default_value_t = 2)]
    pub warmup_runs: usize,

    /// Whether the repository API may load and unload models: `auto` (on when
    /// admin keys are configured), `on`, or `off` (the index stays readable).
    /// Without any keys, `on` leaves the routes open to anyone who can reach
    /// the port: keep them behind the proxy or a network policy.
    #[arg(long, env = "INFERD_MODEL_CONTROL", value_enum, default_value_t = ModelControlMode::Auto)]
    pub model_control: ModelControlMode,

    /// Poll the models directory every this many seconds, loading new or
    /// changed version directories and retiring removed ones (0: off).
    #[arg(long, env = "INFERD_MODEL_POLL_SECS", default_value_t = 0)]
    pub model_poll_secs: u64,
}

impl ModelArgs {
    pub(super) fn validate(&self) -> Result<(), String> {
        check("warmup-runs", self.warmup_runs as u64, 0, 10_000)?;
        check("model-poll-secs", self.model_poll_secs, 0, 7 * 24 * 3600)
    }
}

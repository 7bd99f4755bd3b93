//! The model-quality loop: labels fed back, shadow versions, drift.

use std::time::Duration;

use clap::Args;
use inferd_core::quality::drift::DriftRule;
use inferd_core::quality::QualitySettings;
use serde::Serialize;

use super::check;

/// How much the server remembers and how it judges.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Model quality")]
pub struct QualityArgs {
    /// Served instances remembered so that labels fed back later
    /// (`POST /v1/feedback`) can join them, per process; about 200 bytes
    /// each. 0 turns label feedback and online quality off (with
    /// `--drift-window 0` too, predictions do no quality work at all).
    #[arg(long, env = "INFERD_QUALITY_INDEX", default_value_t = 100_000)]
    pub quality_index: u64,

    /// How long a served instance waits for its label, in seconds.
    #[arg(long, env = "INFERD_QUALITY_INDEX_TTL_S", default_value_t = 86_400)]
    pub quality_index_ttl_s: u64,

    /// The last this many labels per version and arm make the windowed
    /// quality figures (the gauges); the report also gives all since start.
    #[arg(long, env = "INFERD_QUALITY_WINDOW", default_value_t = 1000)]
    pub quality_window: usize,

    /// Drift is judged over each version's last this many instances (0: drift
    /// is off) ...
    #[arg(long, env = "INFERD_DRIFT_WINDOW", default_value_t = 1000)]
    pub drift_window: usize,

    /// ... no older than this many seconds.
    #[arg(long, env = "INFERD_DRIFT_WINDOW_S", default_value_t = 3600)]
    pub drift_window_s: u64,

    /// A drift window is judged once it holds this many instances.
    #[arg(long, env = "INFERD_DRIFT_MIN_COUNT", default_value_t = 100)]
    pub drift_min_count: usize,

    /// A feature drifts when its PSI against the training data reaches this
    /// (0.1: a small shift, 0.25: a large one) ...
    #[arg(long, env = "INFERD_DRIFT_PSI", default_value_t = 0.25)]
    pub drift_psi: f64,

    /// ... and its chi-square test's p-value is below this divided by the
    /// number of features (Bonferroni).
    #[arg(long, env = "INFERD_DRIFT_ALPHA", default_value_t = 0.01)]
    pub drift_alpha: f64,
}

impl QualityArgs {
    pub(super) fn validate(&self) -> Result<(), String> {
        check("quality-index", self.quality_index, 0, 100_000_000)?;
        check(
            "quality-index-ttl-s",
            self.quality_index_ttl_s,
            1,
            30 * 86_400,
        )?;
        check("quality-window", self.quality_window as u64, 1, 1_000_000)?;
        check("drift-window", self.drift_window as u64, 0, 1_000_000)?;
        check("drift-window-s", self.drift_window_s, 1, 30 * 86_400)?;
        if self.drift_window > 0 {
            check(
                "drift-min-count",
                self.drift_min_count as u64,
                1,
                self.drift_window as u64,
            )?;
        }
        if !(self.drift_psi > 0.0 && self.drift_psi.is_finite()) {
            return Err(format!(
                "--drift-psi must be positive (it is {})",
                self.drift_psi
            ));
        }
        if !(self.drift_alpha > 0.0 && self.drift_alpha < 1.0) {
            return Err(format!(
                "--drift-alpha must be within (0, 1) (it is {})",
                self.drift_alpha
            ));
        }
        Ok(())
    }

    /// The core's settings.
    pub fn settings(&self) -> QualitySettings {
        QualitySettings {
            index_capacity: self.quality_index,
            index_ttl: Duration::from_secs(self.quality_index_ttl_s),
            window: self.quality_window,
            drift: DriftRule {
                window: self.drift_window,
                span: Duration::from_secs(self.drift_window_s),
                min_count: self.drift_min_count,
                psi: self.drift_psi,
                alpha: self.drift_alpha,
            },
        }
    }
}

//! Command line and environment configuration. Every flag has an `INFERD_*`
//! environment fallback, so the same binary is configured the same way on a
//! laptop, in compose and in Kubernetes.
//!
//! `ServeConfig` is one struct for the whole server, made of groups, one per
//! layer (listening and connections, limits, runtimes, batching, models and
//! model control, cache, prediction log, API keys, logs). Each group validates
//! its own values and converts them into the settings its layer takes, so no
//! layer below this crate ever sees a clap type. The groups are flattened: the
//! flags, their environment names and the start-up config line are flat too.

mod auth;
mod batching;
mod cache;
mod limits;
mod models;
mod net;
mod predlog;
mod quality;
mod reference;
mod runtime;
mod telemetry;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

pub use auth::AuthArgs;
pub use batching::BatchingArgs;
pub use cache::{CacheArgs, CacheChoice, CacheMode};
pub use limits::{AdmissionMode, LimitArgs};
pub use models::{ModelArgs, ModelControlMode};
pub use net::{GrpcListen, NetArgs};
pub use predlog::{LogInputs, PredLogMode, PredlogArgs};
pub use quality::QualityArgs;
pub use reference::reference;
pub use runtime::{Device, RuntimeArgs};
pub use telemetry::{LogFormat, TelemetryArgs};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "inferd",
    version,
    about = "Model-inference server: ONNX Runtime and TorchScript models over HTTP and gRPC"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A subcommand; none is `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `inferd` with no subcommand behaves as `inferd serve`.
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
// Parsed once at start-up, so the size of the `Serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Serve the models in the models directory over HTTP (the default).
    Serve(ServeConfig),
    /// Probe a running server (exit 0 when it answers 200): the container
    /// HEALTHCHECK, for images that carry no curl or shell.
    Healthcheck(HealthcheckConfig),
    /// Apply a model's preprocessing to JSON lines on stdin, writing them to
    /// stdout: the training scripts clean their data with this, so training
    /// and serving share one implementation.
    Preprocess(PreprocessConfig),
}

/// `inferd preprocess KIND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreprocessKind {
    /// Email messages (raw RFC 822 or plain text), as `[text] preprocess = "email"`.
    Email,
}

/// `inferd preprocess`.
#[derive(Debug, Clone, Args)]
pub struct PreprocessConfig {
    /// Which preprocessing.
    #[arg(value_enum)]
    pub kind: PreprocessKind,
    /// The cleaned text is cut to this many characters (`[text] truncate_chars`).
    #[arg(long)]
    pub truncate_chars: usize,
    /// The field of each JSON object that holds the text; the other fields are
    /// copied through.
    #[arg(long, default_value = "text")]
    pub field: String,
}

/// `inferd healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckConfig {
    /// URL to probe.
    #[arg(
        long,
        env = "INFERD_HEALTHCHECK_URL",
        default_value = "http://127.0.0.1:8080/healthz"
    )]
    pub url: String,
    /// Give up after this long.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// `inferd serve`: the server's whole configuration, in groups.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ServeConfig {
    /// Listening, connections and shutdown.
    #[command(flatten)]
    #[serde(flatten)]
    pub net: NetArgs,
    /// Admission and request limits.
    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitArgs,
    /// Model runtimes and their threads.
    #[command(flatten)]
    #[serde(flatten)]
    pub runtime: RuntimeArgs,
    /// Overrides of the manifests' batching.
    #[command(flatten)]
    #[serde(flatten)]
    pub batching: BatchingArgs,
    /// The models directory and model control.
    #[command(flatten)]
    #[serde(flatten)]
    pub models: ModelArgs,
    /// The result cache.
    #[command(flatten)]
    #[serde(flatten)]
    pub cache: CacheArgs,
    /// The prediction log.
    #[command(flatten)]
    #[serde(flatten)]
    pub predlog: PredlogArgs,
    /// Label feedback, shadows and drift.
    #[command(flatten)]
    #[serde(flatten)]
    pub quality: QualityArgs,
    /// API keys.
    #[command(flatten)]
    #[serde(flatten)]
    pub auth: AuthArgs,
    /// Logs.
    #[command(flatten)]
    #[serde(flatten)]
    pub telemetry: TelemetryArgs,
}

const DAY_MS: u64 = 24 * 3600 * 1000;
const HOUR_MS: u64 = 3600 * 1000;

/// Upper bounds too: past these a value is a typo, and near the integer
/// limits it overflows arithmetic or exceeds a library's own limit.
fn check(name: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "--{name} must be between {min} and {max} (it is {value})"
        ))
    }
}

impl ServeConfig {
    /// Checks the limits that clap's types do not.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        self.net.validate()?;
        self.runtime.validate()?;
        self.models.validate()?;
        self.batching.validate()?;
        self.cache.validate()?;
        self.quality.validate()?;
        self.predlog.validate()
    }

    /// The effective configuration as one JSON object for the start-up log line,
    /// with passwords in URLs replaced and keys only counted.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["max_concurrency"] = self.limits.concurrency().into();
        v["redis_url"] = self.cache.redis_url.as_deref().map(redact_url).into();
        v["database_url"] = self.predlog.database_url.as_deref().map(redact_url).into();
        let count = |k: &Option<String>| k.as_deref().map(|k| format!("<{} keys>", key_count(k)));
        v["api_keys"] = count(&self.auth.api_keys).into();
        v["admin_keys"] = count(&self.auth.admin_keys).into();
        v
    }

    /// Whether the repository API's load and unload are on.
    pub fn model_control_on(&self) -> bool {
        match self.models.model_control {
            ModelControlMode::On => true,
            ModelControlMode::Off => false,
            ModelControlMode::Auto => self.auth.has_admin_keys(),
        }
    }

    /// The front doors' settings.
    pub fn api_settings(&self) -> inferd_api::Settings {
        inferd_api::Settings {
            max_body_bytes: self.limits.max_body_bytes,
            body_read_timeout: self.net.body_read_timeout(),
            request_timeout: self.limits.request_timeout(),
            max_instances: self.limits.max_instances,
            log_instances: self.predlog.predlog_inputs == LogInputs::Full,
            model_control: self.model_control_on(),
            defer_unknown_labels: self.predlog.sink == PredLogMode::Postgres
                || (self.predlog.sink == PredLogMode::Auto && self.predlog.database_url.is_some()),
        }
    }

    /// Model control's settings: warm-up runs through every session of the
    /// pool, and the batching overrides.
    pub fn control_settings(&self) -> inferd_core::control::Settings {
        inferd_core::control::Settings {
            root: self.models.models_dir.clone(),
            // Round-robin through the pool: every session runs `warmup_runs` times.
            warmup_runs: self
                .models
                .warmup_runs
                .saturating_mul(self.limits.concurrency()),
            max_batch_size: self.batching.max_batch_size,
            max_batch_delay_ms: self.batching.max_batch_delay_ms,
        }
    }

    /// The prediction log writer's configuration: its last drain at shutdown
    /// gets a third of the grace period.
    pub fn predlog_writer(&self) -> inferd_predlog::WriterConfig {
        self.predlog.writer(self.net.shutdown_grace() / 3)
    }

    /// How long the server waits for in-flight work after a shutdown signal.
    pub fn shutdown_grace(&self) -> Duration {
        self.net.shutdown_grace()
    }
}

/// Keys in a comma-separated list, blanks ignored.
fn key_count(list: &str) -> usize {
    list.split(',').filter(|k| !k.trim().is_empty()).count()
}

/// `scheme://user:secret@host/...` -> `scheme://user:***@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    if userinfo.contains(':') {
        format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
    } else {
        url.to_string()
    }
}

#[cfg(test)]
mod tests;

//! Command line and environment configuration: one struct, `ServeConfig`, that every
//! other module reads. Each flag has an `INFERD_*` environment fallback so the same
//! binary is configured the same way on a laptop, in compose and in Kubernetes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// The default location `make run` / `scripts/install-ort.sh` installs ONNX Runtime to.
pub const LOCAL_ORT_LIB: &str = ".ort/lib/libonnxruntime.so.1.31.1";

#[derive(Debug, Parser)]
#[command(
    name = "inferd",
    version,
    about = "Model-inference server for ONNX models"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `inferd` with no subcommand behaves as `inferd serve`.
    #[command(flatten)]
    pub serve: ServeConfig,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreprocessKind {
    /// Email messages (raw RFC 822 or plain text), as `[text] preprocess = "email"`.
    Email,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `INFERD_MODEL_CONTROL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelControlMode {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Redis when `--redis-url` is set, else in-process.
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PredLogMode {
    /// PostgreSQL when `--database-url` is set, else the JSON-lines file.
    Auto,
    Postgres,
    Jsonl,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogInputs {
    /// The instance as sent, plus its hash.
    Full,
    /// Only the SHA-256 of the instance (inputs may be sensitive).
    Hash,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "INFERD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the gRPC front door (KServe v2 and gRPC health), or `off`.
    #[arg(long, env = "INFERD_GRPC_LISTEN", default_value = "0.0.0.0:8081")]
    pub grpc_listen: String,

    /// Directory holding `<model>/<version>/{model.onnx,model.toml}`.
    #[arg(long, env = "INFERD_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,

    /// Inferences allowed to run at once, across all models. Default: physical cores.
    #[arg(long, env = "INFERD_MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,

    /// Requests allowed to wait for a free inference slot; past this, 429.
    #[arg(long, env = "INFERD_MAX_QUEUE", default_value_t = 512)]
    pub max_queue: usize,

    /// Deadline for one request, covering queue wait and inference; past it, 504.
    #[arg(long, env = "INFERD_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Most open client connections (per port); past it new ones wait in the
    /// listen backlog. Lowered, with a warning, to the descriptor limit (raised
    /// to the hard one at start-up) less 256.
    #[arg(long, env = "INFERD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Connections the kernel queues for accepting (listen(2)'s backlog, per
    /// port): where those past the cap wait. Past it, a client's SYN is dropped
    /// and retried for seconds. The kernel caps it at net.core.somaxconn.
    #[arg(long, env = "INFERD_LISTEN_BACKLOG", default_value_t = 1024)]
    pub listen_backlog: u32,

    /// Time a client has to send a request's whole header, from its first byte;
    /// past it the connection is closed.
    #[arg(long, env = "INFERD_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Time a request's body has to arrive, from the end of its header; past it,
    /// 408 and the connection is closed. The request deadline
    /// (INFERD_REQUEST_TIMEOUT_MS) also runs from the header's arrival.
    #[arg(long, env = "INFERD_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,

    /// How long a connection may sit with no request in progress (a new
    /// connection before its first byte, a keep-alive one between requests)
    /// before it is closed. Longer than nginx's upstream `keepalive_timeout`
    /// (60 s), so that the proxy, not the worker, closes an idle upstream
    /// connection and never sends a request into one being closed.
    #[arg(long, env = "INFERD_IDLE_TIMEOUT_MS", default_value_t = 75_000)]
    pub idle_timeout_ms: u64,

    /// Largest request body accepted; past it, 413.
    #[arg(long, env = "INFERD_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most instances in one request; past it, 422.
    #[arg(long, env = "INFERD_MAX_INSTANCES", default_value_t = 64)]
    pub max_instances: usize,

    /// Intra-op threads per inference, for both runtimes: ONNX Runtime's per
    /// session, libtorch's per slot thread. Concurrency comes from running
    /// several inferences at once, so 1 is right unless requests are few and
    /// large. `--ort-threads` is the older name.
    #[arg(
        long,
        env = "INFERD_INTRA_OP_THREADS",
        alias = "ort-threads",
        default_value_t = 1
    )]
    pub intra_op_threads: usize,

    /// An ONNX Runtime session that ran a batch of more rows than this hands
    /// its arena's growth back once its model has been idle for 2 s; a busy
    /// model keeps its arena warm. 0: never shrink.
    #[arg(long, env = "INFERD_ARENA_SHRINK_ROWS", default_value_t = 8)]
    pub arena_shrink_rows: usize,

    /// Nice value (0-19) added to the async runtime's workers, not to the
    /// inference threads: under overload the model keeps its CPU instead of
    /// sharing it with the flood of refusals. For a pod with its own CPUs; on
    /// a shared machine a proxy at normal priority wins. `serve` only.
    #[arg(long, env = "INFERD_REACTOR_NICE", default_value_t = 0,
        value_parser = clap::value_parser!(u8).range(0..=19))]
    pub reactor_nice: u8,

    /// Execution device, for both runtimes. `cuda` needs a build with
    /// `--features cuda` and the `onnxruntime-gpu` library for ONNX versions,
    /// and a CUDA device libtorch can see for TorchScript versions (`torch`
    /// builds); start-up fails, saying which, where either is missing.
    #[arg(long, env = "INFERD_DEVICE", value_enum, default_value_t = Device::Cpu)]
    pub device: Device,

    /// Log line format.
    #[arg(long, env = "INFERD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// After SIGTERM/SIGINT, how long in-flight requests may take before exit.
    #[arg(long, env = "INFERD_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,

    /// After SIGTERM/SIGINT, how long to keep the listener open answering 503
    /// (`/readyz` and new predictions) before closing it, so that load balancers
    /// and Kubernetes endpoints see the change before connections are refused.
    #[arg(long, env = "INFERD_DRAIN_DELAY_MS", default_value_t = 0)]
    pub drain_delay_ms: u64,

    /// Warm-up inferences per session before the server reports ready.
    #[arg(long, env = "INFERD_WARMUP_RUNS", default_value_t = 2)]
    pub warmup_runs: usize,

    /// Override every model's `[batching].max_batch_size` (instances per ONNX call).
    #[arg(long, env = "INFERD_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,

    /// Override every model's `[batching].max_batch_delay_ms`: how long a batch may
    /// wait for more requests once a slot is free (0: never wait).
    #[arg(long, env = "INFERD_MAX_BATCH_DELAY_MS")]
    pub max_batch_delay_ms: Option<u64>,

    /// Result cache: `on` (Redis if `--redis-url`, else in-process) or `off`.
    /// Models whose manifest says `[cache] enabled = false` are never cached.
    #[arg(long, env = "INFERD_CACHE", value_enum, default_value_t = CacheMode::On)]
    pub cache: CacheMode,

    /// Redis URL for the shared cache, e.g. `redis://127.0.0.1:6379/0`.
    #[arg(long, env = "INFERD_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Time to live of cache entries.
    #[arg(long, env = "INFERD_CACHE_TTL_SECS", default_value_t = 3600)]
    pub cache_ttl_secs: u64,

    /// Size bound of the in-process cache.
    #[arg(long, env = "INFERD_CACHE_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub cache_max_bytes: u64,

    /// Timeout of each Redis call; past it the request is served from the model.
    #[arg(long, env = "INFERD_CACHE_TIMEOUT_MS", default_value_t = 20)]
    pub cache_timeout_ms: u64,

    /// How long the circuit breaker skips Redis after repeated failures (doubles
    /// on each failed trial, up to 16x).
    #[arg(long, env = "INFERD_CACHE_BREAKER_MS", default_value_t = 1000)]
    pub cache_breaker_ms: u64,

    /// Prediction log sink.
    #[arg(long, env = "INFERD_PREDLOG", value_enum, default_value_t = PredLogMode::Auto)]
    pub predlog: PredLogMode,

    /// PostgreSQL URL for the prediction log, e.g. `postgres://user:pass@host/db`.
    #[arg(long, env = "INFERD_DATABASE_URL")]
    pub database_url: Option<String>,

    /// The JSON-lines log file (when the sink is the file).
    #[arg(
        long,
        env = "INFERD_PREDLOG_PATH",
        default_value = "./data/predictions.jsonl"
    )]
    pub predlog_path: PathBuf,

    /// Size at which the JSON-lines file is rotated.
    #[arg(long, env = "INFERD_PREDLOG_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub predlog_max_bytes: u64,

    /// Rotated JSON-lines files kept.
    #[arg(long, env = "INFERD_PREDLOG_KEEP", default_value_t = 5)]
    pub predlog_keep: usize,

    /// Where records go while PostgreSQL is unreachable and the buffer is full.
    #[arg(
        long,
        env = "INFERD_PREDLOG_SPILL_PATH",
        default_value = "./data/predlog-spill.jsonl"
    )]
    pub predlog_spill_path: PathBuf,

    /// Log the instance itself (`full`) or only its SHA-256 (`hash`).
    #[arg(long, env = "INFERD_PREDLOG_INPUTS", value_enum, default_value_t = LogInputs::Full)]
    pub predlog_inputs: LogInputs,

    /// Records per database write.
    #[arg(long, env = "INFERD_PREDLOG_BATCH_ROWS", default_value_t = 500)]
    pub predlog_batch_rows: usize,

    /// Longest a record waits before its batch is written.
    #[arg(long, env = "INFERD_PREDLOG_FLUSH_MS", default_value_t = 200)]
    pub predlog_flush_ms: u64,

    /// Records the writer holds in memory while the sink fails; the overflow spills.
    #[arg(long, env = "INFERD_PREDLOG_BUFFER_ROWS", default_value_t = 100_000)]
    pub predlog_buffer_rows: usize,

    /// Capacity of the channel between requests and the writer.
    #[arg(long, env = "INFERD_PREDLOG_CHANNEL", default_value_t = 65_536)]
    pub predlog_channel: usize,

    /// Bearer tokens accepted on the model routes, comma-separated. When this or
    /// `--api-keys-file` is set, requests without a valid `Authorization: Bearer`
    /// get 401. Never logged.
    #[arg(long, env = "INFERD_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// A file of bearer tokens, one per line (`#` starts a comment): for keys
    /// mounted from a secret store rather than passed in the environment.
    #[arg(long, env = "INFERD_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Paths that stay open when API keys are on, comma-separated (probes,
    /// scrapers and the API description need no key by default).
    #[arg(
        long,
        env = "INFERD_AUTH_EXEMPT",
        value_delimiter = ',',
        default_value = "/healthz,/readyz,/metrics,/v2/health/live,/v2/health/ready,/openapi.json,/docs"
    )]
    pub auth_exempt: Vec<String>,

    /// Bearer tokens for the model control routes (`/v2/repository/...`),
    /// comma-separated, separate from the inference keys: an inference key
    /// is refused there (403), and an admin key is not an inference key.
    /// Whenever any key is configured, those routes need an admin key.
    #[arg(long, env = "INFERD_ADMIN_KEYS", hide_env_values = true)]
    pub admin_keys: Option<String>,

    /// A file of admin tokens, one per line (`#` starts a comment).
    #[arg(long, env = "INFERD_ADMIN_KEYS_FILE")]
    pub admin_keys_file: Option<PathBuf>,

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

    /// Path of `libonnxruntime.so`. Default: the project-local install made by `make run`.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
}

impl ServeConfig {
    pub fn concurrency(&self) -> usize {
        self.max_concurrency
            .unwrap_or_else(num_cpus::get_physical)
            .max(1)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }

    /// Checks the limits that clap's types do not.
    pub fn validate(&self) -> Result<(), String> {
        const DAY_MS: u64 = 24 * 3600 * 1000;
        const HOUR_MS: u64 = 3600 * 1000;
        // Upper bounds too: past these a value is a typo, and near the integer
        // limits it overflows arithmetic or exceeds a library's own limit.
        let ranges: &[(&str, u64, u64, u64)] = &[
            (
                "max-concurrency",
                self.max_concurrency.unwrap_or(1) as u64,
                1,
                1024,
            ),
            ("max-queue", self.max_queue as u64, 1, 1_000_000),
            ("request-timeout-ms", self.request_timeout_ms, 1, DAY_MS),
            ("max-connections", self.max_connections as u64, 1, 1_000_000),
            ("listen-backlog", self.listen_backlog.into(), 1, 65_535),
            (
                "header-read-timeout-ms",
                self.header_read_timeout_ms,
                1,
                DAY_MS,
            ),
            ("body-read-timeout-ms", self.body_read_timeout_ms, 1, DAY_MS),
            ("idle-timeout-ms", self.idle_timeout_ms, 1, DAY_MS),
            ("max-body-bytes", self.max_body_bytes as u64, 1, 1 << 30),
            ("max-instances", self.max_instances as u64, 1, 65_536),
            ("intra-op-threads", self.intra_op_threads as u64, 1, 1024),
            (
                "arena-shrink-rows",
                self.arena_shrink_rows as u64,
                0,
                1 << 20,
            ),
            ("shutdown-grace-ms", self.shutdown_grace_ms, 0, HOUR_MS),
            ("drain-delay-ms", self.drain_delay_ms, 0, HOUR_MS),
            ("warmup-runs", self.warmup_runs as u64, 0, 10_000),
            (
                "max-batch-size",
                self.max_batch_size.unwrap_or(1) as u64,
                1,
                65_536,
            ),
            (
                "max-batch-delay-ms",
                self.max_batch_delay_ms.unwrap_or(0),
                0,
                60_000,
            ),
            (
                "cache-ttl-secs",
                self.cache_ttl_secs,
                1,
                100 * 365 * 24 * 3600,
            ),
            ("cache-max-bytes", self.cache_max_bytes, 0, 1 << 40),
            ("cache-timeout-ms", self.cache_timeout_ms, 1, HOUR_MS),
            ("cache-breaker-ms", self.cache_breaker_ms, 0, DAY_MS),
            ("predlog-max-bytes", self.predlog_max_bytes, 1, 1 << 50),
            ("predlog-keep", self.predlog_keep as u64, 0, 10_000),
            (
                "predlog-batch-rows",
                self.predlog_batch_rows as u64,
                1,
                1_000_000,
            ),
            ("predlog-flush-ms", self.predlog_flush_ms, 0, HOUR_MS),
            (
                "predlog-buffer-rows",
                self.predlog_buffer_rows as u64,
                0,
                100_000_000,
            ),
            (
                "predlog-channel",
                self.predlog_channel as u64,
                1,
                100_000_000,
            ),
            ("model-poll-secs", self.model_poll_secs, 0, 7 * 24 * 3600),
        ];
        for &(name, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "--{name} must be between {min} and {max} (it is {value})"
                ));
            }
        }
        if self.grpc_listen != "off" && self.grpc_listen.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "--grpc-listen must be an address such as 0.0.0.0:8081, or off (it is {:?})",
                self.grpc_listen
            ));
        }
        if self.predlog == PredLogMode::Postgres && self.database_url.is_none() {
            return Err("--predlog postgres needs --database-url (INFERD_DATABASE_URL)".into());
        }
        Ok(())
    }

    /// The effective configuration as one JSON object for the start-up log line,
    /// with passwords in URLs replaced.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["max_concurrency"] = self.concurrency().into();
        v["redis_url"] = self.redis_url.as_deref().map(redact_url).into();
        v["database_url"] = self.database_url.as_deref().map(redact_url).into();
        // Say only how many keys there are.
        v["api_keys"] = self
            .api_keys
            .as_deref()
            .map(|k| format!("<{} keys>", key_count(k)))
            .into();
        v["admin_keys"] = self
            .admin_keys
            .as_deref()
            .map(|k| format!("<{} keys>", key_count(k)))
            .into();
        v
    }

    /// The gRPC front door's address; `None` when it is off.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_listen.parse().ok()
    }

    /// Whether the repository API's load and unload are on.
    pub fn model_control_on(&self) -> bool {
        match self.model_control {
            ModelControlMode::On => true,
            ModelControlMode::Off => false,
            ModelControlMode::Auto => {
                self.admin_keys.as_deref().is_some_and(|k| key_count(k) > 0)
                    || self.admin_keys_file.is_some()
            }
        }
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

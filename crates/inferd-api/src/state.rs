//! What every route shares: the front doors' settings, the core's pipeline and
//! lifecycle, model control, the prediction log, the metrics and the API keys.
//! The server builds it; routes only read it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use inferd_core::control::ModelControl;
use inferd_core::lifecycle::Lifecycle;
use inferd_core::pipeline::Pipeline;
use inferd_predlog::PredLog;
use inferd_telemetry::metrics::{Registrar, LATENCY_BUCKETS};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, Registry};

use super::auth::ApiKeys;

/// The limits and choices the front doors apply themselves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest request body accepted; past it, 413.
    pub max_body_bytes: usize,
    /// Time a body has to arrive from the end of its header; past it, 408.
    pub body_read_timeout: Duration,
    /// A request's deadline, from its header's arrival; past it, 504.
    pub request_timeout: Duration,
    /// Most instances in one request; past it, 422.
    pub max_instances: usize,
    /// Log each instance itself (else only its SHA-256).
    pub log_instances: bool,
    /// Whether the repository API may load and unload models.
    pub model_control: bool,
    /// The prediction log is a database every worker writes: a label this
    /// worker cannot join is recorded there (`deferred`) for the join in SQL,
    /// since another worker may have served the prediction.
    pub defer_unknown_labels: bool,
}

/// The front doors' metrics: requests by outcome and protocol.
#[allow(missing_docs)] // Each field's help text is its documentation.
pub struct DoorMetrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub instances: HistogramVec,
    pub requests_in_flight: IntGauge,
    pub memory_budget: IntGauge,
    pub memory_budget_used: IntGauge,
    pub load: prometheus::Gauge,
}

impl DoorMetrics {
    /// The front doors' metrics, registered into `registry`.
    pub fn new(registry: &Registry) -> Self {
        let r = Registrar(registry);
        DoorMetrics {
            requests: r.counter_vec(
                "inferd_requests_total",
                "Prediction requests by model, version, HTTP status (for gRPC, the HTTP status its code stands for) and protocol (http, grpc)",
                &["model", "version", "status", "protocol"],
            ),
            request_duration: r.histogram_vec(
                "inferd_request_duration_seconds",
                "Time from request arrival to response, prediction routes",
                &["model", "version"],
                LATENCY_BUCKETS,
            ),
            instances: r.histogram_vec(
                "inferd_request_instances",
                "Instances per accepted prediction request",
                &["model"],
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            requests_in_flight: r.gauge(
                "inferd_requests_in_flight",
                "Prediction requests inside the server now (queued, computing or answering): \
                 the per-pod signal for autoscaling on load rather than CPU",
            ),
            load: r.float_gauge(
                "inferd_load",
                "Load against what the pod can take, read at each scrape: the share of inference \
                 slots busy (0-1) plus the fullest model queue against its adaptive limit (0-1). \
                 Under 1: capacity to spare; 1-2: work waits; 2: refusing. The autoscaling signal",
            ),
            memory_budget: r.gauge(
                "inferd_memory_budget_bytes",
                "The memory budget for prediction requests in flight (INFERD_MEMORY_BUDGET_BYTES)",
            ),
            memory_budget_used: r.gauge(
                "inferd_memory_budget_used_bytes",
                "Bytes of the memory budget reserved by requests in flight (bodies, decoded tensors, responses)",
            ),
        }
    }
}

/// The state every route reads.
pub struct AppState {
    /// The front doors' limits.
    pub settings: Settings,
    /// Every layer's metrics, rendered at `/metrics`.
    pub registry: Registry,
    /// The core's metrics (refusals are counted there too).
    pub metrics: Arc<inferd_core::Metrics>,
    /// The front doors' own metrics.
    pub doors: DoorMetrics,
    /// The prediction path.
    pub pipeline: Arc<Pipeline>,
    /// Whether the server admits work, and with which deployment.
    pub lifecycle: Arc<Lifecycle>,
    /// Set once the runtime and the first models are loaded.
    pub control: OnceLock<Arc<ModelControl>>,
    /// Where every prediction is recorded.
    pub predlog: PredLog,
    /// The keys the routes accept.
    pub api_keys: Arc<ApiKeys>,
    /// Labels fed back, shadow comparisons and drift.
    pub quality: Arc<inferd_core::quality::Quality>,
    /// The memory budget for prediction requests in flight; `None`: unbounded.
    pub budget: Option<Arc<super::budget::MemoryBudget>>,
}

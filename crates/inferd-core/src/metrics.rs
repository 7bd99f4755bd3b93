//! The core's metrics, all named `inferd_*` in base units (seconds, bytes):
//! admission and batching, the cache, and model control. They are registered
//! into the server's registry beside the other layers' (`inferd_telemetry::metrics`).

use prometheus::{
    GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use inferd_telemetry::metrics::{Registrar, LATENCY_BUCKETS};

/// Every metric the core records.
#[allow(missing_docs)] // Each field's help text is its documentation.
pub struct Metrics {
    pub queue_wait: HistogramVec,
    pub inference_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub queue_depth: IntGauge,
    pub rejections: IntCounterVec,
    pub queue_limit: IntGaugeVec,
    pub queue_instances: IntGaugeVec,
    pub queue_target: GaugeVec,
    pub drain_rate: GaugeVec,
    pub unloaded_latency: GaugeVec,
    pub model_info: IntGaugeVec,
    pub ready: IntGauge,
    pub model_instances: IntCounterVec,
    pub batch_size: HistogramVec,
    pub batches: IntCounterVec,
    pub batches_cancelled: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_errors: IntCounterVec,
    pub cache_coalesced: IntCounter,
    pub cache_latency: HistogramVec,
    pub cache_breaker_open: IntGauge,
    pub model_state: IntGaugeVec,
    pub model_loads: IntCounterVec,
    pub model_gate_failures: IntCounterVec,
    pub model_swap_duration: HistogramVec,
    pub model_unloads: IntCounterVec,
    pub model_polls: IntCounter,
}

const MV: &[&str] = &["model", "version"];

impl Metrics {
    /// The core's metrics, registered into `registry`.
    pub fn new(registry: &Registry) -> Self {
        let r = Registrar(registry);
        let lat = LATENCY_BUCKETS;
        let sizes = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
        Metrics {
            queue_wait: r.histogram_vec(
                "inferd_queue_wait_seconds",
                "Time a request's instances waited in the batch queue (batch queue delay)",
                MV,
                lat,
            ),
            inference_duration: r.histogram_vec(
                "inferd_inference_duration_seconds",
                "Time of one ONNX Runtime call (one batch)",
                MV,
                lat,
            ),
            in_flight: r.gauge("inferd_inferences_in_flight", "Inferences running now"),
            queue_depth: r.gauge(
                "inferd_queue_depth",
                "Requests waiting for an inference slot",
            ),
            rejections: r.counter_vec(
                "inferd_rejections_total",
                "Requests refused, by reason",
                &["reason"],
            ),
            queue_limit: r.gauge_vec(
                "inferd_queue_limit",
                "Instances the model version's queue admits now: its drain rate times its target wait \
                 (at least one batch); -1 while unmeasured or with INFERD_ADMISSION=static",
                MV,
            ),
            queue_instances: r.gauge_vec(
                "inferd_queue_instances",
                "Instances waiting in the model version's queue",
                MV,
            ),
            queue_target: r.float_gauge_vec(
                "inferd_queue_target_seconds",
                "The longest a request may expect to wait in the model version's queue",
                MV,
            ),
            drain_rate: r.float_gauge_vec(
                "inferd_model_drain_rate",
                "Instances per second the model version completes while its queue is never empty",
                MV,
            ),
            unloaded_latency: r.float_gauge_vec(
                "inferd_model_unloaded_latency_seconds",
                "Shortest batch service time of the model version over the last 5-10 s",
                MV,
            ),
            model_info: r.gauge_vec(
                "inferd_model_info",
                "Loaded models (value 1), with task and graph hash",
                &["model", "version", "task", "sha256"],
            ),
            ready: r.gauge("inferd_ready", "1 when every model is loaded and warmed up"),
            model_instances: r.counter_vec(
                "inferd_model_instances_total",
                "Instances computed by the model (cache hits excluded)",
                MV,
            ),
            batch_size: r.histogram_vec(
                "inferd_batch_size",
                "Instances per backend call (merged batch)",
                MV,
                sizes,
            ),
            batches: r.counter_vec(
                "inferd_batches_total",
                "Backend calls (batches); its rate is batches per second",
                MV,
            ),
            batches_cancelled: r.counter_vec(
                "inferd_batches_cancelled_total",
                "Backend calls stopped because every request in the batch had passed its deadline or gone",
                MV,
            ),
            cache_requests: r.counter_vec(
                "inferd_cache_requests_total",
                "Cache lookups per instance, by result",
                &["result"],
            ),
            cache_errors: r.counter_vec(
                "inferd_cache_errors_total",
                "Cache calls that failed open, by operation and kind",
                &["op", "kind"],
            ),
            cache_coalesced: r.counter(
                "inferd_cache_coalesced_total",
                "Instances served from another request's in-flight computation",
            ),
            cache_latency: r.histogram_vec(
                "inferd_cache_latency_seconds",
                "Time of one cache call (a whole request's keys)",
                &["op", "backend"],
                lat,
            ),
            cache_breaker_open: r.gauge(
                "inferd_cache_breaker_open",
                "1 while the Redis circuit breaker is open",
            ),
            model_state: r.gauge_vec(
                "inferd_model_state",
                "1 on a model version's current state (READY, LOADING or UNAVAILABLE), 0 on the others",
                &["model", "version", "state"],
            ),
            model_loads: r.counter_vec(
                "inferd_model_loads_total",
                "Model version loads, by result (ok, failed, or unsupported: a format this build cannot run)",
                &["model", "version", "result"],
            ),
            model_gate_failures: r.counter_vec(
                "inferd_model_gate_failures_total",
                "Versions refused, by the stage that refused them (unsupported, verify, warmup, golden)",
                &["model", "version", "stage"],
            ),
            model_swap_duration: r.histogram_vec(
                "inferd_model_swap_seconds",
                "From a load or unload call (or poll) to the new versions serving",
                &["model"],
                &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
            ),
            model_unloads: r.counter_vec(
                "inferd_model_unloads_total",
                "Model versions taken out of service after start-up",
                &["model"],
            ),
            model_polls: r.counter(
                "inferd_model_polls_total",
                "Passes of the models directory poller (INFERD_MODEL_POLL_SECS) completed",
            ),
        }
    }
}

/// The core's metrics in a registry of their own (tests, benchmarks).
impl Default for Metrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}

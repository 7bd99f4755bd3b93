//! Prometheus metrics, all named `inferd_*` in base units (seconds, bytes), plus
//! the process collector's `process_*` (resident memory, descriptors, CPU).
//!
//! One `Metrics` value per server holds its own registry, so several servers in
//! one process (the integration tests) do not share counters.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// 50 us to 10 s: ONNX calls on these models take tens of microseconds; queueing
/// under overload takes seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub queue_wait: HistogramVec,
    pub inference_duration: HistogramVec,
    pub instances: HistogramVec,
    pub in_flight: IntGauge,
    pub requests_in_flight: IntGauge,
    pub queue_depth: IntGauge,
    pub rejections: IntCounterVec,
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
    pub predlog_queue: IntGauge,
    pub predlog_buffered: IntGauge,
    pub predlog_written: IntCounterVec,
    pub predlog_retries: IntCounter,
    pub predlog_spilled: IntCounter,
    pub predlog_replayed: IntCounter,
    pub predlog_dropped: IntCounterVec,
    pub predlog_write_duration: HistogramVec,
    pub model_state: IntGaugeVec,
    pub model_loads: IntCounterVec,
    pub model_gate_failures: IntCounterVec,
    pub model_swap_duration: HistogramVec,
    pub model_unloads: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_max: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_closed: IntCounterVec,
    pub accept_errors: IntCounter,
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static histogram definition is valid")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let lat = || LATENCY_BUCKETS.to_vec();
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "inferd_requests_total",
                    "Prediction requests by model, version, HTTP status (for gRPC, the HTTP status its code stands for) and protocol (http, grpc)",
                ),
                &["model", "version", "status", "protocol"],
            )
            .expect("valid"),
            request_duration: histogram(
                "inferd_request_duration_seconds",
                "Time from request arrival to response, prediction routes",
                &["model", "version"],
                lat(),
            ),
            queue_wait: histogram(
                "inferd_queue_wait_seconds",
                "Time a request's instances waited in the batch queue (batch queue delay)",
                &["model", "version"],
                lat(),
            ),
            inference_duration: histogram(
                "inferd_inference_duration_seconds",
                "Time of one ONNX Runtime call (one batch)",
                &["model", "version"],
                lat(),
            ),
            instances: histogram(
                "inferd_request_instances",
                "Instances per accepted prediction request",
                &["model"],
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            in_flight: IntGauge::new("inferd_inferences_in_flight", "Inferences running now")
                .expect("valid"),
            requests_in_flight: IntGauge::new(
                "inferd_requests_in_flight",
                "Prediction requests inside the server now (queued, computing or answering): \
                 the per-pod signal for autoscaling on load rather than CPU",
            )
            .expect("valid"),
            queue_depth: IntGauge::new(
                "inferd_queue_depth",
                "Requests waiting for an inference slot",
            )
            .expect("valid"),
            rejections: IntCounterVec::new(
                Opts::new("inferd_rejections_total", "Requests refused, by reason"),
                &["reason"],
            )
            .expect("valid"),
            model_info: IntGaugeVec::new(
                Opts::new(
                    "inferd_model_info",
                    "Loaded models (value 1), with task and graph hash",
                ),
                &["model", "version", "task", "sha256"],
            )
            .expect("valid"),
            ready: IntGauge::new("inferd_ready", "1 when every model is loaded and warmed up")
                .expect("valid"),
            model_instances: IntCounterVec::new(
                Opts::new(
                    "inferd_model_instances_total",
                    "Instances computed by the model (cache hits excluded)",
                ),
                &["model", "version"],
            )
            .expect("valid"),
            batch_size: histogram(
                "inferd_batch_size",
                "Instances per backend call (merged batch)",
                &["model", "version"],
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            ),
            batches: IntCounterVec::new(
                Opts::new(
                    "inferd_batches_total",
                    "Backend calls (batches); its rate is batches per second",
                ),
                &["model", "version"],
            )
            .expect("valid"),
            batches_cancelled: IntCounterVec::new(
                Opts::new(
                    "inferd_batches_cancelled_total",
                    "Backend calls stopped because every request in the batch had passed its deadline or gone",
                ),
                &["model", "version"],
            )
            .expect("valid"),
            cache_requests: IntCounterVec::new(
                Opts::new(
                    "inferd_cache_requests_total",
                    "Cache lookups per instance, by result",
                ),
                &["result"],
            )
            .expect("valid"),
            cache_errors: IntCounterVec::new(
                Opts::new(
                    "inferd_cache_errors_total",
                    "Cache calls that failed open, by operation and kind",
                ),
                &["op", "kind"],
            )
            .expect("valid"),
            cache_coalesced: IntCounter::new(
                "inferd_cache_coalesced_total",
                "Instances served from another request's in-flight computation",
            )
            .expect("valid"),
            cache_latency: histogram(
                "inferd_cache_latency_seconds",
                "Time of one cache call (a whole request's keys)",
                &["op", "backend"],
                lat(),
            ),
            cache_breaker_open: IntGauge::new(
                "inferd_cache_breaker_open",
                "1 while the Redis circuit breaker is open",
            )
            .expect("valid"),
            predlog_queue: IntGauge::new(
                "inferd_predlog_queue_depth",
                "Log records waiting in the channel",
            )
            .expect("valid"),
            predlog_buffered: IntGauge::new(
                "inferd_predlog_buffered_records",
                "Log records held by the writer (not yet written)",
            )
            .expect("valid"),
            predlog_written: IntCounterVec::new(
                Opts::new(
                    "inferd_predlog_written_total",
                    "Log records written, by sink",
                ),
                &["sink"],
            )
            .expect("valid"),
            predlog_retries: IntCounter::new(
                "inferd_predlog_retries_total",
                "Failed log writes that will be retried",
            )
            .expect("valid"),
            predlog_spilled: IntCounter::new(
                "inferd_predlog_spilled_total",
                "Log records spilled to the local file",
            )
            .expect("valid"),
            predlog_replayed: IntCounter::new(
                "inferd_predlog_replayed_total",
                "Spilled log records written to the database later",
            )
            .expect("valid"),
            predlog_dropped: IntCounterVec::new(
                Opts::new(
                    "inferd_predlog_dropped_total",
                    "Log records lost, by reason",
                ),
                &["reason"],
            )
            .expect("valid"),
            predlog_write_duration: histogram(
                "inferd_predlog_write_duration_seconds",
                "Time of one batch write",
                &["sink"],
                lat(),
            ),
            model_state: IntGaugeVec::new(
                Opts::new(
                    "inferd_model_state",
                    "1 on a model version's current state (READY, LOADING or UNAVAILABLE), 0 on the others",
                ),
                &["model", "version", "state"],
            )
            .expect("valid"),
            model_loads: IntCounterVec::new(
                Opts::new(
                    "inferd_model_loads_total",
                    "Model version loads, by result (ok, failed, or unsupported: a format this build cannot run)",
                ),
                &["model", "version", "result"],
            )
            .expect("valid"),
            model_gate_failures: IntCounterVec::new(
                Opts::new(
                    "inferd_model_gate_failures_total",
                    "Versions refused, by the stage that refused them (unsupported, verify, warmup, golden)",
                ),
                &["model", "version", "stage"],
            )
            .expect("valid"),
            model_swap_duration: histogram(
                "inferd_model_swap_seconds",
                "From a load or unload call (or poll) to the new versions serving",
                &["model"],
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
            ),
            model_unloads: IntCounterVec::new(
                Opts::new(
                    "inferd_model_unloads_total",
                    "Model versions taken out of service after start-up",
                ),
                &["model"],
            )
            .expect("valid"),
            registry,
            connections_open: IntGauge::new(
                "inferd_connections_open",
                "Client connections open now",
            )
            .expect("valid"),
            connections_max: IntGauge::new(
                "inferd_connections_max",
                "The cap on open client connections (INFERD_MAX_CONNECTIONS, after fitting the descriptor limit)",
            )
            .expect("valid"),
            connections_accepted: IntCounter::new(
                "inferd_connections_accepted_total",
                "Client connections accepted",
            )
            .expect("valid"),
            connections_closed: IntCounterVec::new(
                Opts::new(
                    "inferd_connections_closed_total",
                    "Client connections closed, by reason: client, error, idle_timeout, header_timeout, body_timeout, shutdown",
                ),
                &["reason"],
            )
            .expect("valid"),
            accept_errors: IntCounter::new(
                "inferd_accept_errors_total",
                "Failed accept calls (out of descriptors, for one)",
            )
            .expect("valid"),
        };
        let r = &m.registry;
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.request_duration.clone()),
            Box::new(m.queue_wait.clone()),
            Box::new(m.inference_duration.clone()),
            Box::new(m.instances.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.requests_in_flight.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.rejections.clone()),
            Box::new(m.model_info.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.model_instances.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.batches.clone()),
            Box::new(m.batches_cancelled.clone()),
            Box::new(m.cache_requests.clone()),
            Box::new(m.cache_errors.clone()),
            Box::new(m.cache_coalesced.clone()),
            Box::new(m.cache_latency.clone()),
            Box::new(m.cache_breaker_open.clone()),
            Box::new(m.predlog_queue.clone()),
            Box::new(m.predlog_buffered.clone()),
            Box::new(m.predlog_written.clone()),
            Box::new(m.predlog_retries.clone()),
            Box::new(m.predlog_spilled.clone()),
            Box::new(m.predlog_replayed.clone()),
            Box::new(m.predlog_dropped.clone()),
            Box::new(m.predlog_write_duration.clone()),
            Box::new(m.model_state.clone()),
            Box::new(m.model_loads.clone()),
            Box::new(m.model_gate_failures.clone()),
            Box::new(m.model_swap_duration.clone()),
            Box::new(m.model_unloads.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_max.clone()),
            Box::new(m.connections_accepted.clone()),
            Box::new(m.connections_closed.clone()),
            Box::new(m.accept_errors.clone()),
            // The span exporter is process-wide: every server shows its counts.
            Box::new(crate::telemetry::trace::SPANS_EXPORTED.clone()),
            Box::new(crate::telemetry::trace::SPANS_DROPPED.clone()),
            // process_resident_memory_bytes, process_open_fds, process_max_fds,
            // process_cpu_seconds_total...: memory growth and descriptor leaks
            // show on the dashboard and in alerts.
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            r.register(c).expect("metric names are unique");
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

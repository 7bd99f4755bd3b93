//! The prediction log's metrics.

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

use inferd_telemetry::metrics::{Registrar, LATENCY_BUCKETS};

/// Every metric the prediction log records.
#[allow(missing_docs)] // Each field's help text is its documentation.
pub struct Metrics {
    pub predlog_queue: IntGauge,
    pub predlog_buffered: IntGauge,
    pub predlog_written: IntCounterVec,
    pub predlog_retries: IntCounter,
    pub predlog_spilled: IntCounter,
    pub predlog_replayed: IntCounter,
    pub predlog_dropped: IntCounterVec,
    pub predlog_write_duration: HistogramVec,
}

impl Metrics {
    /// The log's metrics, registered into `registry`.
    pub fn new(registry: &Registry) -> Self {
        let r = Registrar(registry);
        Metrics {
            predlog_queue: r.gauge(
                "inferd_predlog_queue_depth",
                "Log records waiting in the channel",
            ),
            predlog_buffered: r.gauge(
                "inferd_predlog_buffered_records",
                "Log records held by the writer (not yet written)",
            ),
            predlog_written: r.counter_vec(
                "inferd_predlog_written_total",
                "Log records written, by sink",
                &["sink"],
            ),
            predlog_retries: r.counter(
                "inferd_predlog_retries_total",
                "Failed log writes that will be retried",
            ),
            predlog_spilled: r.counter(
                "inferd_predlog_spilled_total",
                "Log records spilled to the local file",
            ),
            predlog_replayed: r.counter(
                "inferd_predlog_replayed_total",
                "Spilled log records written to the database later",
            ),
            predlog_dropped: r.counter_vec(
                "inferd_predlog_dropped_total",
                "Log records lost, by reason",
                &["reason"],
            ),
            predlog_write_duration: r.histogram_vec(
                "inferd_predlog_write_duration_seconds",
                "Time of one batch write",
                &["sink"],
                LATENCY_BUCKETS,
            ),
        }
    }
}

/// The log's metrics in a registry of their own (tests).
impl Default for Metrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}

//! Registering metrics. Each layer (the core, the front doors, the prediction
//! log, the accept loop) defines its own metrics and registers them into the
//! one `prometheus::Registry` the server renders at `/metrics`, so no layer
//! needs to know the others' metrics. A `Registry` per server, not the global
//! default, keeps several servers in one process (the integration tests) from
//! sharing counters.
//!
//! Definitions are static: a name that is invalid or registered twice is a
//! programming error caught by the first test that builds the layer, so these
//! helpers panic on it instead of returning an error nobody could handle.

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// 50 us to 10 s: ONNX calls on the shipped models take tens of microseconds;
/// queueing under overload takes seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Builds metrics and registers each into one registry as it is made.
pub struct Registrar<'a>(pub &'a Registry);

impl Registrar<'_> {
    fn register<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are valid and unique");
        c
    }

    /// A counter.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid counter"))
    }

    /// A counter with labels.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid gauge"))
    }

    /// A gauge with labels.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
    }

    /// A gauge of fractional values (rates, seconds, ratios).
    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.register(Gauge::new(name, help).expect("valid gauge"))
    }

    /// A gauge of fractional values with labels.
    pub fn float_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.register(GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
    }

    /// A histogram.
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts).expect("valid histogram"))
    }

    /// A histogram with labels.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("valid histogram"))
    }

    /// A collector made elsewhere (process-wide counters, the process
    /// collector).
    pub fn collector(&self, c: Box<dyn Collector>) {
        self.0
            .register(c)
            .expect("metric names are valid and unique");
    }
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    use prometheus::{Encoder, TextEncoder};
    let mut buf = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail for well-formed metric families.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

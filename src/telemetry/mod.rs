//! What the server tells operators about itself besides metrics: logs
//! (`init`: `tracing` with a text or JSON formatter, filtered by `RUST_LOG`,
//! default `info`) and OpenTelemetry traces (`trace`: each request's spans,
//! recorded by the core and the front doors; `otlp`: their export, configured
//! by the standard `OTEL_*` variables). Kept apart from `main` so tests and
//! embedders can skip it.

pub mod otlp;
pub mod trace;

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` so that a second call (tests) is harmless.
    let _ = match format {
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init(),
    };
}

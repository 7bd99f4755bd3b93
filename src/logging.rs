//! The process's logs: `tracing` with a text or JSON formatter, filtered by
//! `RUST_LOG` (default `info`). Kept apart from `main` so that tests and
//! embedders can install their own subscriber instead.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::LogFormat;

/// Installs the process's log subscriber; a second call is harmless (tests).
/// Text lines are coloured only on a terminal: written to a file or a pipe,
/// escape sequences would travel into log shippers and `grep`.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::stdout().is_terminal();
    let _ = match format {
        LogFormat::Text => registry.with(fmt::layer().with_ansi(ansi)).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init(),
    };
}

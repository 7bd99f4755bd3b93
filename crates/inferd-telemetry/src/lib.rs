//! What every layer of inferd shares to tell operators about itself, with no
//! wire protocol in it, so that the core can depend on it:
//! - `metrics`: registering Prometheus metrics into the server's one registry
//!   (each layer owns its metrics; the server renders them together);
//! - `trace`: each request's OpenTelemetry spans, recorded by the core and the
//!   front doors (their export is `inferd-otlp`'s business);
//! - `ratelimit`: warnings that repeat, logged once per interval with a count.

#![warn(missing_docs)]
// Request paths return typed errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod metrics;
pub mod ratelimit;
pub mod trace;

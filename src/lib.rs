//! The inferd server: the binary's configuration (`config`), its accept loop
//! (`listen`: connection cap and per-connection deadlines) and its process
//! lifecycle (`server`: build the state, load the models off the runtime,
//! serve both front doors, drain). Everything else lives in the crates below:
//!
//! - `inferd-core`: models, tasks, admission, batching, the cache's port, the
//!   pipeline, lifecycle and model control, knowing no wire protocol;
//! - `inferd-onnx`, `inferd-torch`: the runtimes behind the core's `Backend`;
//! - `inferd-cache-redis`, `inferd-predlog`, `inferd-otlp`,
//!   `inferd-telemetry`: the adapters (shared cache, prediction log, trace
//!   export) and what every layer shares (metrics, spans, rate-limited logs);
//! - `inferd-api`: the front doors (JSON API, KServe v2 over REST and gRPC,
//!   OpenAPI), mapping core errors to their statuses in one place.
//!
//! This library exists for `main` and the integration tests: `run` takes a
//! listener and a shutdown future, so a test serves on port 0 and stops the
//! server when it likes.

#![warn(missing_docs)]
// Request paths return typed errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod config;
pub mod listen;
pub mod logging;
pub mod server;

pub use server::run;

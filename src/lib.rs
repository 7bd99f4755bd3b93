//! inferd: a model-inference server for ONNX models.
//!
//! Layers, each depending only on those below it:
//! - `server`: the process lifecycle (state, model loading, serving, shutdown),
//!   over `listen`, the accept loop (connection cap and timeouts);
//! - `api`: the HTTP front doors (inferd's JSON API and KServe v2), which
//!   translate wire formats and map core errors to statuses in one place;
//! - `core`: models, backends, tasks, admission, batching, single-flight, cache
//!   and the pipeline, knowing nothing of HTTP;
//! - leaves used by all: `config`, `metrics`, `predlog` (the prediction log,
//!   written off the request path), `ratelimit` (repeated warnings) and
//!   `telemetry`.

pub mod api;
pub mod config;
pub mod core;
pub mod listen;
pub mod metrics;
pub mod predlog;
pub mod ratelimit;
pub mod server;
pub mod telemetry;

pub use server::run;

//! inferd: a model-inference server for ONNX models.
//!
//! Layers, outermost first: `api` (HTTP routes and the error type), `admission`
//! (bounded concurrency and queue), `task` (JSON instances to tensors and back),
//! `runtime` (ONNX Runtime behind the `Backend` trait), `repository` (finding and
//! verifying models), with `config`, `metrics`, `telemetry` and `server`
//! (lifecycle) beside them. `pipeline` is the path every front door shares:
//! `cache` (per-instance results), `coalesce` (single-flight), admission and the
//! backend; `predlog` writes one record per prediction off the request path.

pub mod admission;
pub mod api;
pub mod batcher;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod metrics;
pub mod pipeline;
pub mod predlog;
pub mod repository;
pub mod runtime;
pub mod server;
pub mod task;
pub mod telemetry;

pub use server::run;

//! inferd's serving core: everything between a decoded request and its
//! predictions, with no knowledge of any wire protocol. Cargo keeps it so:
//! this crate depends on no web framework, RPC stack, command-line parser or
//! database client (`scripts/check-layers.sh` fails the build if one comes
//! back). Front doors (`inferd-api`) translate their formats to calls here and
//! map `CoreError` to their own statuses; backends (`inferd-onnx`,
//! `inferd-torch`) implement `backend::Backend`; the shared cache
//! (`inferd-cache-redis`) implements `cache::RemoteStore`.
//!
//! What each part owns:
//! - `manifest`, `repository`: model versions on disk, verified against their
//!   graphs, loaded through a `backend::Loader`; a golden gate each version
//!   passes by reproducing its held-out outputs.
//! - `backend`: the `Backend` trait and the options every runtime takes.
//! - `task`, `preprocess`: instances to tensors and output rows to
//!   predictions, per task, with the preprocessing training used.
//! - `admission`, `slots`: the inference slots (threads of their own) and the
//!   bounded wait queue; `governor`: each model queue's limit by time, from
//!   its measured drain rate.
//! - `batcher`: merging concurrent requests into one backend call; `cancel`:
//!   stopping a call whose requests were all abandoned.
//! - `cache`: per-instance results in process, with an optional shared store
//!   behind them.
//! - `pipeline`: the path every prediction takes through the parts above,
//!   with single-flight for identical misses.
//! - `deployment`, `lifecycle`: which models serve now, and whether the
//!   server admits work at all.
//! - `policy`, `control`: which versions serve and how unnamed requests are
//!   routed; loading, gating, swapping and unloading versions while serving.
//! - `memory`: giving a retired version's memory back to the system.
//! - `quality`: labels fed back and scored per version and arm, shadow
//!   versions compared with the primary, drift against training data.
//! - `metrics`: what all of the above count.

#![warn(missing_docs)]
// Request paths return typed errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admission;
pub mod backend;
pub mod batcher;
pub mod cache;
pub mod cancel;
mod coalesce;
pub mod control;
pub mod deployment;
mod error;
mod golden;
pub mod governor;
pub mod instances;
pub mod lifecycle;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod preprocess;
pub mod quality;
pub mod repository;
pub mod slots;
pub mod task;

pub use error::CoreError;
pub use metrics::Metrics;

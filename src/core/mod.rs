//! The serving core: everything between a decoded request and its predictions,
//! with no knowledge of any wire protocol. Front doors (`crate::api` today, gRPC
//! later) translate their formats to calls here and map `CoreError` to their own
//! statuses; nothing in this tree imports a web framework (a check in `make test`
//! keeps it so).
//!
//! What each part owns:
//! - `manifest`, `repository`: model versions on disk, verified against their
//!   graphs, loaded through a `backend::Loader`; `golden`: the gate a version
//!   passes by reproducing its held-out golden outputs.
//! - `backend`: the `Backend` trait, ONNX Runtime behind it, and a scripted test
//!   backend.
//! - `task`: instances to tensors and output rows to predictions, per task.
//! - `admission`, `slots`: the inference slots (threads of their own) and the
//!   bounded wait queue.
//! - `batcher`: merging concurrent requests into one backend call; `cancel`:
//!   stopping a call whose requests were all abandoned.
//! - `coalesce`: single-flight for identical uncached instances.
//! - `cache`: per-instance results, in process or in Redis.
//! - `pipeline`: the path every prediction takes through the parts above.
//! - `deployment`, `lifecycle`: which models serve now, and whether the server
//!   admits work at all.
//! - `policy`, `control`: which versions serve and how unnamed requests are
//!   routed; loading, gating, swapping and unloading versions while serving.
//! - `memory`: giving a retired version's memory back to the system.

pub mod admission;
pub mod backend;
pub mod batcher;
pub mod cache;
pub mod cancel;
pub mod coalesce;
pub mod control;
pub mod deployment;
pub mod error;
pub mod golden;
pub mod lifecycle;
pub mod manifest;
pub mod memory;
pub mod pipeline;
pub mod policy;
pub mod preprocess;
pub mod repository;
pub mod slots;
pub mod task;

pub use error::CoreError;

//! The model runtimes and the threads that run them.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use inferd_core::backend::BackendOptions;
use serde::Serialize;

use super::check;

/// `INFERD_DEVICE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The machine's cores.
    Cpu,
    /// A CUDA device.
    Cuda,
}

impl From<Device> for inferd_core::backend::Device {
    fn from(d: Device) -> Self {
        match d {
            Device::Cpu => inferd_core::backend::Device::Cpu,
            Device::Cuda => inferd_core::backend::Device::Cuda,
        }
    }
}

/// `Runtimes and threads` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Runtimes and threads")]
pub struct RuntimeArgs {
    /// Intra-op threads per inference, for both runtimes: ONNX Runtime's per
    /// session, libtorch's per slot thread. Concurrency comes from running
    /// several inferences at once, so 1 is right unless requests are few and
    /// large. `--ort-threads` is the older name.
    #[arg(
        long,
        env = "INFERD_INTRA_OP_THREADS",
        alias = "ort-threads",
        default_value_t = 1
    )]
    pub intra_op_threads: usize,

    /// An ONNX Runtime session that ran a batch of more rows than this hands
    /// its arena's growth back once its model has been idle for 2 s; a busy
    /// model keeps its arena warm. 0: never shrink.
    #[arg(long, env = "INFERD_ARENA_SHRINK_ROWS", default_value_t = 8)]
    pub arena_shrink_rows: usize,

    /// Nice value (0-19) added to the async runtime's workers, not to the
    /// inference threads: under overload the model keeps its CPU instead of
    /// sharing it with the flood of refusals. For a pod with its own CPUs; on
    /// a shared machine a proxy at normal priority wins. `serve` only.
    #[arg(long, env = "INFERD_REACTOR_NICE", default_value_t = 0,
        value_parser = clap::value_parser!(u8).range(0..=19))]
    pub reactor_nice: u8,

    /// Execution device, for both runtimes. `cuda` needs a build with
    /// `--features cuda` and the `onnxruntime-gpu` library for ONNX versions,
    /// and a CUDA device libtorch can see for TorchScript versions (`torch`
    /// builds); start-up fails, saying which, where either is missing.
    #[arg(long, env = "INFERD_DEVICE", value_enum, default_value_t = Device::Cpu)]
    pub device: Device,

    /// Path of `libonnxruntime.so`. Default: the project-local install made by `make run`.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
}

impl RuntimeArgs {
    pub(super) fn validate(&self) -> Result<(), String> {
        check("intra-op-threads", self.intra_op_threads as u64, 1, 1024)?;
        check(
            "arena-shrink-rows",
            self.arena_shrink_rows as u64,
            0,
            1 << 20,
        )
    }

    /// What every backend is built with: `pool_size` sessions per model, one
    /// per inference slot.
    pub fn backend_options(&self, pool_size: usize) -> BackendOptions {
        BackendOptions {
            intra_threads: self.intra_op_threads,
            device: self.device.into(),
            pool_size,
            arena_shrink_rows: self.arena_shrink_rows,
        }
    }
}

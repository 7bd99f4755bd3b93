//! Model execution behind a narrow trait, `Backend`: a batch of decoded instances
//! in, a matrix of floats out. The batcher and the pipeline only ever see this
//! trait, so they can be tested with the scripted backend in `testing` (the
//! `test-util` feature), and each runtime is a crate of its own beside the core
//! (`inferd-onnx`, `inferd-torch`): changing one rebuilds only it and the server.
//!
//! `Backend::infer` blocks: callers run it on a slot thread (`core::slots`),
//! never on the async reactor. A `Loader` builds a backend for a model version's graph file;
//! the repository takes one, so it never names a runtime itself. `Runtimes` is
//! the loader a server uses: one loader per graph format this build can run,
//! and a clear refusal (`LoadFailure::Unsupported`) for the others.

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::manifest::{Format, TensorSpec};

/// A batch in the layout the graph takes.
#[derive(Debug, Clone)]
pub enum InputBatch {
    /// One string per row: a `[B]` string tensor.
    Text(Vec<String>),
    /// Row-major `[batch, steps, features]` floats.
    Windows {
        /// `batch * steps * features` values.
        data: Vec<f32>,
        /// Windows in the batch.
        batch: usize,
        /// Time steps per window.
        steps: usize,
        /// Values per time step.
        features: usize,
    },
}

impl InputBatch {
    /// Instances in the batch.
    pub fn len(&self) -> usize {
        match self {
            InputBatch::Text(t) => t.len(),
            InputBatch::Windows { batch, .. } => *batch,
        }
    }

    /// Whether the batch holds no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Instance `i`'s values, for a batch of windows.
    pub fn window(&self, i: usize) -> Option<&[f32]> {
        match self {
            InputBatch::Text(_) => None,
            InputBatch::Windows {
                data,
                steps,
                features,
                ..
            } => {
                let n = steps * features;
                data.get(i * n..(i + 1) * n)
            }
        }
    }

    /// Instance `i` in the request's shape, a string or rows of numbers,
    /// for the prediction log to serialize without building a tree.
    pub fn instance_json(&self, i: usize) -> InstanceJson<'_> {
        match self {
            InputBatch::Text(t) => InstanceJson::Text(t.get(i).map_or("", String::as_str)),
            InputBatch::Windows { features, .. } => InstanceJson::Window {
                values: self.window(i).unwrap_or_default(),
                features: (*features).max(1),
            },
        }
    }

    /// The instances at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> InputBatch {
        match self {
            InputBatch::Text(t) => InputBatch::Text(idx.iter().map(|&i| t[i].clone()).collect()),
            InputBatch::Windows {
                steps, features, ..
            } => {
                let mut out = Vec::with_capacity(idx.len() * steps * features);
                for &i in idx {
                    out.extend_from_slice(self.window(i).unwrap_or_default());
                }
                InputBatch::Windows {
                    data: out,
                    batch: idx.len(),
                    steps: *steps,
                    features: *features,
                }
            }
        }
    }
}

/// A `[rows, cols]` float matrix, row-major: one row per instance.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputBatch {
    /// Instances.
    pub rows: usize,
    /// Values per instance.
    pub cols: usize,
    /// `rows * cols` values.
    pub data: Vec<f32>,
}

impl OutputBatch {
    /// Instance `i`'s values.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Why a backend could not run a batch. `Clone` (strings, not the runtime's own
/// error values) because one failed batch answers every request merged into it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Never sent on: some kernels (ONNX Runtime's LSTM) abort the process on it.
    #[error("empty batch")]
    EmptyBatch,
    /// The runtime refused or failed the call.
    #[error("{backend}: {message}")]
    Runtime {
        /// Which runtime.
        backend: &'static str,
        /// What it said.
        message: String,
    },
    /// The graph answered with something the task cannot read.
    #[error("unexpected output: {0}")]
    Output(String),
    #[error("session pool closed")]
    /// The model's sessions are gone (it was unloaded under the call).
    PoolClosed,
}

/// Element types the manifests can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// UTF-8 strings.
    String,
    /// 32-bit floats.
    Float32,
    /// 64-bit integers.
    Int64,
    /// Anything else (never a valid task input).
    Other,
}

impl DType {
    /// The manifests' spelling.
    pub fn name(self) -> &'static str {
        match self {
            DType::String => "string",
            DType::Float32 => "float32",
            DType::Int64 => "int64",
            DType::Other => "other",
        }
    }
}

/// An input or output as the graph declares it (`-1` for dynamic dimensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The graph's name for it.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<i64>,
}

/// A loaded model graph that runs batches. Implementations: ONNX Runtime
/// (`onnx`), and a scripted one for tests (`testing`).
pub trait Backend: Send + Sync + 'static {
    /// Runs one batch. Blocking; never call it on an async worker thread.
    fn infer(&self, input: &InputBatch) -> Result<OutputBatch, BackendError>;
    /// `infer`, stoppable through `control` from another thread where the
    /// runtime allows it (ONNX Runtime does, between graph nodes). A stopped
    /// run returns an error. The default cannot be stopped: libtorch has no
    /// way to interrupt a module's forward call.
    fn infer_with(
        &self,
        input: &InputBatch,
        control: &super::cancel::RunControl,
    ) -> Result<OutputBatch, BackendError> {
        let _ = control;
        self.infer(input)
    }
    /// The graph's inputs.
    fn inputs(&self) -> &[TensorInfo];
    /// The graph's outputs.
    fn outputs(&self) -> &[TensorInfo];
}

/// Where a backend runs its graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The machine's cores.
    Cpu,
    /// A CUDA device (the first one the runtime sees).
    Cuda,
}

impl Device {
    /// The name the configuration and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// How many sessions, threads and which device a backend uses: one set of
/// options whatever the runtime.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Where the graphs run.
    pub device: Device,
    /// Sessions per model: one per inference slot, so slots never wait on each other.
    pub pool_size: usize,
    /// A run of more rows than this hands the memory it grew back at its end
    /// (ONNX Runtime's arena shrinkage); 0: never. See `onnx::Pooled`.
    pub arena_shrink_rows: usize,
}

/// What a loader gets: the graph file and what the manifest says about it.
/// ONNX Runtime reads names, dtypes and shapes from the graph itself;
/// TorchScript does not declare them, so libtorch's loader probes the module
/// with the declared inputs instead.
#[derive(Debug, Clone, Copy)]
pub struct GraphSpec<'a> {
    /// Which runtime the file is for.
    pub format: Format,
    /// The graph file.
    pub path: &'a Path,
    /// The manifest's declared inputs.
    pub inputs: &'a [TensorSpec],
    /// The manifest's declared outputs.
    pub outputs: &'a [TensorSpec],
    /// The output whose rows the task reads.
    pub output: &'a str,
}

/// Why a loader built no backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadFailure {
    /// This build cannot run the format at all: the version is reported
    /// unavailable and the rest of the repository serves.
    #[error("{0}")]
    Unsupported(String),
    /// The runtime refused the file (corrupt, wrong format, failing probe).
    #[error("{0}")]
    Failed(String),
}

/// Builds the backend for one model version from its graph file. The
/// repository adds the file it was loading to the message.
pub trait Loader: Send + Sync {
    /// A backend for `graph`, or why there is none.
    fn load(&self, graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure>;
}

/// The loaders a server has, by graph format.
#[derive(Default)]
pub struct Runtimes {
    by_format: HashMap<Format, Box<dyn Loader>>,
}

impl Runtimes {
    /// No loaders yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the loader for `format`.
    pub fn with(mut self, format: Format, loader: impl Loader + 'static) -> Self {
        self.by_format.insert(format, Box::new(loader));
        self
    }

    /// The formats this server can run, for the start-up log.
    pub fn formats(&self) -> Vec<&'static str> {
        let mut f: Vec<_> = self.by_format.keys().map(|f| f.name()).collect();
        f.sort_unstable();
        f
    }
}

impl Loader for Runtimes {
    fn load(&self, graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure> {
        match self.by_format.get(&graph.format) {
            Some(loader) => loader.load(graph),
            None => Err(LoadFailure::Unsupported(match graph.format {
                Format::Torchscript => {
                    "TorchScript graphs need libtorch: this server was built without the \
                     `torch` feature (cargo build --features torch)"
                        .into()
                }
                Format::Onnx => "this server has no ONNX Runtime loader".into(),
            })),
        }
    }
}

/// One instance of a batch as JSON (`InputBatch::instance_json`): numbers
/// are printed as the f64 of each f32, as `serde_json::Value` printed them.
pub enum InstanceJson<'a> {
    /// A text.
    Text(&'a str),
    /// A window's values, `features` to a row.
    Window {
        /// Row after row.
        values: &'a [f32],
        /// Numbers per row.
        features: usize,
    },
}

impl serde::Serialize for InstanceJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            InstanceJson::Text(t) => s.serialize_str(t),
            InstanceJson::Window { values, features } => {
                let mut rows = s.serialize_seq(Some(values.len() / features))?;
                for row in values.chunks(*features) {
                    rows.serialize_element(&Row(row))?;
                }
                rows.end()
            }
        }
    }
}

struct Row<'a>(&'a [f32]);

impl serde::Serialize for Row<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|x| f64::from(*x)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The log's instances read as they did when they were `Value` trees.
    #[test]
    fn instances_print_as_their_values_did() {
        let data = vec![0.1, 1.0, f32::NAN, -2.5e-8, 3.0e20, 7.0];
        let b = InputBatch::Windows {
            data: data.clone(),
            batch: 1,
            steps: 3,
            features: 2,
        };
        let tree = Value::Array(
            data.chunks(2)
                .map(|row| row.iter().map(|x| Value::from(*x as f64)).collect())
                .collect(),
        );
        let text = serde_json::to_string(&b.instance_json(0)).unwrap();
        assert_eq!(text, tree.to_string());
        assert!(
            text.starts_with("[[0.10000000149011612,1.0],[null,"),
            "{text}"
        );
        let t = InputBatch::Text(vec!["a \"quoted\"\nline é".into()]);
        assert_eq!(
            serde_json::to_string(&t.instance_json(0)).unwrap(),
            Value::String("a \"quoted\"\nline é".into()).to_string()
        );
    }
}

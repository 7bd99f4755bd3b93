//! Model execution behind a narrow trait, `Backend`: a batch of decoded instances
//! in, a matrix of floats out. ONNX Runtime is the one implementation today; a
//! libtorch backend would implement the same trait.
//!
//! `Backend::infer` blocks: callers run it on a blocking thread, never on the
//! async reactor. ONNX Runtime's `Session::run` needs `&mut Session`, so each
//! model owns a small pool of sessions, one per inference slot, and a call takes
//! one from the pool for its duration.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, TensorRef, ValueType};

use crate::config::Device;

/// A batch in the layout the graph takes.
#[derive(Debug, Clone)]
pub enum InputBatch {
    /// One string per row: a `[B]` string tensor.
    Text(Vec<String>),
    /// Row-major `[batch, steps, features]` floats.
    Windows {
        data: Vec<f32>,
        batch: usize,
        steps: usize,
        features: usize,
    },
}

impl InputBatch {
    pub fn len(&self) -> usize {
        match self {
            InputBatch::Text(t) => t.len(),
            InputBatch::Windows { batch, .. } => *batch,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The instances at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> InputBatch {
        match self {
            InputBatch::Text(t) => InputBatch::Text(idx.iter().map(|&i| t[i].clone()).collect()),
            InputBatch::Windows {
                data,
                steps,
                features,
                ..
            } => {
                let n = steps * features;
                let mut out = Vec::with_capacity(idx.len() * n);
                for &i in idx {
                    out.extend_from_slice(&data[i * n..(i + 1) * n]);
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
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl OutputBatch {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("empty batch")]
    EmptyBatch,
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("unexpected output: {0}")]
    Output(String),
    #[error("session pool closed")]
    PoolClosed,
}

/// Element types the manifests can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    String,
    Float32,
    Int64,
    Other,
}

impl DType {
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
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

pub trait Backend: Send + Sync + 'static {
    /// Runs one batch. Blocking; never call it on an async worker thread.
    fn infer(&self, input: &InputBatch) -> Result<OutputBatch, RuntimeError>;
    fn inputs(&self) -> &[TensorInfo];
    fn outputs(&self) -> &[TensorInfo];
}

static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Where to find `libonnxruntime.so`: the configured path, else the project-local
/// install. Relative paths are made absolute here, because `ort` would resolve them
/// against the executable's folder.
pub fn resolve_dylib(configured: Option<&Path>) -> Result<PathBuf, String> {
    let candidate = configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(crate::config::LOCAL_ORT_LIB));
    let abs = if candidate.is_absolute() {
        candidate
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(candidate)
    };
    if abs.is_file() {
        Ok(abs)
    } else {
        Err(format!(
            "ONNX Runtime library not found at {}: set ORT_DYLIB_PATH to libonnxruntime.so, \
             or run `make ort` (scripts/install-ort.sh installs it from the onnxruntime PyPI wheel)",
            abs.display()
        ))
    }
}

/// Loads ONNX Runtime once per process; later calls return the first outcome.
pub fn init(dylib: &Path) -> Result<(), String> {
    let r = ORT_ENV.get_or_init(|| {
        let builder =
            ort::init_from(dylib).map_err(|e| format!("loading {}: {e}", dylib.display()))?;
        builder
            .with_name("inferd")
            .build()
            .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))
    });
    r.as_ref().map(|_| ()).map_err(Clone::clone)
}

fn dtype_of(t: &TensorElementType) -> DType {
    match t {
        TensorElementType::String => DType::String,
        TensorElementType::Float32 => DType::Float32,
        TensorElementType::Int64 => DType::Int64,
        _ => DType::Other,
    }
}

fn tensor_info(o: &ort::value::Outlet) -> TensorInfo {
    match o.dtype() {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: o.name().to_string(),
            dtype: dtype_of(ty),
            shape: shape.to_vec(),
        },
        _ => TensorInfo {
            name: o.name().to_string(),
            dtype: DType::Other,
            shape: vec![],
        },
    }
}

pub struct SessionOptions {
    pub intra_threads: usize,
    pub device: Device,
    pub pool_size: usize,
}

/// Building sessions in a function that returns `ort::Result` keeps the builder's
/// non-`Send` error type from leaking into our errors.
fn build_session(
    env: &ort::environment::Environment,
    path: &Path,
    opts: &SessionOptions,
) -> ort::Result<Session> {
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(opts.intra_threads)?
        .with_inter_threads(1)?;
    if opts.device == Device::Cuda {
        #[cfg(feature = "cuda")]
        {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])?;
        }
    }
    builder.commit_from_file(path)
}

/// An ONNX Runtime model with one session per inference slot.
pub struct OrtBackend {
    take: Receiver<Session>,
    give: Sender<Session>,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// The output `infer` returns.
    output_name: String,
}

impl OrtBackend {
    pub fn load(path: &Path, opts: &SessionOptions, output_name: &str) -> Result<Self, String> {
        if opts.device == Device::Cuda && !cfg!(feature = "cuda") {
            return Err("--device cuda needs a build with `--features cuda`".into());
        }
        let env = match ORT_ENV.get() {
            Some(Ok(env)) => env,
            _ => return Err("ONNX Runtime is not initialised (call runtime::init first)".into()),
        };
        let (give, take) = crossbeam_channel::bounded(opts.pool_size.max(1));
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for i in 0..opts.pool_size.max(1) {
            let s = build_session(env, path, opts).map_err(|e| e.to_string())?;
            if i == 0 {
                inputs = s.inputs().iter().map(tensor_info).collect();
                outputs = s.outputs().iter().map(tensor_info).collect();
            }
            give.send(s)
                .map_err(|_| "session pool closed".to_string())?;
        }
        Ok(OrtBackend {
            take,
            give,
            inputs,
            outputs,
            output_name: output_name.to_string(),
        })
    }

    fn run(&self, session: &mut Session, input: &InputBatch) -> Result<OutputBatch, RuntimeError> {
        let name = self
            .inputs
            .first()
            .map(|i| i.name.as_str())
            .unwrap_or("input");
        let ort_err = |e: ort::Error| RuntimeError::Ort(e.to_string());
        let outputs = match input {
            InputBatch::Text(texts) => {
                let t = Tensor::from_string_array(([texts.len()], texts.as_slice()))
                    .map_err(ort_err)?;
                session.run(ort::inputs![name => t]).map_err(ort_err)?
            }
            InputBatch::Windows {
                data,
                batch,
                steps,
                features,
            } => {
                let t = TensorRef::from_array_view(([*batch, *steps, *features], data.as_slice()))
                    .map_err(ort_err)?;
                session.run(ort::inputs![name => t]).map_err(ort_err)?
            }
        };
        let value = outputs
            .get(&self.output_name)
            .ok_or_else(|| RuntimeError::Output(format!("no output named {}", self.output_name)))?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(ort_err)?;
        let rows = input.len();
        let cols = match shape.len() {
            1 => 1,
            2 => usize::try_from(shape[1]).unwrap_or(0),
            n => return Err(RuntimeError::Output(format!("rank {n} output"))),
        };
        if data.len() != rows * cols || shape[0] as usize != rows {
            return Err(RuntimeError::Output(format!(
                "shape {:?} for a batch of {rows}",
                &shape[..]
            )));
        }
        Ok(OutputBatch {
            rows,
            cols,
            data: data.to_vec(),
        })
    }
}

impl Backend for OrtBackend {
    fn infer(&self, input: &InputBatch) -> Result<OutputBatch, RuntimeError> {
        // ONNX Runtime's LSTM kernel terminates the process on a batch of 0.
        if input.is_empty() {
            return Err(RuntimeError::EmptyBatch);
        }
        let mut session = self.take.recv().map_err(|_| RuntimeError::PoolClosed)?;
        let result = self.run(&mut session, input);
        // The pool has room for every session it handed out, so this cannot block.
        let _ = self.give.send(session);
        result
    }

    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }
}

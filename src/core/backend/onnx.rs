//! The ONNX Runtime backend, loaded at run time from `libonnxruntime.so` (the
//! PyPI wheel's copy; nothing is downloaded).
//!
//! `Session::run` needs `&mut Session`, so each model owns a small pool of
//! sessions, one per inference slot, and a call takes one from the pool for its
//! duration.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Receiver, Sender};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::{Tensor, TensorElementType, TensorRef, ValueType};

use super::{
    Backend, BackendError, BackendOptions, DType, GraphSpec, InputBatch, LoadFailure, Loader,
    OutputBatch, TensorInfo,
};
use crate::config::Device;
use crate::core::cancel::RunControl;

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

/// Building sessions in a function that returns `ort::Result` keeps the builder's
/// non-`Send` error type from leaking into our errors.
fn build_session(
    env: &ort::environment::Environment,
    path: &Path,
    opts: &BackendOptions,
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

/// A session and the run options its runs go with: their terminate switch is
/// how a run is stopped from another thread (`cancel`).
struct Pooled {
    session: Session,
    run: Arc<RunOptions>,
}

/// An ONNX Runtime model with one session per inference slot.
pub struct OrtBackend {
    take: Receiver<Pooled>,
    give: Sender<Pooled>,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// The output `infer` returns.
    output_name: String,
}

impl OrtBackend {
    pub fn load(path: &Path, opts: &BackendOptions, output_name: &str) -> Result<Self, String> {
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
            let run = Arc::new(RunOptions::new().map_err(|e| e.to_string())?);
            give.send(Pooled { session: s, run })
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

    fn run(
        &self,
        session: &mut Session,
        run: &RunOptions,
        input: &InputBatch,
    ) -> Result<OutputBatch, BackendError> {
        let name = self
            .inputs
            .first()
            .map(|i| i.name.as_str())
            .unwrap_or("input");
        let ort_err = |e: ort::Error| BackendError::Runtime {
            backend: "ONNX Runtime",
            message: e.to_string(),
        };
        let outputs = match input {
            InputBatch::Text(texts) => {
                let t = Tensor::from_string_array(([texts.len()], texts.as_slice()))
                    .map_err(ort_err)?;
                session
                    .run_with_options(ort::inputs![name => t], run)
                    .map_err(ort_err)?
            }
            InputBatch::Windows {
                data,
                batch,
                steps,
                features,
            } => {
                let t = TensorRef::from_array_view(([*batch, *steps, *features], data.as_slice()))
                    .map_err(ort_err)?;
                session
                    .run_with_options(ort::inputs![name => t], run)
                    .map_err(ort_err)?
            }
        };
        let value = outputs
            .get(&self.output_name)
            .ok_or_else(|| BackendError::Output(format!("no output named {}", self.output_name)))?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(ort_err)?;
        let rows = input.len();
        let cols = match shape.len() {
            1 => 1,
            2 => usize::try_from(shape[1]).unwrap_or(0),
            n => return Err(BackendError::Output(format!("rank {n} output"))),
        };
        if data.len() != rows * cols || shape[0] as usize != rows {
            return Err(BackendError::Output(format!(
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
    fn infer(&self, input: &InputBatch) -> Result<OutputBatch, BackendError> {
        self.infer_with(input, &RunControl::new())
    }

    fn infer_with(
        &self,
        input: &InputBatch,
        control: &RunControl,
    ) -> Result<OutputBatch, BackendError> {
        // ONNX Runtime's LSTM kernel terminates the process on a batch of 0.
        if input.is_empty() {
            return Err(BackendError::EmptyBatch);
        }
        let mut pooled = self.take.recv().map_err(|_| BackendError::PoolClosed)?;
        let stop = pooled.run.clone();
        control.on_cancel(move || {
            // Checked by the runtime between graph nodes.
            let _ = stop.terminate();
        });
        let result = self.run(&mut pooled.session, &pooled.run, input);
        control.finished();
        if control.is_cancelled() {
            // The switch stays set until unset: the session's next run must not
            // inherit it.
            let _ = pooled.run.unterminate();
        }
        // The pool has room for every session it handed out, so this cannot block.
        let _ = self.give.send(pooled);
        result
    }

    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }
}

/// Loads `model.onnx` files as `OrtBackend`s. Needs `init` first.
pub struct OrtLoader(pub BackendOptions);

impl Loader for OrtLoader {
    fn load(&self, graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure> {
        let backend = OrtBackend::load(graph.path, &self.0, graph.output)
            .map_err(|m| LoadFailure::Failed(format!("corrupt or not ONNX? {m}")))?;
        Ok(Arc::new(backend))
    }
}

//! The libtorch backend (the `torch` feature): TorchScript modules saved by
//! `torch.jit.save` (`model.pt`), run through `tch`.
//!
//! TorchScript declares no names, dtypes or shapes for `forward`'s arguments
//! and results, so a load probes the module: it runs a batch of two
//! zero-filled instances in the manifest's declared input shape, and the
//! tensors that come back (their count, dtypes, ranks and fixed dimensions)
//! become the backend's outputs. The repository then compares them with the
//! manifest exactly as for an ONNX graph. Inputs are positional in
//! TorchScript, so their names are the manifest's; a module that refuses the
//! declared shape fails the probe, naming libtorch's message.
//!
//! As for ONNX Runtime, a model owns one module per inference slot, so slots
//! never contend for one interpreter's state. libtorch's intra-op threads come
//! from the same option as ONNX Runtime's, and are set on each thread that
//! runs a module, before its first call: OpenMP keeps the count per calling
//! thread, and a slot thread left at the default (every core) starts an OpenMP
//! team of its own whose wake-ups cost more than a small LSTM's whole forward
//! pass (seen under `perf`: a request at one connection took 0.67 ms instead
//! of 0.2). Gradients are off for every call (`no_grad_guard`, thread-local).

#![warn(missing_docs)]
// Request paths return typed errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
// Empty without libtorch: see the `libtorch` feature.
#![cfg(feature = "libtorch")]

use std::cell::Cell;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tch::{CModule, Cuda, IValue, Kind, TchError, Tensor};

use inferd_core::backend::{
    Backend, BackendError, BackendOptions, DType, Device, GraphSpec, InputBatch, LoadFailure,
    Loader, OutputBatch, TensorInfo,
};

/// The probe batch: two rows, so that a module which squeezes its batch
/// dimension away is caught (a batch of one would hide it).
const PROBE_BATCH: i64 = 2;

fn runtime_err(e: TchError) -> BackendError {
    BackendError::Runtime {
        backend: "libtorch",
        message: e.to_string(),
    }
}

fn dtype_of(kind: Kind) -> DType {
    match kind {
        Kind::Float => DType::Float32,
        Kind::Int64 => DType::Int64,
        _ => DType::Other,
    }
}

/// A TorchScript model with one module per inference slot.
pub struct TorchBackend {
    take: Receiver<CModule>,
    give: Sender<CModule>,
    device: tch::Device,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// Which of `forward`'s results `infer` returns.
    output_index: usize,
    intra_threads: i32,
}

thread_local! {
    /// The intra-op thread count this thread last gave libtorch (0: never).
    static THREADS_SET: Cell<i32> = const { Cell::new(0) };
}

/// Sets libtorch's intra-op threads for the calling thread, once per count.
fn set_thread_count(n: i32) {
    THREADS_SET.with(|set| {
        if set.get() != n {
            tch::set_num_threads(n);
            set.set(n);
        }
    });
}

impl TorchBackend {
    /// Loads and probes the module of `graph`, one copy per slot.
    pub fn load(graph: &GraphSpec<'_>, opts: &BackendOptions) -> Result<Self, LoadFailure> {
        let device = torch_device(opts.device).map_err(LoadFailure::Unsupported)?;
        let failed = |what: &str, e: TchError| LoadFailure::Failed(format!("{what}: {e}"));
        let inputs = declared_inputs(graph)?;
        let (give, take) = crossbeam_channel::bounded(opts.pool_size.max(1));
        let mut outputs = Vec::new();
        for i in 0..opts.pool_size.max(1) {
            let mut module = CModule::load_on_device(graph.path, device)
                .map_err(|e| failed("not a TorchScript module libtorch can load", e))?;
            module
                .f_set_eval()
                .map_err(|e| failed("cannot switch the module to eval mode", e))?;
            if i == 0 {
                set_thread_count(intra_threads(opts));
                outputs = probe(&module, graph, &inputs, device)?;
            }
            give.send(module)
                .map_err(|_| LoadFailure::Failed("module pool closed".into()))?;
        }
        let output_index = graph
            .outputs
            .iter()
            .position(|o| o.name == graph.output)
            .unwrap_or(0);
        Ok(TorchBackend {
            take,
            give,
            device,
            inputs,
            outputs,
            output_index,
            intra_threads: intra_threads(opts),
        })
    }

    fn run(&self, module: &CModule, input: &InputBatch) -> Result<OutputBatch, BackendError> {
        let InputBatch::Windows {
            data,
            batch,
            steps,
            features,
        } = input
        else {
            // The manifest check refuses string inputs at load; a text batch
            // reaching here is a routing bug, answered as an error.
            return Err(BackendError::Runtime {
                backend: "libtorch",
                message: "TorchScript versions take float32 windows, not text".into(),
            });
        };
        set_thread_count(self.intra_threads);
        let _no_grad = tch::no_grad_guard();
        let x = Tensor::f_from_slice(data)
            .and_then(|t| t.f_reshape([*batch as i64, *steps as i64, *features as i64]))
            .and_then(|t| t.f_to(self.device))
            .map_err(runtime_err)?;
        let result = module
            .forward_is(&[IValue::Tensor(x)])
            .map_err(runtime_err)?;
        let mut tensors = results(result).map_err(BackendError::Output)?;
        if self.output_index >= tensors.len() {
            return Err(BackendError::Output(format!(
                "{} results, expected at least {}",
                tensors.len(),
                self.output_index + 1
            )));
        }
        let y = tensors.swap_remove(self.output_index);
        to_rows(&y, input.len())
    }
}

/// The module's results as tensors: one, or a tuple or list of them.
fn results(value: IValue) -> Result<Vec<Tensor>, String> {
    match value {
        IValue::Tensor(t) => Ok(vec![t]),
        IValue::Tuple(vs) | IValue::GenericList(vs) => vs
            .into_iter()
            .map(|v| match v {
                IValue::Tensor(t) => Ok(t),
                _ => Err("a result that is not a tensor".to_string()),
            })
            .collect(),
        IValue::TensorList(ts) => Ok(ts),
        _ => Err("forward returned something other than tensors".into()),
    }
}

/// A `[rows]` or `[rows, cols]` float32 result, copied to the host.
fn to_rows(y: &Tensor, rows: usize) -> Result<OutputBatch, BackendError> {
    if y.kind() != Kind::Float {
        return Err(BackendError::Output(format!(
            "dtype {:?}, expected float32",
            y.kind()
        )));
    }
    let shape = y.size();
    let cols = match shape.len() {
        1 => 1,
        2 => usize::try_from(shape[1]).unwrap_or(0),
        n => return Err(BackendError::Output(format!("rank {n} output"))),
    };
    if usize::try_from(shape[0]).ok() != Some(rows) {
        return Err(BackendError::Output(format!(
            "shape {shape:?} for a batch of {rows}"
        )));
    }
    let y = y
        .f_to(tch::Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(runtime_err)?;
    let mut data = vec![0f32; rows * cols];
    y.f_copy_data(&mut data, rows * cols).map_err(runtime_err)?;
    Ok(OutputBatch { rows, cols, data })
}

/// The manifest's inputs, as the backend's: TorchScript takes one float32
/// tensor per argument here.
fn declared_inputs(graph: &GraphSpec<'_>) -> Result<Vec<TensorInfo>, LoadFailure> {
    graph
        .inputs
        .iter()
        .map(|spec| {
            if spec.dtype != DType::Float32.name() {
                return Err(LoadFailure::Failed(format!(
                    "input `{}`: TorchScript versions take float32 inputs, the manifest says {}",
                    spec.name, spec.dtype
                )));
            }
            Ok(TensorInfo {
                name: spec.name.clone(),
                dtype: DType::Float32,
                shape: spec.shape.clone(),
            })
        })
        .collect()
}

/// Runs the module on zeros in the declared input shapes; what comes back
/// describes its outputs (batch dimension dynamic, named as the manifest
/// names them where the count agrees).
fn probe(
    module: &CModule,
    graph: &GraphSpec<'_>,
    inputs: &[TensorInfo],
    device: tch::Device,
) -> Result<Vec<TensorInfo>, LoadFailure> {
    let _no_grad = tch::no_grad_guard();
    let args = inputs
        .iter()
        .map(|i| {
            let shape: Vec<i64> = i
                .shape
                .iter()
                .enumerate()
                .map(|(d, &n)| if d == 0 || n < 0 { PROBE_BATCH } else { n })
                .collect();
            Tensor::f_zeros(shape.as_slice(), (Kind::Float, device)).map(IValue::Tensor)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadFailure::Failed(format!("cannot build the probe batch: {e}")))?;
    let result = module.forward_is(&args).map_err(|e| {
        LoadFailure::Failed(format!(
            "the module refused a batch of {PROBE_BATCH} in the manifest's input shape: {e}"
        ))
    })?;
    let tensors = results(result).map_err(LoadFailure::Failed)?;
    let named = tensors.len() == graph.outputs.len();
    Ok(tensors
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let mut shape = t.size();
            if shape.first() == Some(&PROBE_BATCH) {
                shape[0] = -1;
            }
            TensorInfo {
                name: if named {
                    graph.outputs[k].name.clone()
                } else {
                    format!("output{k}")
                },
                dtype: dtype_of(t.kind()),
                shape,
            }
        })
        .collect())
}

fn intra_threads(opts: &BackendOptions) -> i32 {
    i32::try_from(opts.intra_threads.max(1)).unwrap_or(1)
}

/// libtorch's device for `--device`, or why this build or machine has none.
pub fn torch_device(device: Device) -> Result<tch::Device, String> {
    match device {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Cuda => {
            load_cuda_runtime()?;
            if Cuda::is_available() {
                Ok(tch::Device::Cuda(0))
            } else {
                Err(format!(
                    "--device cuda: libtorch's CUDA runtime loaded, but it sees no CUDA device \
                     ({} found): is a GPU and its driver visible to this process?",
                    Cuda::device_count()
                ))
            }
        }
    }
}

/// Loads `libtorch_cuda.so`, whose static initialisers register CUDA with
/// libtorch. The linker drops it from the binary (`--as-needed`: tch calls
/// nothing in it directly), which keeps CPU-only runs free of the CUDA
/// libraries; `--device cuda` loads it here, from the library path.
// Unsafe: std has no dlopen; see SAFETY.
#[allow(unsafe_code)]
fn load_cuda_runtime() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let name = c"libtorch_cuda.so";
            // SAFETY: dlopen with a valid C string; the handle is kept for
            // the life of the process (never dlclosed).
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                // SAFETY: dlerror returns null or a valid C string.
                let why = unsafe {
                    let e = libc::dlerror();
                    if e.is_null() {
                        "unknown error".to_string()
                    } else {
                        std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                    }
                };
                Err(format!(
                    "--device cuda: cannot load libtorch_cuda.so ({why}): it and its CUDA \
                     libraries must be on LD_LIBRARY_PATH (the CUDA build of the torch wheel)"
                ))
            } else {
                Ok(())
            }
        })
        .clone()
}

impl Backend for TorchBackend {
    fn infer(&self, input: &InputBatch) -> Result<OutputBatch, BackendError> {
        // Never sent on, as for ONNX Runtime: a batch of 0 has no rows to answer.
        if input.is_empty() {
            return Err(BackendError::EmptyBatch);
        }
        let module = self.take.recv().map_err(|_| BackendError::PoolClosed)?;
        let result = self.run(&module, input);
        // The pool has room for every module it handed out: this cannot block.
        let _ = self.give.send(module);
        result
    }

    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }
}

/// Loads `model.pt` files as `TorchBackend`s.
pub struct TorchLoader(BackendOptions);

impl TorchLoader {
    /// Checks the device now, so that `--device cuda` without a usable GPU
    /// stops start-up instead of every TorchScript version failing later.
    pub fn new(opts: BackendOptions) -> Result<Self, String> {
        torch_device(opts.device)?;
        Ok(TorchLoader(opts))
    }
}

impl Loader for TorchLoader {
    fn load(&self, graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure> {
        Ok(Arc::new(TorchBackend::load(graph, &self.0)?))
    }
}

/// libtorch's behaviour on each kind of bad input, on the shipped TorchScript
/// LSTM: what reaches it is only what the task's validation lets through, and
/// these tests record why each check must come before it.
#[cfg(test)]
mod tests {
    use super::*;
    use inferd_core::manifest::{Format, Manifest};

    fn model_dir() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/lstm-forecaster-torch/1")
    }

    fn manifest() -> Manifest {
        let text = std::fs::read_to_string(model_dir().join("model.toml")).unwrap();
        toml::from_str(&text).unwrap()
    }

    fn opts() -> BackendOptions {
        BackendOptions {
            intra_threads: 1,
            device: Device::Cpu,
            pool_size: 1,
            arena_shrink_rows: 0,
        }
    }

    /// `file` loaded as a TorchScript version described by `m`.
    fn load_with(m: &Manifest, file: &std::path::Path) -> Result<TorchBackend, LoadFailure> {
        let spec = GraphSpec {
            format: Format::Torchscript,
            path: file,
            inputs: &m.inputs,
            outputs: &m.outputs,
            output: "forecast",
        };
        TorchBackend::load(&spec, &opts())
    }

    fn load() -> TorchBackend {
        load_with(&manifest(), &model_dir().join("model.pt")).unwrap()
    }

    fn windows(batch: usize, steps: usize, features: usize, v: f32) -> InputBatch {
        InputBatch::Windows {
            data: vec![v; batch * steps * features],
            batch,
            steps,
            features,
        }
    }

    fn raw_forward(b: &TorchBackend, shape: [i64; 3], v: f32) -> Result<Tensor, TchError> {
        let module = b.take.recv().unwrap();
        let _g = tch::no_grad_guard();
        let n = shape.iter().product::<i64>() as usize;
        let x = Tensor::from_slice(&vec![v; n]).reshape(shape);
        let out = module.forward_ts(&[x]);
        b.give.send(module).unwrap();
        out
    }

    #[test]
    fn the_probe_reads_the_modules_outputs() {
        let b = load();
        assert_eq!(b.inputs()[0].name, "window");
        assert_eq!(b.outputs().len(), 1);
        assert_eq!(b.outputs()[0].name, "forecast");
        assert_eq!(b.outputs()[0].dtype, DType::Float32);
        assert_eq!(b.outputs()[0].shape, vec![-1, 1]);
        let out = b.infer(&windows(3, 26, 1, 350.0)).unwrap();
        assert_eq!((out.rows, out.cols), (3, 1));
        // A flat window forecasts close to its level (the model predicts change).
        assert!((out.data[0] - 350.0).abs() < 2.0, "{:?}", out.data);
    }

    #[test]
    fn an_empty_batch_never_reaches_libtorch() {
        let b = load();
        assert_eq!(
            b.infer(&windows(0, 26, 1, 1.0)),
            Err(BackendError::EmptyBatch)
        );
        // libtorch itself answers a batch of 0 with a [0, 1] tensor (ONNX
        // Runtime's LSTM aborts the process): harmless, but a request with no
        // instances is a client error, refused by the task before any batch.
        let t = raw_forward(&b, [0, 26, 1], 1.0).unwrap();
        assert_eq!(t.size(), vec![0, 1]);
    }

    #[test]
    fn a_wrong_feature_count_is_an_error_not_a_crash() {
        let b = load();
        let e = b.infer(&windows(1, 26, 2, 1.0)).unwrap_err();
        assert!(
            matches!(
                e,
                BackendError::Runtime {
                    backend: "libtorch",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn libtorch_runs_any_window_length_and_nan_silently() {
        // Why the task checks the window length and refuses non-finite
        // readings itself: libtorch answers both without complaint.
        let b = load();
        let short = b.infer(&windows(1, 5, 1, 350.0)).unwrap();
        assert!(short.data[0].is_finite());
        let nan = b.infer(&windows(1, 26, 1, f32::NAN)).unwrap();
        assert!(nan.data[0].is_nan());
    }

    #[test]
    fn a_module_that_refuses_the_declared_shape_fails_the_probe() {
        let mut m = manifest();
        m.inputs[0].shape = vec![-1, 26, 3];
        match load_with(&m, &model_dir().join("model.pt")) {
            Err(LoadFailure::Failed(msg)) => assert!(msg.contains("refused a batch"), "{msg}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("loaded with a wrong input shape"),
        }
    }

    #[test]
    fn a_file_that_is_not_torchscript_is_refused() {
        let onnx = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join("models/lstm-forecaster/1/model.onnx");
        assert!(matches!(
            load_with(&manifest(), &onnx),
            Err(LoadFailure::Failed(_))
        ));
    }

    #[test]
    fn cuda_is_used_where_visible_and_refused_with_the_reason_elsewhere() {
        let cuda = BackendOptions {
            device: Device::Cuda,
            ..opts()
        };
        match TorchLoader::new(cuda) {
            // A machine with a GPU: the device is there to use.
            Ok(_) => assert!(Cuda::is_available()),
            Err(e) => assert!(
                e.starts_with("--device cuda: ")
                    && (e.contains("no CUDA device") || e.contains("libtorch_cuda.so")),
                "{e}"
            ),
        }
    }
}

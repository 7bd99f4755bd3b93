//! The ONNX Runtime backend, loaded at run time from `libonnxruntime.so` (the
//! PyPI wheel's copy; nothing is downloaded).
//!
//! `Session::run` needs `&mut Session`, so each model owns a small pool of
//! sessions, one per inference slot, and a call takes one from the pool for its
//! duration. It also owns the arenas' memory: see `OrtBackend`.

#![warn(missing_docs)]
// Request paths return typed errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Receiver, Sender};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::{Tensor, TensorElementType, TensorRef, ValueType};

use inferd_core::backend::{
    Backend, BackendError, BackendOptions, DType, Device, GraphSpec, InputBatch, LoadFailure,
    Loader, OutputBatch, TensorInfo,
};
use inferd_core::cancel::RunControl;

static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Where `make run` (`scripts/install-ort.sh`) installs ONNX Runtime, relative
/// to the repository.
pub const LOCAL_DYLIB: &str = ".ort/lib/libonnxruntime.so.1.31.1";

/// Where to find `libonnxruntime.so`: the configured path, else the project-local
/// install (`LOCAL_DYLIB`). Relative paths are taken from `base` and made
/// absolute here, because `ort` would resolve them against the executable's
/// folder.
pub fn resolve_dylib(configured: Option<&Path>, base: &Path) -> Result<PathBuf, String> {
    let candidate = configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(LOCAL_DYLIB));
    let abs = if candidate.is_absolute() {
        candidate
    } else {
        base.join(candidate)
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
    /// Options that free the arena regions left unused at the run's end.
    shrink: Arc<RunOptions>,
    /// Ran a batch of more than `arena_shrink_rows` since its last shrink.
    grown: bool,
}

fn shrinking_options() -> ort::Result<RunOptions> {
    let mut o = RunOptions::new()?;
    o.set("memory.enable_memory_arena_shrinkage", "cpu:0")?;
    Ok(o)
}

/// An ONNX Runtime model with one session per inference slot.
///
/// Memory. ONNX Runtime's CPU arena keeps every region it grows for as long
/// as the session lives: one batch of 32 texts grows the text classifier's by
/// the dense TF-IDF intermediates ([32, 23551] float32, ~3 MiB each), ~6-8 MiB
/// per session that ran one, never handed back. Shrinking at the end of every
/// large run gives it back but costs the next run its allocations again: at
/// 64 connections the text classifier, whose batches are then full, lost a
/// third of its throughput (12,000 -> 8,100 req/s). So the arena is left warm
/// while the model is busy, and a session that ran a large batch is shrunk
/// once the model has been idle for `RELAX_AFTER` (`relaxer`): a one-row run
/// with the shrinking options, which frees what the large runs left.
pub struct OrtBackend {
    inner: Arc<Inner>,
}

struct Inner {
    take: Receiver<Pooled>,
    give: Sender<Pooled>,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// The output `infer` returns.
    output_name: String,
    /// A batch of more rows than this marks its session for a shrink (0: never).
    shrink_rows: usize,
    /// One row of the first input seen: what a shrinking run runs.
    probe: OnceLock<InputBatch>,
    /// `relaxer::now_ms()` at the last run's end.
    last_run_ms: AtomicU64,
    /// Some session is marked for a shrink.
    grown: AtomicBool,
}

impl OrtBackend {
    /// Loads the graph at `path` with a session per slot; `output_name` is the output the task reads.
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
            let shrink = Arc::new(shrinking_options().map_err(|e| e.to_string())?);
            give.send(Pooled {
                session: s,
                run,
                shrink,
                grown: false,
            })
            .map_err(|_| "session pool closed".to_string())?;
        }
        let inner = Arc::new(Inner {
            take,
            give,
            inputs,
            outputs,
            output_name: output_name.to_string(),
            shrink_rows: opts.arena_shrink_rows,
            probe: OnceLock::new(),
            last_run_ms: AtomicU64::new(relaxer::now_ms()),
            grown: AtomicBool::new(false),
        });
        if opts.arena_shrink_rows > 0 {
            relaxer::register(&inner);
        }
        Ok(OrtBackend { inner })
    }
}

impl Inner {
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

    /// Shrinks the arena of each session marked for it, once the model has
    /// been idle for `idle_ms`. Sessions in use are left for a later turn; a
    /// request arriving meanwhile waits for one one-row run at most.
    fn relax(&self, idle_ms: u64) {
        let idle = relaxer::now_ms().saturating_sub(self.last_run_ms.load(Ordering::Acquire));
        if idle < idle_ms || !self.grown.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some(probe) = self.probe.get() else {
            return;
        };
        let mut left = false;
        for _ in 0..self.give.capacity().unwrap_or(1) {
            let Ok(mut pooled) = self.take.try_recv() else {
                // All busy: traffic is back, and with it the reason to keep
                // the arena; the marks stay for the next idle spell.
                left = true;
                break;
            };
            if pooled.grown {
                let shrink = pooled.shrink.clone();
                match self.run(&mut pooled.session, &shrink, probe) {
                    Ok(_) => pooled.grown = false,
                    Err(e) => tracing::debug!(error = %e, "arena shrink run failed"),
                }
                left |= pooled.grown;
            }
            let _ = self.give.send(pooled);
        }
        if left {
            self.grown.store(true, Ordering::Release);
        }
    }
}

/// The first row of `input`, as a batch of one.
fn first_row(input: &InputBatch) -> Option<InputBatch> {
    match input {
        InputBatch::Text(t) => t.first().map(|t| InputBatch::Text(vec![t.clone()])),
        InputBatch::Windows {
            steps, features, ..
        } => input.window(0).map(|w| InputBatch::Windows {
            data: w.to_vec(),
            batch: 1,
            steps: *steps,
            features: *features,
        }),
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
        let inner = &*self.inner;
        if inner.shrink_rows > 0 && inner.probe.get().is_none() {
            if let Some(row) = first_row(input) {
                let _ = inner.probe.set(row);
            }
        }
        let mut pooled = inner.take.recv().map_err(|_| BackendError::PoolClosed)?;
        let stop = pooled.run.clone();
        control.on_cancel(move || {
            // Checked by the runtime between graph nodes.
            let _ = stop.terminate();
        });
        let result = inner.run(&mut pooled.session, &pooled.run, input);
        control.finished();
        if control.is_cancelled() {
            // The switch stays set until unset: the session's next run must not
            // inherit it.
            let _ = pooled.run.unterminate();
        }
        // Only the relaxer reads these, and only models with shrinking on
        // are registered with it: no clock read per batch otherwise.
        if inner.shrink_rows > 0 {
            if input.len() > inner.shrink_rows {
                pooled.grown = true;
                inner.grown.store(true, Ordering::Release);
            }
            inner
                .last_run_ms
                .store(relaxer::now_ms(), Ordering::Release);
        }
        // The pool has room for every session it handed out, so this cannot block.
        let _ = inner.give.send(pooled);
        result
    }

    fn inputs(&self) -> &[TensorInfo] {
        &self.inner.inputs
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.inner.outputs
    }
}

/// One thread for the process that shrinks the arenas of idle models.
mod relaxer {
    use std::sync::{Arc, LazyLock, Mutex, Weak};
    use std::time::{Duration, Instant};

    use super::Inner;

    /// How long a model must have run nothing before its grown sessions are
    /// shrunk: long enough that a steady stream of large batches, even a
    /// slow one, keeps its arena warm.
    pub(crate) const RELAX_AFTER: Duration = Duration::from_secs(2);
    const CHECK_EVERY: Duration = Duration::from_millis(500);

    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    static MODELS: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

    pub(crate) fn now_ms() -> u64 {
        EPOCH.elapsed().as_millis() as u64
    }

    /// Watches `inner` until it is dropped; starts the thread at the first call.
    pub(crate) fn register(inner: &Arc<Inner>) {
        static STARTED: std::sync::Once = std::sync::Once::new();
        if let Ok(mut m) = MODELS.lock() {
            m.push(Arc::downgrade(inner));
        }
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("inferd-arena".into())
                .spawn(run);
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no arena relaxer thread: arenas stay at their high-water mark");
            }
        });
    }

    fn run() {
        loop {
            std::thread::sleep(CHECK_EVERY);
            // Upgraded outside the lock, so a model's last drop (here, at the
            // end of a turn) never happens with the list locked.
            let live: Vec<Arc<Inner>> = match MODELS.lock() {
                Ok(mut m) => {
                    m.retain(|w| w.strong_count() > 0);
                    m.iter().filter_map(Weak::upgrade).collect()
                }
                Err(_) => return,
            };
            for inner in live {
                inner.relax(RELAX_AFTER.as_millis() as u64);
            }
        }
    }
}

/// Loads `model.onnx` files as `OrtBackend`s. Needs `init` first.
pub struct OrtLoader(BackendOptions);

impl OrtLoader {
    /// A loader whose sessions take `opts`.
    pub fn new(opts: BackendOptions) -> Self {
        OrtLoader(opts)
    }
}

impl Loader for OrtLoader {
    fn load(&self, graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure> {
        let backend = OrtBackend::load(graph.path, &self.0, graph.output)
            .map_err(|m| LoadFailure::Failed(format!("corrupt or not ONNX? {m}")))?;
        Ok(Arc::new(backend))
    }
}

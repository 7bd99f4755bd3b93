//! A scripted backend for tests: deterministic outputs, adjustable latency,
//! failures on demand, a gate that holds inference until released, and a record
//! of every batch it ran.
//!
//! It exists so that batch formation, ordering, splitting, deadlines, clients
//! that leave and single-flight can be tested exactly, without ONNX Runtime and
//! without HTTP: a real model's speed varies with the machine, so a test built
//! on it can only hope that requests overlapped; with the gate they do, for
//! certain.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{
    Backend, BackendError, DType, GraphSpec, InputBatch, LoadFailure, Loader, OutputBatch,
    TensorInfo,
};
use crate::manifest::Manifest;
use crate::repository::Model;
use crate::task::Task;

/// Each output row is a function of its own instance only, so a test can tell
/// from the answer which instance it belongs to: column `j` of a window is the
/// sum of its values plus `j`; of a text, its length in bytes plus `j`.
pub fn expected_row(input: &InputBatch, i: usize, cols: usize) -> Vec<f32> {
    let base = instance_value(input, i);
    (0..cols).map(|j| base + j as f32).collect()
}

/// The value that identifies instance `i` of a batch in `TestBackend::batches`.
pub fn instance_value(input: &InputBatch, i: usize) -> f32 {
    match input {
        InputBatch::Text(t) => t[i].len() as f32,
        InputBatch::Windows { .. } => input.window(i).unwrap_or_default().iter().sum(),
    }
}

#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

/// A scripted backend (see the module's documentation).
pub struct TestBackend {
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    cols: usize,
    latency_us: AtomicU64,
    /// Calls still to fail, from the next one on.
    failures: AtomicUsize,
    gate: Gate,
    running: AtomicUsize,
    batches: Mutex<Vec<Vec<f32>>>,
}

impl TestBackend {
    /// A backend shaped like a forecaster: `[batch, window, features]` floats in,
    /// `[batch, targets]` out.
    pub fn forecaster(window: usize, features: usize, targets: usize) -> Arc<TestBackend> {
        Arc::new(TestBackend {
            inputs: vec![TensorInfo {
                name: "window".into(),
                dtype: DType::Float32,
                shape: vec![-1, window as i64, features as i64],
            }],
            outputs: vec![TensorInfo {
                name: "forecast".into(),
                dtype: DType::Float32,
                shape: vec![-1, targets as i64],
            }],
            cols: targets,
            latency_us: AtomicU64::new(0),
            failures: AtomicUsize::new(0),
            gate: Gate::default(),
            running: AtomicUsize::new(0),
            batches: Mutex::new(Vec::new()),
        })
    }

    /// Every call sleeps this long (a slow model).
    pub fn set_latency(&self, d: Duration) {
        self.latency_us
            .store(d.as_micros() as u64, Ordering::Release);
    }

    /// The next `n` calls fail.
    pub fn fail_next(&self, n: usize) {
        self.failures.store(n, Ordering::Release);
    }

    /// Calls wait inside the model until `open` (they have been taken into a
    /// batch and hold their slot).
    pub fn close_gate(&self) {
        *self.gate.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Lets held and later inferences run.
    pub fn open_gate(&self) {
        *self.gate.closed.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.gate.opened.notify_all();
    }

    /// Calls inside `infer` right now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Every batch run so far, as the identifying value of each instance
    /// (`instance_value`), in the order the model saw them.
    pub fn batches(&self) -> Vec<Vec<f32>> {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Backend for TestBackend {
    fn infer(&self, input: &InputBatch) -> Result<OutputBatch, BackendError> {
        if input.is_empty() {
            return Err(BackendError::EmptyBatch);
        }
        self.running.fetch_add(1, Ordering::AcqRel);
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((0..input.len()).map(|i| instance_value(input, i)).collect());
        {
            let mut closed = self.gate.closed.lock().unwrap_or_else(|p| p.into_inner());
            while *closed {
                closed = self
                    .gate
                    .opened
                    .wait(closed)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        let us = self.latency_us.load(Ordering::Acquire);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        self.running.fetch_sub(1, Ordering::AcqRel);
        let fail = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(BackendError::Runtime {
                backend: "test",
                message: "failure injected by the test".into(),
            });
        }
        let mut data = Vec::with_capacity(input.len() * self.cols);
        for i in 0..input.len() {
            data.extend(expected_row(input, i, self.cols));
        }
        Ok(OutputBatch {
            rows: input.len(),
            cols: self.cols,
            data,
        })
    }

    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }
}

/// Another backend, slowed down: every call first sleeps. Wraps a real model
/// when a test needs requests to overlap for certain.
pub struct Slowed {
    inner: Arc<dyn Backend>,
    latency: Duration,
}

impl Backend for Slowed {
    fn infer(&self, input: &InputBatch) -> Result<OutputBatch, BackendError> {
        std::thread::sleep(self.latency);
        self.inner.infer(input)
    }

    fn inputs(&self) -> &[TensorInfo] {
        self.inner.inputs()
    }

    fn outputs(&self) -> &[TensorInfo] {
        self.inner.outputs()
    }
}

/// Loads through `inner`, then slows every backend by `latency`.
pub struct SlowLoader {
    /// The real loader.
    pub inner: Box<dyn Loader>,
    /// Added to every inference.
    pub latency: Duration,
}

impl Loader for SlowLoader {
    fn load(&self, graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure> {
        Ok(Arc::new(Slowed {
            inner: self.inner.load(graph)?,
            latency: self.latency,
        }))
    }
}

/// Hands out one prepared backend for every graph (repository tests).
pub struct FixedLoader(pub Arc<TestBackend>);

impl Loader for FixedLoader {
    fn load(&self, _graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure> {
        Ok(self.0.clone())
    }
}

/// A forecaster manifest (window `window`, one feature `y`, one target `y`)
/// with the given batching limits.
pub fn forecaster_manifest(name: &str, window: usize, max_batch_size: usize) -> Manifest {
    let text = format!(
        r#"
name = "{name}"
version = "1"
task = "time-series-forecast"
graph_sha256 = "none"
inputs = [{{ name = "window", dtype = "float32", shape = [-1, {window}, 1] }}]
outputs = [{{ name = "forecast", dtype = "float32", shape = [-1, 1] }}]
[timeseries]
window = {window}
features = ["y"]
feature_units = ["unit"]
targets = ["y"]
target_units = ["unit"]
scaling = "none"
[batching]
max_batch_size = {max_batch_size}
max_batch_delay_ms = 0
[cache]
enabled = true
"#
    );
    // The text above is fixed and valid: a failure here is a bug in this file.
    toml::from_str(&text).expect("test manifest parses")
}

/// A forecaster model served by `backend`.
pub fn forecaster_model(
    name: &str,
    window: usize,
    max_batch_size: usize,
    backend: Arc<TestBackend>,
) -> Model {
    let manifest = forecaster_manifest(name, window, max_batch_size);
    let task = Task::from_manifest(&manifest).expect("test manifest has a valid task");
    Model {
        manifest,
        task,
        backend,
        dir: std::path::PathBuf::from(format!("test/{name}/1")),
        reference: None,
        _release: Default::default(),
    }
}

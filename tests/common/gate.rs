//! A gate in front of the real models, so that a test decides when work inside
//! the model moves on: requests overlap, queue or outlast a deadline because
//! the test holds them there, not because a sleep was long enough on this
//! machine today.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use inferd::server::MakeLoader;
use inferd_core::backend::{
    Backend, BackendError, GraphSpec, InputBatch, LoadFailure, Loader, OutputBatch, TensorInfo,
};
use inferd_core::cancel::RunControl;

/// How long a test waits for a condition that must come: long enough that
/// only a defect (the condition never comes) reaches it on a loaded machine.
pub(crate) const EVENTUALLY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct GateState {
    closed: bool,
    /// Calls waiting at the gate now.
    waiting: usize,
}

/// Holds model calls (or model loads) until opened.
#[derive(Clone, Default)]
pub(crate) struct Gate(Arc<(Mutex<GateState>, Condvar)>);

impl Gate {
    pub(crate) fn closed() -> Gate {
        let g = Gate::default();
        g.close();
        g
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }

    pub(crate) fn open(&self) {
        self.lock().closed = false;
        self.0 .1.notify_all();
    }

    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Blocks while the gate is closed and `stop` is unset.
    fn pass(&self, stop: &AtomicBool) {
        let mut st = self.lock();
        st.waiting += 1;
        while st.closed && !stop.load(Ordering::Acquire) {
            st = self.0 .1.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.waiting -= 1;
    }

    /// Waits until `n` calls wait at the gate.
    pub(crate) async fn until_waiting(&self, n: usize, what: &str) {
        let t = Instant::now();
        while self.waiting() != n {
            assert!(
                t.elapsed() < EVENTUALLY,
                "{what}: {} calls at the gate, {n} expected",
                self.waiting()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Opens the gate when the returned guard drops, however the test ends,
    /// so that no slot thread or model loader stays blocked behind a failed
    /// assertion.
    pub(crate) fn open_on_drop(&self) -> OpenOnDrop {
        OpenOnDrop(self.clone())
    }
}

pub(crate) struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A real model whose batcher calls wait at the gate. A cancelled run (every
/// client gone, or every deadline passed) leaves the gate at once, as ONNX
/// Runtime's terminate switch stops a run. Warm-up and the golden gate call
/// `infer`, which does not wait, so the server starts at its usual speed.
struct Held {
    inner: Arc<dyn Backend>,
    gate: Gate,
    /// Whether a cancelled run leaves the gate (ONNX Runtime's terminate
    /// switch) or stays until it opens (a runtime that cannot be stopped).
    cancellable: bool,
}

impl Backend for Held {
    fn infer(&self, input: &InputBatch) -> Result<OutputBatch, BackendError> {
        self.inner.infer(input)
    }

    fn infer_with(
        &self,
        input: &InputBatch,
        control: &RunControl,
    ) -> Result<OutputBatch, BackendError> {
        if !self.cancellable {
            self.gate.pass(&AtomicBool::new(false));
            return self.inner.infer(input);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (s, g) = (stop.clone(), self.gate.clone());
        control.on_cancel(move || {
            s.store(true, Ordering::Release);
            let _st = g.lock();
            g.0 .1.notify_all();
        });
        self.gate.pass(&stop);
        control.finished();
        if stop.load(Ordering::Acquire) {
            return Err(BackendError::Runtime {
                backend: "test",
                message: "run terminated".into(),
            });
        }
        self.inner.infer_with(input, control)
    }

    fn inputs(&self) -> &[TensorInfo] {
        self.inner.inputs()
    }

    fn outputs(&self) -> &[TensorInfo] {
        self.inner.outputs()
    }
}

/// The server's runtimes with every backend `Held` at `gate`.
struct HeldLoader {
    inner: Box<dyn Loader>,
    gate: Gate,
    cancellable: bool,
}

impl Loader for HeldLoader {
    fn load(&self, graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure> {
        Ok(Arc::new(Held {
            inner: self.inner.load(graph)?,
            gate: self.gate.clone(),
            cancellable: self.cancellable,
        }))
    }
}

/// The server's runtimes, whose loads wait at `gate`: the server stays
/// `Starting` until the test opens it.
struct StalledLoader {
    inner: Box<dyn Loader>,
    gate: Gate,
}

impl Loader for StalledLoader {
    fn load(&self, graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure> {
        self.gate.pass(&AtomicBool::new(false));
        self.inner.load(graph)
    }
}

/// The real models, their batches held at `gate` while it is closed (a
/// cancelled run leaves at once).
pub(crate) fn held(gate: &Gate) -> MakeLoader {
    held_loader(gate, true)
}

/// `held`, but a run stays at the gate even when cancelled, as a runtime that
/// cannot be interrupted would: the slot stays taken until the gate opens.
pub(crate) fn held_past_cancel(gate: &Gate) -> MakeLoader {
    held_loader(gate, false)
}

fn held_loader(gate: &Gate, cancellable: bool) -> MakeLoader {
    let gate = gate.clone();
    Box::new(move |opts| {
        Ok(Box::new(HeldLoader {
            inner: Box::new(inferd::server::runtimes(opts)?),
            gate,
            cancellable,
        }))
    })
}

/// The real models, their loads held at `gate` while it is closed.
pub(crate) fn stalled(gate: &Gate) -> MakeLoader {
    let gate = gate.clone();
    Box::new(move |opts| {
        Ok(Box::new(StalledLoader {
            inner: Box::new(inferd::server::runtimes(opts)?),
            gate,
        }))
    })
}

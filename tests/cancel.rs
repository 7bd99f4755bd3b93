//! A batch nobody waits for is stopped and its slot freed: every request in it
//! passed its deadline, or every client left.
//!
//! The models here run through ONNX Runtime with one difference: a call from
//! the batcher (`infer_with`) first waits 3 s the way a long graph runs,
//! stopping when the run is cancelled, as ONNX Runtime's terminate switch
//! stops a run between nodes. Warm-up and the golden gate (`infer`) are not
//! slowed, so the server starts at its usual speed.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{metric, uncached, TestServer};
use inferd_core::backend::{
    Backend, BackendError, GraphSpec, InputBatch, LoadFailure, Loader, OutputBatch, TensorInfo,
};
use inferd_core::cancel::RunControl;
use serde_json::json;

const MODEL_TIME: Duration = Duration::from_secs(3);

struct LongRun(Arc<dyn Backend>);

impl Backend for LongRun {
    fn infer(&self, input: &InputBatch) -> Result<OutputBatch, BackendError> {
        self.0.infer(input)
    }

    fn infer_with(
        &self,
        input: &InputBatch,
        control: &RunControl,
    ) -> Result<OutputBatch, BackendError> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        control.on_cancel(move || {
            *s.0.lock().unwrap() = true;
            s.1.notify_all();
        });
        let stopped = {
            let guard = stop.0.lock().unwrap();
            *stop
                .1
                .wait_timeout_while(guard, MODEL_TIME, |stopped| !*stopped)
                .unwrap()
                .0
        };
        control.finished();
        if stopped {
            return Err(BackendError::Runtime {
                backend: "test",
                message: "run terminated".into(),
            });
        }
        self.0.infer_with(input, control)
    }

    fn inputs(&self) -> &[TensorInfo] {
        self.0.inputs()
    }

    fn outputs(&self) -> &[TensorInfo] {
        self.0.outputs()
    }
}

struct LongRuns(Box<dyn Loader>);

impl Loader for LongRuns {
    fn load(&self, graph: &GraphSpec<'_>) -> Result<Arc<dyn Backend>, LoadFailure> {
        Ok(Arc::new(LongRun(self.0.load(graph)?)))
    }
}

async fn server(request_timeout_ms: u64) -> TestServer {
    let mut c = uncached();
    c.limits.max_concurrency = Some(1);
    c.limits.request_timeout_ms = request_timeout_ms;
    TestServer::start_with_loader(
        c,
        Box::new(|opts| {
            Ok(Box::new(LongRuns(Box::new(inferd::server::runtimes(
                opts,
            )?))))
        }),
    )
    .await
}

fn body(i: usize) -> serde_json::Value {
    json!({"model": "text-classifier", "instances": [format!("cancel me {i}")]})
}

/// Waits until no backend call is running; returns how long that took.
async fn until_slot_free(s: &TestServer, since: Instant) -> Duration {
    loop {
        let m = s.metrics().await;
        if metric(&m, "inferd_inferences_in_flight") == 0.0 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < MODEL_TIME,
            "the slot is still busy after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn cancelled(m: &str) -> f64 {
    common::metric_sum(m, "inferd_batches_cancelled_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_requests_all_expired_is_stopped_and_its_slot_freed() {
    let s = server(300).await;
    let t = Instant::now();
    let (status, _, v) = s.post_json("/predict", &body(1)).await;
    assert_eq!(status, 504, "{v}");
    let freed = until_slot_free(&s, t).await;
    assert!(
        freed < Duration::from_millis(1_500),
        "freed after {freed:?}"
    );
    assert_eq!(cancelled(&s.metrics().await), 1.0);

    // The freed slot serves the next request at once, not after the 3 s the
    // stopped run would have taken: it expires in turn, 300 ms after it came.
    let t = Instant::now();
    let (status, _, _) = s.post_json("/predict", &body(2)).await;
    assert_eq!(status, 504);
    assert!(t.elapsed() < Duration::from_millis(1_000));
    until_slot_free(&s, t).await;
    assert_eq!(cancelled(&s.metrics().await), 2.0);
    println!("slot freed {freed:?} after the request came (deadline 300 ms, model 3 s)");
    s.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_clients_all_left_is_stopped_and_its_slot_freed() {
    let s = server(10_000).await;
    // Clients that give up after 300 ms: they close their connections, and
    // the server drops their requests.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let t = Instant::now();
    let gone = futures::future::join_all(
        (0..3).map(|i| impatient.post(s.url("/predict")).json(&body(10 + i)).send()),
    )
    .await;
    assert!(gone
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.is_timeout())));
    let freed = until_slot_free(&s, t).await;
    assert!(
        freed < Duration::from_millis(1_500),
        "freed after {freed:?}"
    );
    let m = s.metrics().await;
    assert!(cancelled(&m) >= 1.0, "{m}");
    println!("slot freed {freed:?} after three clients left at 300 ms (model 3 s)");
    s.stop().await.expect("stop");
}

/// The switch reaches ONNX Runtime: a run cancelled before it starts stops at
/// its first node with the runtime's own error, and the session's next run is
/// not stopped by the switch left over.
#[test]
fn onnx_runtime_honours_the_switch_and_the_session_stays_usable() {
    let dylib = inferd_onnx::resolve_dylib(Some(&common::ort_dylib_path()), &common::root())
        .expect("ONNX Runtime");
    inferd_onnx::init(&dylib).expect("init");
    let runtimes = inferd::server::runtimes(inferd_core::backend::BackendOptions {
        intra_threads: 1,
        device: inferd_core::backend::Device::Cpu,
        pool_size: 1,
        arena_shrink_rows: 8,
    })
    .expect("runtimes");
    let repo = inferd_core::repository::Repository::load(&common::root().join("models"), &runtimes)
        .expect("models");
    let model = repo.get("lstm-forecaster", None).expect("model");
    let steps = model.backend.inputs()[0].shape[1] as usize;
    let batch = InputBatch::Windows {
        data: vec![0.5; 8 * steps],
        batch: 8,
        steps,
        features: 1,
    };
    let control = RunControl::new();
    control.cancel();
    let e = model
        .backend
        .infer_with(&batch, &control)
        .expect_err("a cancelled run fails");
    assert!(e.to_string().contains("terminate"), "{e}");
    let out = model
        .backend
        .infer_with(&batch, &RunControl::new())
        .expect("the next run on the same (only) session");
    assert_eq!(out.rows, 8);
}

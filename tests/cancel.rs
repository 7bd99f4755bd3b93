//! A batch nobody waits for is stopped and its slot freed: every request in it
//! passed its deadline, or every client left.
//!
//! The models here run through ONNX Runtime, their batches held at a gate
//! that stays closed (`common::gate`): a call from the batcher never finishes
//! on its own, and leaves only when its run is cancelled, as ONNX Runtime's
//! terminate switch stops a run between nodes. So a slot that comes free was
//! freed by the cancellation, whatever the machine's speed. Warm-up and the
//! golden gate are not held, so the server starts at its usual speed.

mod common;

use std::time::Instant;

use common::gate::{held, Gate, EVENTUALLY};
use common::{metric, uncached, TestServer};
use inferd_core::backend::InputBatch;
use inferd_core::cancel::RunControl;
use serde_json::json;

async fn server(request_timeout_ms: u64, gate: &Gate) -> TestServer {
    let mut c = uncached();
    c.limits.max_concurrency = Some(1);
    c.limits.request_timeout_ms = request_timeout_ms;
    TestServer::start_with_loader(c, held(gate)).await
}

fn body(i: usize) -> serde_json::Value {
    json!({"model": "text-classifier", "instances": [format!("cancel me {i}")]})
}

/// Waits until no backend call is running; a held call never ends by itself,
/// so only a cancelled run frees the slot.
async fn until_slot_free(s: &TestServer, gate: &Gate) {
    let t = Instant::now();
    loop {
        let m = s.metrics().await;
        if metric(&m, "inferd_inferences_in_flight") == 0.0 && gate.waiting() == 0 {
            return;
        }
        assert!(
            t.elapsed() < EVENTUALLY,
            "the slot is still busy: the held run was never cancelled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn cancelled(m: &str) -> f64 {
    common::metric_sum(m, "inferd_batches_cancelled_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_requests_all_expired_is_stopped_and_its_slot_freed() {
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let s = server(300, &gate).await;
    let (status, _, v) = s.post_json("/predict", &body(1)).await;
    assert_eq!(status, 504, "{v}");
    until_slot_free(&s, &gate).await;
    assert_eq!(cancelled(&s.metrics().await), 1.0);

    // The freed slot takes the next request, whose run is held in turn and
    // stopped at its own deadline: one slot, so it ran only because the first
    // run was stopped.
    gate.until_waiting(0, "the first run stopped").await;
    let (status, _, _) = s.post_json("/predict", &body(2)).await;
    assert_eq!(status, 504);
    until_slot_free(&s, &gate).await;
    assert_eq!(cancelled(&s.metrics().await), 2.0);
    s.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_clients_all_left_is_stopped_and_its_slot_freed() {
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let s = server(600_000, &gate).await;
    // Three clients in the one batch, then all leave: their connections
    // close, and the server drops their requests.
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let req = s.client.post(s.url("/predict")).json(&body(10 + i));
            tokio::spawn(req.send())
        })
        .collect();
    common::eventually("the three requests inside the server", || async {
        metric(&s.metrics().await, "inferd_requests_in_flight") == 3.0
    })
    .await;
    gate.until_waiting(1, "their batch held in the model").await;
    for c in clients {
        c.abort();
    }
    until_slot_free(&s, &gate).await;
    let m = s.metrics().await;
    assert!(cancelled(&m) >= 1.0, "{m}");
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

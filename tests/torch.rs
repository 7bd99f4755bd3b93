//! The libtorch backend through the running server (`--features torch`;
//! `scripts/with-torch.sh cargo test --features torch --test torch`).
//!
//! `lstm-forecaster-torch` is the TorchScript twin of `lstm-forecaster`,
//! saved from the same trained module: through both front doors it must
//! reproduce its golden file and give the ONNX twin's forecasts on every
//! held-out window within 1e-5, alone and inside merged batches; and bad
//! input must be refused before libtorch sees it, as for ONNX Runtime.

mod common;

use common::{golden, metric_sum, root, uncached, TestServer};
use serde_json::{json, Value};

const TORCH: &str = "lstm-forecaster-torch";
const ONNX: &str = "lstm-forecaster";
/// Both runtimes run float32 LSTM kernels of their own; the acceptance bound.
const RUNTIME_TOL: f64 = 1e-5;

fn heldout() -> Vec<Value> {
    let p = root().join("models").join(TORCH).join("1/heldout.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    doc["windows"].as_array().unwrap().clone()
}

fn forecasts(body: &Value) -> Vec<f64> {
    body["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions: {body}"))
        .iter()
        .map(|p| p["forecast"]["co2_ppm"].as_f64().unwrap())
        .collect()
}

/// A v2 JSON request for `windows`, and the forecasts from its answer.
fn v2_request(windows: &[Value]) -> Value {
    let data: Vec<f64> = windows
        .iter()
        .flat_map(|w| w.as_array().unwrap().iter().map(|r| r[0].as_f64().unwrap()))
        .collect();
    json!({"inputs": [{"name": "window", "shape": [windows.len(), 26, 1], "datatype": "FP32", "data": data}]})
}

fn v2_forecasts(body: &Value) -> Vec<f64> {
    body["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs: {body}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Asserts `a` and `b` within `tol`; returns the largest difference.
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(worst <= tol, "{what}: max |d| {worst:e} > {tol:e}");
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_reproduces_its_golden_file_on_both_front_doors() {
    let s = TestServer::start(uncached()).await;
    let g = golden(TORCH);
    let tol = g["tolerance"].as_f64().unwrap();
    let cases = g["cases"].as_array().unwrap();
    let windows: Vec<Value> = cases.iter().map(|c| c["input"].clone()).collect();
    let want: Vec<f64> = cases
        .iter()
        .map(|c| c["expected"]["forecast"]["co2_ppm"].as_f64().unwrap())
        .collect();

    let (st, _, body) = s
        .post_json(
            &format!("/v1/models/{TORCH}/predict"),
            &json!({"instances": windows}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_close(&forecasts(&body), &want, tol, "v1, one batch");

    let (st, _, body) = s
        .post_json(&format!("/v2/models/{TORCH}/infer"), &v2_request(&windows))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_close(&v2_forecasts(&body), &want, tol, "v2, one batch");

    for (w, expect) in windows.iter().zip(&want).take(8) {
        let (st, _, one) = s
            .post_json("/predict", &json!({"model": TORCH, "instances": [w]}))
            .await;
        assert_eq!(st, 200, "{one}");
        assert_close(&forecasts(&one), &[*expect], tol, "v1, one at a time");
    }

    // The model describes itself as TorchScript, pinned by its own hash.
    let (st, body) = s.get(&format!("/v1/models/{TORCH}")).await;
    assert_eq!(st, 200);
    assert!(body.contains("\"format\":\"torchscript\""), "{body}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_matches_onnx_on_every_heldout_window() {
    let s = TestServer::start(uncached()).await;
    let windows = heldout();
    assert!(windows.len() > 300, "{} held-out windows", windows.len());
    let mut worst: f64 = 0.0;
    for chunk in windows.chunks(64) {
        let mut got = Vec::new();
        for model in [TORCH, ONNX] {
            let (st, _, body) = s
                .post_json(
                    &format!("/v1/models/{model}/predict"),
                    &json!({"instances": chunk}),
                )
                .await;
            assert_eq!(st, 200, "{model}: {body}");
            let v1 = forecasts(&body);
            let (st, _, body) = s
                .post_json(&format!("/v2/models/{model}/infer"), &v2_request(chunk))
                .await;
            assert_eq!(st, 200, "{model}: {body}");
            // The two front doors agree to the bit: the same rows through the
            // same backend (v1 rounds to JSON's f64 from the same f32).
            assert_close(&v1, &v2_forecasts(&body), 1e-9, "v1 vs v2");
            got.push(v1);
        }
        let d = assert_close(&got[0], &got[1], RUNTIME_TOL, "libtorch vs ONNX Runtime");
        worst = worst.max(d);
    }
    eprintln!(
        "{} held-out windows: max |libtorch - ONNX Runtime| = {worst:e} ppm",
        windows.len()
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_batches_give_the_same_forecasts_as_single_requests() {
    // One slot and a batching window: concurrent one-window requests are
    // merged into batches by the batcher.
    let mut c = uncached();
    c.limits.max_concurrency = Some(1);
    c.batching.max_batch_delay_ms = Some(20);
    let s = std::sync::Arc::new(TestServer::start(c).await);
    let windows: Vec<Value> = heldout().into_iter().take(48).collect();

    let mut tasks = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        let s = s.clone();
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let (model, v2) = ([TORCH, ONNX][i % 2], i % 4 >= 2);
            let got = if v2 {
                let (st, _, body) = s
                    .post_json(
                        &format!("/v2/models/{model}/infer"),
                        &v2_request(std::slice::from_ref(&w)),
                    )
                    .await;
                assert_eq!(st, 200, "{body}");
                v2_forecasts(&body)[0]
            } else {
                let (st, _, body) = s
                    .post_json("/predict", &json!({"model": model, "instances": [w]}))
                    .await;
                assert_eq!(st, 200, "{body}");
                forecasts(&body)[0]
            };
            (i, got)
        }));
    }
    let mut merged = vec![0.0; windows.len()];
    for t in tasks {
        let (i, v) = t.await.unwrap();
        merged[i] = v;
    }
    let m = s.metrics().await;
    let rows = metric_sum(&m, &format!("inferd_batch_size_sum{{model=\"{TORCH}\""));
    let calls = metric_sum(&m, &format!("inferd_batch_size_count{{model=\"{TORCH}\""));
    assert!(
        rows > calls,
        "no merged batch for {TORCH}: {rows} rows in {calls} calls"
    );

    // The same windows, one request each and one at a time, on both runtimes.
    for (i, w) in windows.iter().enumerate() {
        for model in [TORCH, ONNX] {
            let (st, _, body) = s
                .post_json("/predict", &json!({"model": model, "instances": [w]}))
                .await;
            assert_eq!(st, 200, "{body}");
            let alone = forecasts(&body)[0];
            let tol = if model == [TORCH, ONNX][i % 2] {
                1e-9
            } else {
                RUNTIME_TOL
            };
            assert_close(&[merged[i]], &[alone], tol, &format!("window {i}, {model}"));
        }
    }
    match std::sync::Arc::try_unwrap(s) {
        Ok(s) => s.stop().await.unwrap(),
        Err(_) => panic!("server still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_libtorch_on_both_front_doors() {
    let s = TestServer::start(uncached()).await;
    let window = golden(TORCH)["cases"][0]["input"].clone();
    let rows = window.as_array().unwrap().clone();
    let short = Value::Array(rows[..25].to_vec());
    let mut wide = rows.clone();
    wide[2] = json!([350.0, 1.0]);
    let mut huge = rows.clone();
    huge[5] = json!([1e39]);
    let mut stringy = rows.clone();
    stringy[7] = json!(["350"]);
    let mut gappy = rows.clone();
    for r in gappy.iter_mut().take(21) {
        *r = json!([null]);
    }
    let v1 = format!("/v1/models/{TORCH}/predict");
    let cases = [
        (
            json!({"instances": [window.clone(), short]}),
            "instances[1]",
        ),
        (json!({"instances": [wide]}), "instances[0][2]"),
        (json!({"instances": [huge]}), "instances[0][5][0]"),
        (json!({"instances": [stringy]}), "instances[0][7][0]"),
        (json!({"instances": ["not a window"]}), "instances[0]"),
        (json!({"instances": [[]]}), "instances[0]"),
        (json!({"instances": []}), "instances"),
        (json!({"instances": [gappy]}), "instances[0]"),
    ];
    for (body, field) in &cases {
        let (st, _, answer) = s.post_json(&v1, body).await;
        assert_eq!(st, 422, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], "invalid_input", "{answer}");
        assert_eq!(answer["error"]["field"], *field, "{answer}");
    }
    let nan = format!("{{\"model\": \"{TORCH}\", \"instances\": [[[NaN]]]}}");
    let (st, body) = s
        .post_raw("/predict", "application/json", nan.into_bytes())
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );

    let v2 = format!("/v2/models/{TORCH}/infer");
    for (payload, needle) in [
        (
            json!({"inputs": [{"name": "window", "shape": [1, 26, 1], "datatype": "FP32", "data": [1.0]}]}),
            "needs 26 elements",
        ),
        (
            json!({"inputs": [{"name": "window", "shape": [0, 26, 1], "datatype": "FP32", "data": []}]}),
            "",
        ),
        (
            json!({"inputs": [{"name": "window", "shape": [1, 25, 1], "datatype": "FP32", "data": vec![350.0; 25]}]}),
            "",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 26, 1], "datatype": "FP32", "data": []}]}),
            "its input is `window`",
        ),
    ] {
        let (st, _, body) = s.post_json(&v2, &payload).await;
        assert_eq!(st, 400, "{payload} -> {body}");
        let msg = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
        assert!(msg.contains(needle), "{msg}");
    }
    // Nothing above reached the backend: no batch ran, and no 5xx.
    let m = s.metrics().await;
    assert_eq!(
        common::metric_opt(
            &m,
            &format!("inferd_batches_total{{model=\"{TORCH}\",version=\"1\"}}")
        )
        .unwrap_or(0.0),
        0.0
    );
    s.stop().await.unwrap();
}

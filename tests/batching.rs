//! Dynamic batching: concurrent requests are merged into one ONNX Runtime call;
//! results are the same as computed alone, in order, and deadlines hold.

mod common;

use common::gate::{held_past_cancel, Gate};
use common::{golden, long_texts, metric, metric_sum, uncached, TestServer};
use serde_json::{json, Value};

async fn concurrent(s: &TestServer, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let (c, u) = (s.client.clone(), s.url("/predict"));
            tokio::spawn(async move {
                let r = c.post(u).json(&b).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_results_equal_golden_and_batches_really_form() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    cfg.batching.max_batch_delay_ms = Some(20); // hold batches open so requests merge
    let s = TestServer::start(cfg).await;
    for model in ["lstm-forecaster", "text-classifier"] {
        let g = golden(model);
        let tol = g["tolerance"].as_f64().unwrap();
        let cases = g["cases"].as_array().unwrap().clone();
        let bodies = cases
            .iter()
            .map(|c| json!({"model": model, "instances": [c["input"]]}))
            .collect();
        let results = concurrent(&s, bodies).await;
        for ((st, v), c) in results.iter().zip(&cases) {
            assert_eq!(*st, 200, "{v}");
            let p = &v["predictions"][0];
            if model == "lstm-forecaster" {
                let got = p["forecast"]["co2_ppm"].as_f64().unwrap();
                let want = c["expected"]["forecast"]["co2_ppm"].as_f64().unwrap();
                assert!((got - want).abs() <= tol, "{got} vs {want}");
            } else {
                assert_eq!(p["label"], c["expected"]["label"]);
                for l in ["ham", "spam"] {
                    let got = p["scores"][l].as_f64().unwrap();
                    assert!((got - c["expected"]["scores"][l].as_f64().unwrap()).abs() <= tol);
                }
            }
        }
        let m = s.get("/metrics").await.1;
        let rows = metric_sum(&m, &format!("inferd_batch_size_sum{{model=\"{model}\""));
        let calls = metric_sum(&m, &format!("inferd_batch_size_count{{model=\"{model}\""));
        assert!(
            calls >= 1.0 && rows / calls > 1.5,
            "{model}: {rows} instances in {calls} calls: no batching"
        );
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_is_split_across_batches_in_order() {
    let mut cfg = uncached();
    cfg.limits.max_instances = 128;
    cfg.batching.max_batch_size = Some(8);
    let s = TestServer::start(cfg).await;
    let cases = golden("lstm-forecaster")["cases"]
        .as_array()
        .unwrap()
        .clone();
    let windows: Vec<Value> = (0..100)
        .map(|i| cases[(i * 7) % 32]["input"].clone())
        .collect();
    let (st, _, all) = s
        .post_json(
            "/predict",
            &json!({"model": "lstm-forecaster", "instances": windows}),
        )
        .await;
    assert_eq!(st, 200, "{all}");
    let preds = all["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 100);
    for (i, w) in windows.iter().enumerate().step_by(9) {
        let (_, _, one) = s
            .post_json(
                "/predict",
                &json!({"model": "lstm-forecaster", "instances": [w]}),
            )
            .await;
        assert_eq!(one["cached"], json!([false]), "instance {i} computed alone");
        assert_eq!(one["predictions"][0], preds[i], "instance {i}");
    }
    let m = s.get("/metrics").await.1;
    let series = |name: &str, le: Option<&str>| {
        let le = le.map(|b| format!(",le=\"{b}\"")).unwrap_or_default();
        metric(
            &m,
            &format!("inferd_batch_size_{name}{{model=\"lstm-forecaster\",version=\"1\"{le}}}"),
        )
    };
    // The histogram is cumulative: every batch counted up to le="8" is every
    // batch there was, so none held more than 8 instances.
    let (calls, up_to_8) = (series("count", None), series("bucket", Some("8")));
    assert_eq!(up_to_8, calls, "a batch held more than 8 instances:\n{m}");
    assert!(
        series("bucket", Some("1")) < calls,
        "no batch held more than one instance:\n{m}"
    );
    // Exactly: the request in 13 calls (12 of 8, one of 4), then 12 alone.
    assert_eq!(calls, 25.0, "{m}");
    assert_eq!(series("sum", None), 112.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "inferd_batches_total{model=\"lstm-forecaster\",version=\"1\"}"
        ),
        25.0,
        "100 instances in batches of 8, then 12 alone"
    );
    s.stop().await.unwrap();
}

/// Jobs whose deadline passed while they queued are dropped, never computed.
///
/// One slot. The first request's call is held in the model by a gate that
/// even its cancellation does not open (as with a runtime that cannot be
/// stopped), so the slot stays taken; five more requests queue behind it and
/// pass their deadline there (each is answered 504 while the gate is still
/// closed). Then the gate opens: the held call finishes (its request is late
/// too, but it reached the model in time), and the five expired jobs must be
/// dropped at batch formation, never computed. The order is the gate's doing,
/// so no machine is too slow for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_never_reach_the_model() {
    const QUEUED: usize = 5;
    const SIZE: usize = 64;
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    cfg.batching.max_batch_size = Some(SIZE); // one request, one call: none merge
    cfg.limits.request_timeout_ms = 500;
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let s = TestServer::start_with_loader(cfg, held_past_cancel(&gate)).await;
    let series = &common::latest_series("inferd_model_instances_total", "text-classifier");
    let calls = &common::latest_series("inferd_batches_total", "text-classifier");
    // Zero before the first request (warm-up bypasses the batcher; the
    // series exists from the batcher's start, so rates start from zero).
    let before = common::metric_opt(&s.metrics().await, series);
    assert_eq!(before.unwrap_or(0.0), 0.0);

    let body = json!({"model": "text-classifier", "instances": long_texts(SIZE)});
    let first = {
        let (c, u, b) = (s.client.clone(), s.url("/predict"), body.clone());
        tokio::spawn(async move { c.post(u).json(&b).send().await.unwrap().status().as_u16() })
    };
    gate.until_waiting(1, "the first call held in the model")
        .await;
    let late = concurrent(&s, vec![body; QUEUED]).await;
    for (st, v) in &late {
        assert_eq!(
            (*st, v["error"]["code"].as_str()),
            (504, Some("deadline_exceeded")),
            "{v}"
        );
    }
    // All five expired in the queue, behind the held call.
    assert_eq!(gate.waiting(), 1);
    gate.open();
    assert_eq!(
        first.await.unwrap(),
        504,
        "the held call outlasted its deadline too"
    );
    common::eventually("the queue drained", || async {
        let m = s.metrics().await;
        metric(&m, "inferd_inferences_in_flight") == 0.0 && metric(&m, "inferd_queue_depth") == 0.0
    })
    .await;
    let m = s.metrics().await;
    assert_eq!(
        (metric(&m, series) as usize, metric(&m, calls) as usize),
        (SIZE, 1),
        "only the held call reached the model: no expired job did"
    );
    s.stop().await.unwrap();
}

//! Dynamic batching: concurrent requests are merged into one ONNX Runtime call;
//! results are the same as computed alone, in order, and deadlines hold.

mod common;

use std::time::{Duration, Instant};

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
/// One slot, and every model call takes 300 ms (the real model, slowed). Each
/// request is 64 instances, one call of its own. All are sent at once with a
/// 1050 ms deadline: the calls run back to back, so about three finish in time
/// (200), one is running when the deadlines pass (504, though it reached the
/// model before its deadline), and every later one has expired in the queue
/// (504, and must never reach the model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_never_reach_the_model() {
    const N: usize = 12;
    const SIZE: usize = 64;
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    cfg.batching.max_batch_size = Some(SIZE); // one request, one call: none merge
    cfg.limits.request_timeout_ms = 1050;
    let s = TestServer::start_slowed(cfg, Duration::from_millis(300)).await;
    let series = &common::latest_series("inferd_model_instances_total", "text-classifier");
    let calls = &common::latest_series("inferd_batches_total", "text-classifier");
    // Zero before the first request (warm-up bypasses the batcher; the
    // series exists from the batcher's start, so rates start from zero).
    let before = common::metric_opt(&s.metrics().await, series);
    assert_eq!(before.unwrap_or(0.0), 0.0);

    let body = json!({"model": "text-classifier", "instances": long_texts(SIZE)});
    let results = concurrent(&s, vec![body; N]).await;
    let ok = results.iter().filter(|(st, _)| *st == 200).count();
    let late = results
        .iter()
        .filter(|(st, v)| *st == 504 && v["error"]["code"] == "deadline_exceeded")
        .count();
    assert_eq!(ok + late, N, "{results:?}");
    assert!(ok >= 1 && late >= 1, "ok {ok}, late {late}");

    // Let the call running at the deadline finish, then count what the model
    // computed.
    let t = Instant::now();
    let m = loop {
        let m = s.metrics().await;
        if metric(&m, "inferd_inferences_in_flight") == 0.0
            && metric(&m, "inferd_queue_depth") == 0.0
        {
            break m;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "never drained:\n{m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ran = metric(&m, series) as usize;
    let batches = metric(&m, calls) as usize;
    eprintln!("{ok} in time, {late} late; {ran} instances in {batches} calls");
    // Everything answered 200 ran; beyond that, at most the one call that was
    // running when the deadlines passed. No request that expired in the queue
    // reached the model.
    assert!(
        ran == ok * SIZE || ran == (ok + 1) * SIZE,
        "{ran} instances computed for {ok} answered requests of {SIZE}: \
         {} of the {late} late requests reached the model",
        (ran as f64 - (ok * SIZE) as f64) / SIZE as f64
    );
    assert_eq!(batches * SIZE, ran, "one call per request");
    assert!(
        late >= 4,
        "the deadline fell too late to test anything: {ok} in time, {late} late"
    );
    s.stop().await.unwrap();
}

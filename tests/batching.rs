//! Dynamic batching: concurrent requests are merged into one ONNX Runtime call;
//! results are the same as computed alone, in order, and deadlines hold.

mod common;

use common::{golden, long_texts, uncached, TestServer};
use serde_json::{json, Value};

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

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
    cfg.max_concurrency = Some(1);
    cfg.max_batch_delay_ms = Some(20); // hold batches open so requests merge
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
    cfg.max_instances = 128;
    cfg.max_batch_size = Some(8);
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
        assert_eq!(one["predictions"][0], preds[i], "instance {i}");
    }
    let m = s.get("/metrics").await.1;
    assert!(
        m.contains("inferd_batch_size_bucket{model=\"lstm-forecaster\",version=\"1\",le=\"8\"}")
    );
    assert!(
        metric_sum(&m, "inferd_batches_total{model=\"lstm-forecaster\"") >= 13.0,
        "100 instances in batches of 8"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_never_reach_the_model() {
    let mut cfg = uncached();
    cfg.max_concurrency = Some(1);
    // 24 requests of 2 jobs of 32 long texts is about 48 x 7 ms of model time on
    // one slot: well past the deadline for the last ones, far within it for the first.
    cfg.request_timeout_ms = 200;
    let s = TestServer::start(cfg).await;
    let body = json!({"model": "text-classifier", "instances": long_texts(64)});
    let results = concurrent(&s, vec![body; 24]).await;
    let ok = results.iter().filter(|(st, _)| *st == 200).count();
    let late = results
        .iter()
        .filter(|(st, v)| *st == 504 && v["error"]["code"] == "deadline_exceeded")
        .count();
    assert_eq!(ok + late, 24, "{results:?}");
    assert!(ok >= 1 && late >= 1, "ok {ok}, late {late}");
    // Let the slot drain, then count what the model computed: expired jobs were
    // dropped in the queue, so fewer than 24 x 64 instances ran.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let m = s.get("/metrics").await.1;
    let ran = metric_sum(&m, "inferd_model_instances_total{model=\"text-classifier\"");
    assert!(
        ran < (24.0 - 1.0) * 64.0,
        "{ran} instances ran for {ok} answered requests"
    );
    s.stop().await.unwrap();
}

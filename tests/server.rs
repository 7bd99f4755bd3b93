//! End-to-end tests of the HTTP API against the real models and real ONNX Runtime.

mod common;

use std::time::{Duration, Instant};

use common::{config, golden, long_texts, metric, uncached, TestServer};
use serde_json::{json, Value};

/// One alone and all in one request give the same (golden) answers. The cache
/// is off, so every answer is the model's: with it on, the batched request
/// would be answered from the cache the single ones filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_classifier_reproduces_golden_one_by_one_and_batched() {
    let s = TestServer::start(uncached()).await;
    let g = golden("text-classifier");
    let tol = g["tolerance"].as_f64().unwrap();
    let cases = g["cases"].as_array().unwrap();
    let check = |pred: &Value, case: &Value| {
        assert_eq!(
            pred["label"], case["expected"]["label"],
            "{}",
            case["source"]
        );
        for label in ["ham", "spam"] {
            let got = pred["scores"][label].as_f64().unwrap();
            let want = case["expected"]["scores"][label].as_f64().unwrap();
            assert!(
                (got - want).abs() <= tol,
                "{} {label}: {got} vs {want}",
                case["source"]
            );
        }
    };
    for case in cases.iter().take(8) {
        let (st, h, body) = s
            .post_json(
                "/predict",
                &json!({"model": "text-classifier", "instances": [case["input"]]}),
            )
            .await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["model"], "text-classifier");
        assert_eq!(body["version"], common::latest_version("text-classifier"));
        assert!(h.contains_key("x-request-id") && h.contains_key("x-inference-time"));
        assert_eq!(body["cached"], json!([false]), "computed by the model");
        check(&body["predictions"][0], case);
    }
    // All cases in one request: order kept, same results as alone.
    let all: Vec<Value> = cases.iter().map(|c| c["input"].clone()).collect();
    let (st, _, body) = s
        .post_json(
            "/v1/models/text-classifier/predict",
            &json!({"instances": all}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let preds = body["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), cases.len());
    assert_eq!(
        body["cached"],
        json!(vec![false; cases.len()]),
        "computed by the model"
    );
    for (p, c) in preds.iter().zip(cases) {
        check(p, c);
    }
    // Every instance of both passes reached the model.
    let ran = metric(
        &s.metrics().await,
        &common::latest_series("inferd_model_instances_total", "text-classifier"),
    );
    assert_eq!(ran as usize, 8 + cases.len());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lstm_forecaster_reproduces_golden() {
    // Cache off: the single request below must be computed, not looked up.
    let s = TestServer::start(uncached()).await;
    let g = golden("lstm-forecaster");
    let tol = g["tolerance"].as_f64().unwrap();
    let cases = g["cases"].as_array().unwrap();
    let windows: Vec<Value> = cases.iter().map(|c| c["input"].clone()).collect();
    let (st, _, body) = s
        .post_json(
            "/v1/models/lstm-forecaster/versions/1/predict",
            &json!({"instances": windows}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let preds = body["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), cases.len());
    for (p, c) in preds.iter().zip(cases) {
        let got = p["forecast"]["co2_ppm"].as_f64().unwrap();
        let want = c["expected"]["forecast"]["co2_ppm"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= tol,
            "{}: {got} vs {want}",
            c["source"]
        );
    }
    // One at a time gives the same numbers as the batch.
    let (st, _, one) = s
        .post_json(
            "/predict",
            &json!({"model": "lstm-forecaster", "version": "1", "instances": [windows[3]]}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(one["cached"], json!([false]), "computed by the model");
    assert_eq!(one["predictions"][0], preds[3]);
    s.stop().await.unwrap();
}

/// Each bad input, its status, its code, and the field its message must name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_error_is_json_with_status_code_and_field() {
    let mut cfg = config();
    cfg.limits.max_body_bytes = 64 * 1024;
    cfg.limits.max_instances = 4;
    let s = TestServer::start(cfg).await;
    let window = golden("lstm-forecaster")["cases"][0]["input"].clone();
    let mut short = window.clone();
    short.as_array_mut().unwrap().pop();
    let mut wide = window.clone();
    wide[2] = json!([1.0, 2.0]);
    let mut huge = window.clone();
    huge[5][0] = json!(1e39);
    let mut stringy = window.clone();
    stringy[7][0] = json!("350.1");

    struct Case {
        path: &'static str,
        body: Value,
        status: u16,
        code: &'static str,
        field: Option<&'static str>,
    }
    let c = |path, body, status, code, field| Case {
        path,
        body,
        status,
        code,
        field,
    };
    let cases = vec![
        c(
            "/predict",
            json!({"model": "nope", "instances": ["x"]}),
            404,
            "model_not_found",
            None,
        ),
        c(
            "/predict",
            json!({"model": "text-classifier", "version": "9", "instances": ["x"]}),
            404,
            "version_not_found",
            None,
        ),
        c(
            "/v1/models/text-classifier/versions/abc/predict",
            json!({"instances": ["x"]}),
            404,
            "version_not_found",
            None,
        ),
        c(
            "/predict",
            json!({"instances": ["x"]}),
            422,
            "invalid_input",
            Some("model"),
        ),
        c(
            "/predict",
            json!({"model": "text-classifier"}),
            422,
            "invalid_input",
            Some("instances"),
        ),
        c(
            "/predict",
            json!({"model": "text-classifier", "instances": []}),
            422,
            "invalid_input",
            Some("instances"),
        ),
        c(
            "/predict",
            json!({"model": "text-classifier", "instances": ["a", "b", "c", "d", "e"]}),
            422,
            "invalid_input",
            Some("instances"),
        ),
        c(
            "/predict",
            json!({"model": "text-classifier", "instances": "hello"}),
            422,
            "invalid_input",
            Some("instances"),
        ),
        c(
            "/predict",
            json!({"model": "text-classifier", "instances": ["ok", 42]}),
            422,
            "invalid_input",
            Some("instances[1]"),
        ),
        // Version 1 takes clean text: its own size limit, and no NUL.
        c(
            "/v1/models/text-classifier/versions/1/predict",
            json!({"instances": ["x".repeat(16385)]}),
            422,
            "invalid_input",
            Some("instances[0]"),
        ),
        c(
            "/v1/models/text-classifier/versions/1/predict",
            json!({"instances": ["a\u{0}b"]}),
            422,
            "invalid_input",
            Some("instances[0]"),
        ),
        c(
            "/predict",
            json!({"model": 5, "instances": ["x"]}),
            422,
            "invalid_input",
            Some("model"),
        ),
        c(
            "/predict",
            json!({"model": "text-classifier", "version": 1, "instances": ["x"]}),
            422,
            "invalid_input",
            Some("version"),
        ),
        c(
            "/v1/models/text-classifier/predict",
            json!({"model": "lstm-forecaster", "instances": ["x"]}),
            422,
            "invalid_input",
            Some("model"),
        ),
        c(
            "/v1/models/lstm-forecaster/predict",
            json!({"instances": [window.clone(), short]}),
            422,
            "invalid_input",
            Some("instances[1]"),
        ),
        c(
            "/v1/models/lstm-forecaster/predict",
            json!({"instances": [wide]}),
            422,
            "invalid_input",
            Some("instances[0][2]"),
        ),
        c(
            "/v1/models/lstm-forecaster/predict",
            json!({"instances": [huge]}),
            422,
            "invalid_input",
            Some("instances[0][5][0]"),
        ),
        c(
            "/v1/models/lstm-forecaster/predict",
            json!({"instances": [stringy]}),
            422,
            "invalid_input",
            Some("instances[0][7][0]"),
        ),
        c(
            "/v1/models/lstm-forecaster/predict",
            json!({"instances": ["not a window"]}),
            422,
            "invalid_input",
            Some("instances[0]"),
        ),
        c(
            "/v1/models/lstm-forecaster/predict",
            json!({"instances": [[]]}),
            422,
            "invalid_input",
            Some("instances[0]"),
        ),
        c(
            "/v1/models/lstm-forecaster/predict",
            json!({"instances": []}),
            422,
            "invalid_input",
            Some("instances"),
        ),
    ];
    for case in &cases {
        let (st, _, body) = s.post_json(case.path, &case.body).await;
        let ctx = format!(
            "{} {} -> {body}",
            case.path,
            case.body.to_string().chars().take(120).collect::<String>()
        );
        assert_eq!(st, case.status, "{ctx}");
        assert_eq!(body["error"]["code"], case.code, "{ctx}");
        let msg = body["error"]["message"].as_str().unwrap_or("");
        assert!(!msg.is_empty(), "{ctx}");
        if let Some(f) = case.field {
            assert_eq!(body["error"]["field"], f, "{ctx}");
        }
    }

    // Unknown fields are named in the message.
    let (st, _, body) = s
        .post_json(
            "/predict",
            &json!({"model": "text-classifier", "instance": ["x"]}),
        )
        .await;
    assert_eq!(st, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("instance"),
        "{body}"
    );

    // Malformed JSON, NaN literals, wrong content type, oversized body.
    for raw in [
        &b"{\"model\": "[..],
        b"{\"model\": \"lstm-forecaster\", \"instances\": [[[NaN]]]}",
        b"",
        b"\xff\xfe",
    ] {
        let (st, body) = s
            .post_raw("/predict", "application/json", raw.to_vec())
            .await;
        assert_eq!(st, 400, "{body}");
        assert_eq!(body["error"]["code"], "malformed_json");
    }
    let (st, body) = s.post_raw("/predict", "text/plain", b"{}".to_vec()).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let big = json!({"model": "text-classifier", "instances": ["y".repeat(70 * 1024)]});
    let (st, body) = s
        .post_raw("/predict", "application/json", big.to_string().into_bytes())
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );

    // Unknown route and wrong method are JSON too.
    let r = s.client.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    let r = s.client.get(s.url("/predict")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "method_not_allowed"
    );

    // None of that produced a 5xx in the metrics.
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("inferd_requests_total") && l.contains("status=\"5")),
        "{metrics}"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_listing_describes_inputs_outputs_and_labels() {
    let s = TestServer::start(config()).await;
    let (st, body) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    let models = v["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["lstm-forecaster", "text-classifier", "text-classifier"]
    );
    for (text, version) in models[1..].iter().zip(["1", "2"]) {
        assert_eq!(text["version"], version);
        assert_eq!(text["status"], "ready");
        assert_eq!(text["labels"], json!(["ham", "spam"]));
        assert_eq!(text["inputs"][0]["name"], "text");
    }
    // Version 2 says it takes raw messages and how the server prepares them.
    let instance = models[2]["instance"].as_str().unwrap();
    assert!(
        instance.contains("raw RFC 822") && instance.contains("4000 characters"),
        "{instance}"
    );
    let lstm = &models[0];
    assert_eq!(lstm["inputs"][0]["shape"], json!([-1, 26, 1]));
    assert_eq!(lstm["timeseries"]["features"], json!(["co2_ppm"]));
    let (st, body) = s.get("/v1/models/text-classifier").await;
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["latest"], "2");
    let (st, _) = s.get("/v1/models/nope").await;
    assert_eq!(st, 404);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_request_ids() {
    let s = TestServer::start(config()).await;
    let r = s
        .client
        .post(s.url("/predict"))
        .header("x-request-id", "abc-123")
        .json(&json!({"model": "text-classifier", "instances": ["hello there"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert!(r.headers().contains_key("x-queue-time"));
    let (st, body) = s.get("/healthz").await;
    assert_eq!(st, 200, "{body}");
    let (_, m) = s.get("/metrics").await;
    let requests = format!(
        "inferd_requests_total{{model=\"text-classifier\",protocol=\"http\",status=\"200\",version=\"{}\"}} 1",
        common::latest_version("text-classifier")
    );
    for needle in [
        requests.as_str(),
        "inferd_inference_duration_seconds_bucket",
        "inferd_queue_wait_seconds_bucket",
        "inferd_request_duration_seconds_bucket",
        "inferd_inferences_in_flight 0",
        "inferd_queue_depth 0",
        "inferd_model_info{model=\"lstm-forecaster\"",
        "inferd_ready 1",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_warmed_up() {
    let mut cfg = config();
    // Enough warm-up work that the window before readiness is wide (about a second).
    cfg.models.warmup_runs = 4000;
    let s = TestServer::spawn(cfg).await;
    let (st, body) = s.get("/healthz").await;
    assert_eq!(st, 200, "alive while loading: {body}");
    let (st, body) = s.get("/readyz").await;
    assert_eq!(st, 503, "{body}");
    let (st, h, body) = s
        .post_json(
            "/predict",
            &json!({"model": "text-classifier", "instances": ["x"]}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (503, Some("not_ready")),
        "{body}"
    );
    assert!(h.contains_key("retry-after"));
    s.wait_ready().await;
    let (st, _, _) = s
        .post_json(
            "/predict",
            &json!({"model": "text-classifier", "instances": ["x"]}),
        )
        .await;
    assert_eq!(st, 200);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_with_429_and_never_5xx() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    cfg.limits.max_queue = 2;
    let s = TestServer::start(cfg).await;
    let body = json!({"model": "text-classifier", "instances": long_texts(64)});
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let client = s.client.clone();
        let url = s.url("/predict");
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, retry, v)
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                shed += 1;
                assert_eq!(v["error"]["code"], "queue_full");
                assert_eq!(retry.as_deref(), Some("1"));
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
    let (_, m) = s.get("/metrics").await;
    assert!(
        m.contains("inferd_rejections_total{reason=\"queue_full\"}"),
        "{m}"
    );
    s.stop().await.unwrap();
}

/// While the queue is full a prediction is refused before its body is read:
/// malformed JSON gets 429, not 400, on both front doors, each in its own
/// error format, and the requests already admitted still finish with 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_before_reading_the_body() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    cfg.limits.max_queue = 1;
    let s = TestServer::start_slowed(cfg, Duration::from_millis(600)).await;
    let body = json!({"model": "lstm-forecaster", "instances": [golden("lstm-forecaster")["cases"][0]["input"]]});
    let admitted: Vec<_> = (0..2)
        .map(|i| {
            let (client, url, body) = (s.client.clone(), s.url("/predict"), body.clone());
            tokio::spawn(async move {
                // The first takes the slot, the second the one queue place.
                tokio::time::sleep(Duration::from_millis(150 * i)).await;
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (st, v) = s
        .post_raw("/predict", "application/json", b"{not json".to_vec())
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (429, Some("queue_full")),
        "{v}"
    );
    let (st, v) = s
        .post_raw(
            "/v2/models/lstm-forecaster/infer",
            "application/json",
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(st, 429, "{v}");
    assert!(v["error"].is_string(), "the v2 error shape: {v}");
    for t in admitted {
        assert_eq!(t.await.unwrap(), 200);
    }
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "inferd_requests_total{model=\"\",protocol=\"http\",status=\"429\",version=\"\"}"
        ),
        2.0
    );
    s.stop().await.unwrap();
}

/// A request past its deadline gets 504, and its inference slot comes back: with
/// one slot, a leaked one would make every later prediction wait and time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_returns_504() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    // Every model call takes 50 ms; a request of 64 instances in batches of 4 is
    // 16 calls (800 ms), four times its 200 ms deadline. One instance is one call,
    // well within it.
    cfg.batching.max_batch_size = Some(4);
    cfg.limits.request_timeout_ms = 200;
    let s = TestServer::start_slowed(cfg, Duration::from_millis(50)).await;
    let body = json!({"model": "text-classifier", "instances": long_texts(64)});
    let (st, _, v) = s.post_json("/predict", &body).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (504, Some("deadline_exceeded")),
        "{v}"
    );
    // The server is still healthy...
    let (st, _) = s.get("/healthz").await;
    assert_eq!(st, 200);
    // ...and the model still serves: the slot was released (the call running
    // at the deadline finishes, the request's other parts are dropped).
    for i in 0..3 {
        let (st, _, v) = s
            .post_json(
                "/predict",
                &json!({"model": "text-classifier", "instances": [format!("after the deadline {i}")]}),
            )
            .await;
        assert_eq!(st, 200, "prediction {i} after a 504: {v}");
        assert_eq!(v["predictions"].as_array().map(Vec::len), Some(1));
    }
    let m = s.metrics().await;
    assert_eq!(metric(&m, "inferd_inferences_in_flight"), 0.0, "{m}");
    assert_eq!(metric(&m, "inferd_queue_depth"), 0.0, "{m}");
    // The 504'd request's parts past the deadline never ran: 64 instances were
    // asked for, at most the calls that started before the deadline ran.
    let ran = metric(
        &m,
        &common::latest_series("inferd_model_instances_total", "text-classifier"),
    );
    // Calls take at least 50 ms each, so at most 4 of the 16 start before the
    // 200 ms deadline; the first starts at once.
    assert!(
        (3.0 + 4.0..=3.0 + 4.0 * 4.0).contains(&ran),
        "{ran} instances ran"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    let mut s = TestServer::start(cfg).await;
    let body = json!({"model": "text-classifier", "instances": long_texts(64)});
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = s.client.clone();
        let url = s.url("/predict");
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    // Wait until all six are inside the server (validated; running or queued).
    let started = Instant::now();
    loop {
        let (_, m) = s.get("/metrics").await;
        if m.contains("inferd_request_instances_count{model=\"text-classifier\"} 6") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    s.trigger_shutdown();
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["predictions"].as_array().unwrap().len(), 64);
    }
    let addr = s.addr;
    s.handle.await.unwrap().unwrap();
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "listener closed after drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_server_turns_unready_and_refuses_new_work() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    cfg.net.drain_delay_ms = 600;
    let mut s = TestServer::start(cfg).await;
    let body = json!({"model": "text-classifier", "instances": long_texts(64)});
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let (c, u, b) = (s.client.clone(), s.url("/predict"), body.clone());
            tokio::spawn(async move { c.post(&u).json(&b).send().await.unwrap().status().as_u16() })
        })
        .collect();
    // Accepted means inside the server: one running, the others queued.
    let t = Instant::now();
    while !s
        .get("/metrics")
        .await
        .1
        .contains("inferd_request_instances_count{model=\"text-classifier\"} 3")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "requests never queued"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    s.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (st, body_text) = s.get("/readyz").await;
    assert_eq!(st, 503, "{body_text}");
    assert!(body_text.contains("draining"));
    let (st, h, v) = s
        .post_json(
            "/predict",
            &json!({"model": "text-classifier", "instances": ["x"]}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (503, Some("draining")),
        "{v}"
    );
    assert!(h.contains_key("retry-after"));
    let (st, _) = s.get("/healthz").await;
    assert_eq!(st, 200, "still alive while draining");
    for r in in_flight {
        assert_eq!(r.await.unwrap(), 200, "accepted work finishes");
    }
    s.handle.await.unwrap().unwrap();
}

/// Requests in flight, jobs queued for a slot, and inferences running, now.
async fn load_now(s: &TestServer) -> (f64, f64, f64) {
    let m = s.metrics().await;
    (
        metric(&m, "inferd_requests_in_flight"),
        metric(&m, "inferd_queue_depth"),
        metric(&m, "inferd_inferences_in_flight"),
    )
}

/// The 99th percentile of `n` `/healthz` latencies, probes 5 ms apart; with
/// `during`, each probe is bracketed by two `load_now` looks, returned too.
async fn probe_health(s: &TestServer, n: usize, during: bool) -> (Duration, Vec<(f64, f64, f64)>) {
    let mut lat = Vec::with_capacity(n);
    let mut seen = Vec::new();
    for _ in 0..n {
        if during {
            seen.push(load_now(s).await);
        }
        let t = Instant::now();
        let (st, _) = s.get("/healthz").await;
        lat.push(t.elapsed());
        assert_eq!(st, 200);
        if during {
            seen.push(load_now(s).await);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat.sort();
    (lat[(n * 99).div_ceil(100) - 1], seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_fast_while_inference_is_saturated() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(2);
    // Each model call is the real one plus 50 ms: the two slots stay busy with
    // queued work for as long as the clients keep sending.
    let s = TestServer::start_slowed(cfg, Duration::from_millis(50)).await;
    let (unloaded, _) = probe_health(&s, 100, false).await;

    let body = json!({"model": "text-classifier", "instances": long_texts(64)});
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..16 {
        let (c, u, b, stop) = (
            s.client.clone(),
            s.url("/predict"),
            body.clone(),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c.post(&u).json(&b).send().await.unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    // Saturated: both slots running and more work queued behind them.
    let t = Instant::now();
    loop {
        let (_, queued, running) = load_now(&s).await;
        if running == 2.0 && queued >= 2.0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "never saturated: {queued} queued, {running} running"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (loaded, seen) = probe_health(&s, 100, true).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for t in load {
        let statuses = t.await.unwrap();
        // The queue (512) and the deadline (10 s) are far above this load.
        assert!(statuses.iter().all(|&st| st == 200), "{statuses:?}");
        served += statuses.len();
    }
    assert!(served >= 16, "{served} requests served");

    // Every probe ran while requests were queued behind busy slots; the slots
    // were never over-committed, and were full at most looks (a look can fall in
    // the instant between two batches).
    for &(requests, queued, running) in &seen {
        assert!(
            requests >= 3.0 && queued >= 1.0 && running <= 2.0,
            "not saturated at a probe: {requests} requests in flight, {queued} queued, {running} running"
        );
    }
    let full = seen
        .iter()
        .filter(|&&(_, _, running)| running == 2.0)
        .count();
    assert!(
        full * 2 >= seen.len(),
        "both slots busy at only {full} of {} looks",
        seen.len()
    );
    eprintln!(
        "/healthz p99 {unloaded:?} idle, {loaded:?} loaded; {served} requests served; \
         both slots busy at {full} of {} looks",
        seen.len()
    );
    // A blocked reactor would make health wait for the queue (seconds of work);
    // a fair one keeps it within a small multiple of its idle latency.
    let bound = (unloaded * 10).max(Duration::from_millis(50));
    assert!(
        loaded <= bound,
        "/healthz p99 {loaded:?} under load, {unloaded:?} idle (bound {bound:?})"
    );
    s.stop().await.unwrap();
}

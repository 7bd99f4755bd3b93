//! End-to-end tests of the HTTP API against the real models and real ONNX Runtime.

mod common;

use std::time::{Duration, Instant};

use common::gate::{held, Gate};
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
    let listed: Vec<(String, String)> = models
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().into(),
                m["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        served_versions(),
        "every version on disk this build serves"
    );
    for m in models {
        let (name, version) = (m["name"].as_str().unwrap(), m["version"].as_str().unwrap());
        let manifest = common::manifest(name, version);
        assert_eq!(m["status"], "ready");
        assert_eq!(m["task"], manifest["task"].as_str().unwrap());
        let input = &manifest["inputs"].as_array().unwrap()[0];
        assert_eq!(m["inputs"][0]["name"], input["name"].as_str().unwrap());
        let shape: Vec<i64> = input["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_integer().unwrap())
            .collect();
        assert_eq!(m["inputs"][0]["shape"], json!(shape));
        if let Some(text) = manifest.get("text") {
            let labels: Vec<&str> = text["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap())
                .collect();
            assert_eq!(m["labels"], json!(labels));
            // A version whose manifest cleans email says so, with its cut.
            if let Some(cut) = text.get("truncate_chars").and_then(|c| c.as_integer()) {
                let instance = m["instance"].as_str().unwrap();
                assert!(
                    instance.contains("raw RFC 822")
                        && instance.contains(&format!("{cut} characters")),
                    "{instance}"
                );
            }
        }
        if let Some(ts) = manifest.get("timeseries") {
            let features: Vec<&str> = ts["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            assert_eq!(m["timeseries"]["features"], json!(features));
        }
    }
    let (st, body) = s.get("/v1/models/text-classifier").await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["latest"],
        common::latest_version("text-classifier")
    );
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

/// `n` copies of `body` sent to `/predict` at once: each answer's status,
/// `Retry-After` and body.
async fn burst(s: &TestServer, body: &Value, n: usize) -> Vec<(u16, Option<String>, Value)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, body) = (s.client.clone(), s.url("/predict"), body.clone());
            tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let status = r.status().as_u16();
                (status, retry, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// Static limits: only INFERD_MAX_QUEUE bounds the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_with_429_and_never_5xx() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    cfg.limits.max_queue = 2;
    cfg.limits.admission = inferd::config::AdmissionMode::Static;
    let s = TestServer::start(cfg).await;
    let body = json!({"model": "text-classifier", "instances": long_texts(64)});
    let (mut ok, mut shed) = (0, 0);
    for (status, retry, v) in burst(&s, &body, 40).await {
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

/// Adaptive limits (the default), with a global bound far above them: a
/// burst of large requests on one slot is refused by the model's queue by
/// time, each refusal a 429 with a `Retry-After` of at least a second, and
/// every admitted request answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_by_time_with_a_retry_after() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    let s = TestServer::start(cfg).await;
    let body = json!({"model": "text-classifier", "instances": long_texts(64)});
    // Measured first: the limit follows what the model did.
    for _ in 0..3 {
        assert_eq!(s.post_json("/predict", &body).await.0, 200);
    }
    let (mut ok, mut shed) = (0, 0);
    for (status, retry, v) in burst(&s, &body, 40).await {
        let retry = retry.and_then(|r| r.parse::<u64>().ok());
        match status {
            200 => ok += 1,
            429 => {
                shed += 1;
                assert_eq!(v["error"]["code"], "overloaded", "{v}");
                assert!(retry.is_some_and(|r| r >= 1), "{retry:?}");
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "inferd_rejections_total{reason=\"queue_time\"}"),
        f64::from(shed),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "inferd_queue_limit{model=\"text-classifier\",version=\"2\"}"
        ) >= 32.0
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
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let s = TestServer::start_with_loader(cfg, held(&gate)).await;
    let body = json!({"model": "lstm-forecaster", "instances": [golden("lstm-forecaster")["cases"][0]["input"]]});
    let send = |body: Value| {
        let (client, url) = (s.client.clone(), s.url("/predict"));
        tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            r.status().as_u16()
        })
    };
    // The first takes the slot (held in the model), the second the one
    // queue place.
    let first = send(body.clone());
    gate.until_waiting(1, "the first request in the model")
        .await;
    let second = send(body);
    common::eventually("the second request queued", || async {
        metric(&s.metrics().await, "inferd_queue_depth") == 1.0
    })
    .await;
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
    gate.open();
    for t in [first, second] {
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

/// `/predict` names its model in the body, so with both models loaded the
/// door cannot refuse it unread. With the text model's queue over its
/// adaptive limit, a body naming that model is refused (429 `overloaded`) as
/// soon as its model resolves, before its instances are decoded: instances
/// the model would reject (422) are never looked at. A request naming the
/// other model goes on, and once the queue drains the same body is decoded
/// and gets its 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_names_its_model_in_the_body_and_is_refused_before_decoding() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    let gate = Gate::closed();
    gate.open();
    let _open = gate.open_on_drop();
    let s = TestServer::start_with_loader(cfg, held(&gate)).await;
    let fill = json!({"model": "text-classifier", "instances": long_texts(64)});
    let limit_series = "inferd_queue_limit{model=\"text-classifier\",version=\"2\"}";
    let queued_series = "inferd_queue_instances{model=\"text-classifier\",version=\"2\"}";
    // Measured first: the limit follows what the model did.
    for _ in 0..3 {
        assert_eq!(s.post_json("/predict", &fill).await.0, 200);
    }
    common::eventually("the text model's queue limit measured", || async {
        metric(&s.metrics().await, limit_series) > 0.0
    })
    .await;
    gate.close();
    let send = |body: Value| {
        let (client, url) = (s.client.clone(), s.url("/predict"));
        tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            r.status().as_u16()
        })
    };
    let mut admitted = vec![send(fill.clone())];
    gate.until_waiting(1, "a text batch in the model").await;
    // Queue requests until the queue is over its limit.
    loop {
        let m = s.metrics().await;
        let (queued, limit) = (metric(&m, queued_series), metric(&m, limit_series));
        if queued > limit {
            break;
        }
        admitted.push(send(fill.clone()));
        common::eventually("the request queued", || async {
            metric(&s.metrics().await, queued_series) > queued
        })
        .await;
    }
    let invalid = json!({"model": "text-classifier", "instances": [42]});
    let (st, _, v) = s.post_json("/predict", &invalid).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (429, Some("overloaded")),
        "{v}"
    );
    let window = golden("lstm-forecaster")["cases"][0]["input"].clone();
    let other = send(json!({"model": "lstm-forecaster", "instances": [window]}));
    gate.open();
    for t in admitted {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(other.await.unwrap(), 200, "the other model is not refused");
    let (st, _, v) = s.post_json("/predict", &invalid).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("invalid_input")),
        "{v}"
    );
    assert_eq!(
        metric(
            &s.metrics().await,
            "inferd_rejections_total{reason=\"queue_time\"}"
        ),
        1.0
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
    // 200 ms deadline (how many do depends on the machine's load: none, on
    // one busy enough); the three later requests ran one instance each.
    assert!(
        (3.0..=3.0 + 4.0 * 4.0).contains(&ran),
        "{ran} instances ran"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    // Six requests of 64 instances at once are more than one slot drains
    // within the adaptive target, so some would be refused (429) depending on
    // the machine's speed; this test is about the drain, so every request is
    // admitted, as with the fixed bound alone.
    cfg.limits.admission = inferd::config::AdmissionMode::Static;
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
    common::eventually("all six requests inside the server", || async {
        s.get("/metrics")
            .await
            .1
            .contains("inferd_request_instances_count{model=\"text-classifier\"} 6")
    })
    .await;
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
    // Admitted whatever the machine's speed (see the test above).
    cfg.limits.admission = inferd::config::AdmissionMode::Static;
    // The listener stays open, answering 503, for the drain delay: the checks
    // below must fit in it, with room for a loaded machine.
    cfg.net.drain_delay_ms = 5_000;
    let mut s = TestServer::start(cfg).await;
    let body = json!({"model": "text-classifier", "instances": long_texts(64)});
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let (c, u, b) = (s.client.clone(), s.url("/predict"), body.clone());
            tokio::spawn(async move { c.post(&u).json(&b).send().await.unwrap().status().as_u16() })
        })
        .collect();
    // Accepted means inside the server: one running, the others queued.
    common::eventually("three requests inside the server", || async {
        s.get("/metrics")
            .await
            .1
            .contains("inferd_request_instances_count{model=\"text-classifier\"} 3")
    })
    .await;
    s.trigger_shutdown();
    common::eventually("/readyz says 503 once the drain begins", || async {
        s.get("/readyz").await.0 == 503
    })
    .await;
    let (_, body_text) = s.get("/readyz").await;
    assert!(body_text.contains("draining"), "{body_text}");
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

/// With every inference slot held busy and work queued behind them, the
/// probes and the metrics still answer: inference never runs on the reactor,
/// so a saturated model cannot stall the routes that need no model. The
/// saturation is the gate's doing, so it holds for the whole test whatever
/// the machine's speed. How fast `/healthz` answers meanwhile is reported,
/// not asserted: latency is a benchmark's subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_inference_is_saturated() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(2);
    // One request a batch: two held in the slots, the rest queued.
    cfg.batching.max_batch_size = Some(1);
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let s = TestServer::start_with_loader(cfg, held(&gate)).await;
    let body = json!({"model": "text-classifier", "instances": ["held in the model"]});
    let load: Vec<_> = (0..6)
        .map(|i| {
            let (c, u) = (s.client.clone(), s.url("/predict"));
            let mut b = body.clone();
            b["instances"][0] = json!(format!("held in the model {i}"));
            tokio::spawn(async move { c.post(&u).json(&b).send().await.unwrap().status().as_u16() })
        })
        .collect();
    // Saturated: both slots held in the model and the rest queued.
    gate.until_waiting(2, "both slots in the model").await;
    common::eventually("the other four queued", || async {
        load_now(&s).await == (6.0, 4.0, 2.0)
    })
    .await;
    let mut lat = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let (st, _) = s.get("/healthz").await;
        lat.push(t.elapsed());
        assert_eq!(st, 200);
    }
    let (st, body) = s.get("/readyz").await;
    assert_eq!(st, 200, "{body}");
    // Still saturated after every probe: nothing moved while they were answered.
    assert_eq!(load_now(&s).await, (6.0, 4.0, 2.0));
    lat.sort();
    eprintln!(
        "/healthz with both slots held and four requests queued: p50 {:?}, p99 {:?}",
        lat[49], lat[98]
    );
    gate.open();
    for t in load {
        assert_eq!(t.await.unwrap(), 200);
    }
    s.stop().await.unwrap();
}

/// The versions of every model the default build serves (TorchScript
/// versions need the `torch` feature), by name, in the listing's order.
fn served_versions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(common::root().join("models"))
        .expect("models dir")
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    for name in names {
        let mut versions: Vec<u64> = std::fs::read_dir(common::root().join("models").join(&name))
            .expect("model dir")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        versions.sort();
        // The versions the model's policy selects (all without one).
        let policy = std::fs::read_to_string(
            common::root()
                .join("models")
                .join(&name)
                .join("policy.toml"),
        )
        .map(|t| inferd_core::policy::Policy::from_toml(&t).expect("policy.toml parses"))
        .unwrap_or_default();
        let selected = policy.select(&versions.iter().copied().collect());
        for v in versions.into_iter().filter(|v| selected.contains(v)) {
            let m = common::manifest(&name, &v.to_string());
            let torch = m.get("format").and_then(|f| f.as_str()) == Some("torchscript");
            if !torch || cfg!(feature = "torch") {
                out.push((name.clone(), v.to_string()));
            }
        }
    }
    out
}

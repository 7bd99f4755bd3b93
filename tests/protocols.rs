//! The second front door (KServe v2), API keys, and the OpenAPI document, against
//! the real models. tritonclient and schemathesis exercise the same surface from
//! outside in `tests/conformance`.

mod common;

use common::{config, golden, root, TestServer};
use serde_json::{json, Value};

fn with_keys(keys: &str) -> inferd::config::ServeConfig {
    let mut c = config();
    c.auth.api_keys = Some(keys.into());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_infer_and_predict_share_one_pipeline() {
    let s = TestServer::start(config()).await;
    let text = format!(
        "{}\n-- v2 pipeline test",
        golden("text-classifier")["cases"][0]["input"]
            .as_str()
            .unwrap()
    );
    let (st, h, body) = s
        .post_json(
            "/v2/models/text-classifier/infer",
            &json!({"id": "a1", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["id"], "a1");
    assert_eq!(body["model_name"], "text-classifier");
    assert_eq!(h["x-inferd-cached"], "0");
    let names: Vec<&str> = body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["label", "probabilities"]);
    let probs = &body["outputs"][1];
    assert_eq!(probs["shape"], json!([1, 2]));
    // The v2 request filled the cache that /predict reads: one pipeline.
    let (st, _, v1) = s
        .post_json(
            "/predict",
            &json!({"model": "text-classifier", "instances": [text]}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v1["cached"], json!([true]));
    assert_eq!(v1["predictions"][0]["scores"]["spam"], probs["data"][1]);
    let label = body["outputs"][0]["data"][0].as_i64().unwrap() as usize;
    assert_eq!(v1["predictions"][0]["label"], ["ham", "spam"][label]);
    // Both front doors count in the same metrics.
    let (_, metrics) = s.get("/metrics").await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "inferd_requests_total{model=\"text-classifier\",protocol=\"http\",status=\"200\"",
            )
        })
        .expect("request counter");
    assert!(line.ends_with(" 2"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_binary_lstm_request_and_errors() {
    let s = TestServer::start(config()).await;
    let case = &golden("lstm-forecaster")["cases"][0];
    let window: Vec<f32> = case["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_f64().unwrap() as f32)
        .collect();
    let blob: Vec<u8> = window.iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "window", "shape": [1, 26, 1], "datatype": "FP32",
                    "parameters": {"binary_data_size": blob.len()}}],
        "outputs": [{"name": "forecast", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(&blob);
    let r = reqwest::Client::new()
        .post(s.url("/v2/models/lstm-forecaster/versions/1/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let n: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..n]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 4);
    let got = f32::from_le_bytes(bytes[n..n + 4].try_into().unwrap());
    let want = case["expected"]["forecast"]["co2_ppm"].as_f64().unwrap() as f32;
    assert!((got - want).abs() < 1e-3, "{got} vs {want}");

    // Errors: `{"error": "<string>"}` and the protocol's statuses.
    for (path, payload, status, needle) in [
        ("/v2/models/nope/infer", json!({"inputs": []}), 404, "nope"),
        (
            "/v2/models/lstm-forecaster/infer",
            json!({"inputs": [{"name": "window", "shape": [1, 26, 1], "datatype": "FP32", "data": [1.0]}]}),
            400,
            "needs 26 elements",
        ),
        (
            "/v2/models/lstm-forecaster/infer",
            json!({"inputs": [{"name": "x", "shape": [1, 26, 1], "datatype": "FP32", "data": []}]}),
            400,
            "its input is `window`",
        ),
        (
            "/v2/models/text-classifier/infer",
            json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                   "outputs": [{"name": "logits"}]}),
            400,
            "no output `logits`",
        ),
        (
            "/v2/models/text-classifier/infer",
            json!({"inputs": "text"}),
            400,
            "inputs",
        ),
    ] {
        let (st, _, body) = s.post_json(path, &payload).await;
        assert_eq!(st, status, "{path} {body}");
        let msg = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("string error: {body}"));
        assert!(msg.contains(needle), "{msg}");
    }
    let (st, body) = s.get("/v2/nothing-here").await;
    assert_eq!(st, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_model_routes_only() {
    let s = TestServer::start(with_keys("k-alpha,k-beta")).await;
    let c = reqwest::Client::new();
    let body = json!({"model": "text-classifier", "instances": ["hello"]});
    // No key, a wrong key, a wrong scheme: 401 with the route's error shape.
    for auth in [
        None,
        Some("Bearer k-gamma"),
        Some("Basic k-alpha"),
        Some("Bearer "),
    ] {
        let mut req = c.post(s.url("/predict")).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    let r = c
        .get(s.url("/v2/models/text-classifier"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string());
    // Either key works; the scheme is case-insensitive.
    for auth in ["Bearer k-alpha", "bearer k-beta"] {
        let r = c
            .post(s.url("/predict"))
            .header("authorization", auth)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{auth}");
    }
    // Probes, metrics and the API description stay open.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/openapi.json",
    ] {
        let (st, _) = s.get(path).await;
        assert_eq!(st, 200, "{path}");
    }
    let (_, metrics) = s.get("/metrics").await;
    assert!(!metrics.contains("k-alpha"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_committed_and_every_documented_route_exists() {
    let doc = serde_json::to_value(inferd_api::document()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let rendered = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let committed_path = root().join("docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed_path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == rendered,
        "docs/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test --test protocols openapi`"
    );

    // The served document is the same one.
    let s = TestServer::start(config()).await;
    let (st, served) = s.get("/openapi.json").await;
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<Value>(&served).unwrap(), doc);

    // The HTML reference lists every path, and loads nothing from elsewhere.
    let (st, page) = s.get("/docs").await;
    assert_eq!(st, 200);
    for path in doc["paths"].as_object().unwrap().keys() {
        assert!(
            page.contains(&format!("<code>{path}</code>")),
            "{path} missing from /docs"
        );
    }
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));

    // Each documented operation reaches a handler, not the fallback.
    let c = reqwest::Client::new();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 18, "{}", paths.len());
    for (path, ops) in paths {
        let concrete = path
            .replace("{name}", "text-classifier")
            .replace("{version}", "1");
        for method in ops.as_object().unwrap().keys() {
            let r = match method.as_str() {
                "get" => c.get(s.url(&concrete)),
                "post" => c.post(s.url(&concrete)).json(&json!({})),
                other => panic!("undocumented method kind {other}"),
            }
            .send()
            .await
            .unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path}");
            assert!(!text.contains("no route for"), "{method} {path}: {text}");
            let documented = ops[method]["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {path}: {status} undocumented"
            );
        }
    }
}

/// `{...}garbage` is not JSON: every front door answers 400 in its own error
/// shape, though the document before the garbage is a valid request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_characters_after_the_json_document_are_400_on_every_front_door() {
    let s = TestServer::start(common::uncached()).await;
    let window = golden("lstm-forecaster")["cases"][0]["input"].clone();
    let flat: Vec<f64> = window
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_f64().unwrap())
        .collect();
    let v1_doc = json!({"model": "lstm-forecaster", "instances": [window]}).to_string();
    let v1_path_doc = json!({"instances": [window]}).to_string();
    let v2_doc = json!({"inputs": [{"name": "window", "shape": [1, 26, 1], "datatype": "FP32", "data": flat}]})
        .to_string();
    let v1 = [
        ("/predict", v1_doc.as_str()),
        ("/v1/models/lstm-forecaster/predict", v1_path_doc.as_str()),
    ];
    let v2 = "/v2/models/lstm-forecaster/infer";
    let post =
        |path: &'static str, body: String| s.post_raw(path, "application/json", body.into_bytes());

    // The documents are valid requests, trailing whitespace included.
    for (path, doc) in v1.iter().copied().chain([(v2, v2_doc.as_str())]) {
        let (st, body) = post(path, format!("{doc} \n\t")).await;
        assert_eq!(st, 200, "{path}: {body}");
    }
    for tail in ["garbage", "{}", " 1", "]"] {
        for (path, doc) in v1 {
            let (st, body) = post(path, format!("{doc}{tail}")).await;
            assert_eq!(st, 400, "{path} + {tail:?}: {body}");
            assert_eq!(body["error"]["code"], "malformed_json", "{path}: {body}");
            let msg = body["error"]["message"].as_str().unwrap_or("");
            assert!(msg.starts_with("malformed JSON"), "{path}: {body}");
        }
        let (st, body) = post(v2, format!("{v2_doc}{tail}")).await;
        assert_eq!(st, 400, "{v2} + {tail:?}: {body}");
        let msg = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{v2}: a string error: {body}"));
        assert!(msg.starts_with("malformed JSON: "), "{v2}: {msg}");
    }
    // None of them reached the model: only the three valid requests did (the
    // cache is off).
    let (_, m) = s.get("/metrics").await;
    assert_eq!(
        common::metric(
            &m,
            "inferd_model_instances_total{model=\"lstm-forecaster\",version=\"1\"}"
        ),
        3.0,
        "the garbage never got that far"
    );
    s.stop().await.unwrap();
}

//! Model control over HTTP on the real models: the repository API's keys and
//! switch, a version swapped in and out while its requests are in flight, the
//! cache across a swap, the canary split by request id, and polling.

mod common;

use std::path::Path;
use std::time::Duration;

use common::gate::{held, Gate};
use common::{config, copy_dir, root, TestServer};
use inferd::config::ModelControlMode;
use serde_json::{json, Value};

const ADMIN: &str = "admin-key-3c1f";
const USER: &str = "user-key-9e2a";
const TEXT: &str = "the meeting moved to three, agenda attached";

/// The repository with text-classifier 1 only (and lstm-forecaster 1).
/// The models with `text-classifier` 1 and 2 only: version 3 (the
/// time-split control) and the policy that keeps 2 the default are left
/// out, so that the highest version is the default, as these tests expect.
fn models_1_and_2() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&root().join("models"), d.path());
    std::fs::remove_dir_all(d.path().join("text-classifier/3")).unwrap();
    std::fs::remove_file(d.path().join("text-classifier/policy.toml")).unwrap();
    d
}

fn models_without_v2() -> tempfile::TempDir {
    let d = models_1_and_2();
    std::fs::remove_dir_all(d.path().join("text-classifier/2")).unwrap();
    d
}

fn add_v2(models: &Path) {
    copy_dir(
        &root().join("models/text-classifier/2"),
        &models.join("text-classifier/2"),
    );
}

async fn post(
    s: &TestServer,
    path: &str,
    key: Option<&str>,
    body: Value,
    request_id: Option<&str>,
) -> (u16, Value) {
    let mut r = s.client.post(s.url(path)).json(&body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(id) = request_id {
        r = r.header("x-request-id", id);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn load(s: &TestServer, model: &str, config: Option<Value>) -> (u16, Value) {
    let body = match config {
        Some(c) => json!({"parameters": {"config": c.to_string()}}),
        None => json!({}),
    };
    let path = format!("/v2/repository/models/{model}/load");
    post(s, &path, None, body, None).await
}

/// One forecaster window to `/predict`.
async fn forecast(s: &TestServer) -> (u16, Value) {
    let input = common::golden("lstm-forecaster")["cases"][0]["input"].clone();
    post(
        s,
        "/predict",
        None,
        json!({"model": "lstm-forecaster", "instances": [input]}),
        None,
    )
    .await
}

async fn classify(s: &TestServer, version: Option<&str>, id: Option<&str>) -> (u16, Value) {
    let mut body = json!({"model": "text-classifier", "instances": [TEXT]});
    if let Some(v) = version {
        body["version"] = json!(v);
    }
    post(s, "/predict", None, body, id).await
}

fn open_control(models: &Path) -> inferd::config::ServeConfig {
    let mut c = config();
    c.models.models_dir = models.to_path_buf();
    c.models.model_control = ModelControlMode::On;
    c
}

#[tokio::test]
async fn admin_routes_need_an_admin_key_and_the_switch() {
    // Keys on: inference keys are refused on the admin routes, admin keys on
    // the inference routes.
    let mut c = config();
    c.auth.api_keys = Some(USER.into());
    c.auth.admin_keys = Some(ADMIN.into());
    let s = TestServer::start(c).await;
    let index = "/v2/repository/index";
    assert_eq!(post(&s, index, None, json!({}), None).await.0, 401);
    assert_eq!(post(&s, index, Some("wrong"), json!({}), None).await.0, 401);
    let (st, body) = post(&s, index, Some(USER), json!({}), None).await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("admin key"),
        "{body}"
    );
    let (st, body) = post(&s, index, Some(ADMIN), json!({}), None).await;
    assert_eq!(st, 200);
    let list = body.as_array().unwrap();
    assert!(list
        .iter()
        .any(|e| e["name"] == "text-classifier" && e["version"] == "2" && e["state"] == "READY"));
    let body = json!({"model": "lstm-forecaster", "instances": [common::golden("lstm-forecaster")["cases"][0]["input"]]});
    assert_eq!(
        post(&s, "/predict", Some(ADMIN), body.clone(), None)
            .await
            .0,
        401
    );
    assert_eq!(post(&s, "/predict", Some(USER), body, None).await.0, 200);
    // With admin keys, control is on by default (auto).
    let (st, body) = post(
        &s,
        "/v2/repository/models/lstm-forecaster/load",
        Some(ADMIN),
        json!({}),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    s.stop().await.unwrap();

    // No keys and the switch on auto: the index reads, loads are refused.
    let s = TestServer::start(config()).await;
    assert_eq!(post(&s, index, None, json!(""), None).await.0, 400);
    assert_eq!(
        post(&s, index, None, json!({"ready": true}), None).await.0,
        200
    );
    let (st, body) = load(&s, "text-classifier", None).await;
    assert_eq!(st, 403, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("INFERD_MODEL_CONTROL"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_swap_serves_the_new_version_keeps_the_cache_apart_and_rolls_back() {
    let models = models_without_v2();
    let s = TestServer::start(open_control(models.path())).await;
    let (st, v1) = classify(&s, None, None).await;
    assert_eq!((st, v1["version"].as_str()), (200, Some("1")));

    add_v2(models.path());
    let (st, body) = load(&s, "text-classifier", None).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["loaded"], json!(["2"]));
    let (_, v2) = classify(&s, None, None).await;
    assert_eq!(v2["version"], "2");
    assert_eq!(
        v2["cached"],
        json!([false]),
        "version 1's cached result is not version 2's"
    );

    // Roll back: version 2 leaves; version 1 answers again, from its cache.
    let back = json!({"version_policy": {"specific": {"versions": [1]}}});
    let (st, body) = load(&s, "text-classifier", Some(back)).await;
    assert_eq!((st, &body["unloaded"]), (200, &json!(["2"])), "{body}");
    let (_, again) = classify(&s, None, None).await;
    assert_eq!(
        (again["version"].as_str(), &again["cached"]),
        (Some("1"), &json!([true]))
    );
    assert_eq!(again["predictions"], v1["predictions"]);
    let (st, body) = classify(&s, Some("2"), None).await;
    assert_eq!(st, 404, "{body}");

    let (_, listing) = s.get("/v1/models").await;
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let v2_state = listing["repository"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "text-classifier" && e["version"] == "2")
        .cloned()
        .unwrap();
    assert_eq!(v2_state["state"], "UNAVAILABLE");
    assert!(v2_state["reason"].as_str().unwrap().contains("unloaded"));

    let m = s.metrics().await;
    assert_eq!(
        common::metric(
            &m,
            "inferd_model_loads_total{model=\"text-classifier\",result=\"ok\",version=\"2\"}"
        ),
        1.0
    );
    assert_eq!(
        common::metric(
            &m,
            "inferd_model_state{model=\"text-classifier\",state=\"UNAVAILABLE\",version=\"2\"}"
        ),
        1.0
    );
    assert!(common::metric_sum(&m, "inferd_model_swap_seconds_count") >= 2.0);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn unloading_lets_requests_in_flight_finish() {
    let models = tempfile::tempdir().unwrap();
    copy_dir(&root().join("models"), models.path());
    let mut c = open_control(models.path());
    c.cache.mode = inferd::config::CacheMode::Off;
    c.limits.max_concurrency = Some(8);
    // One request a batch, each held in the model by the gate until the
    // versions have left service.
    c.batching.max_batch_size = Some(1);
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let s = TestServer::start_with_loader(c, held(&gate)).await;
    let s = std::sync::Arc::new(s);

    // Requests naming version 2, and requests for the forecaster, all in the
    // model when both leave.
    let mut flights = Vec::new();
    for _ in 0..4 {
        let s2 = s.clone();
        flights.push(tokio::spawn(
            async move { classify(&s2, Some("2"), None).await },
        ));
        let s2 = s.clone();
        flights.push(tokio::spawn(async move { forecast(&s2).await }));
    }
    gate.until_waiting(8, "all eight requests in the model")
        .await;
    // The quality loop keeps a book per version, with its series.
    let series = |m: &str, model: &str, version: &str| {
        m.lines()
            .filter(|l| {
                (l.starts_with("inferd_quality_") || l.starts_with("inferd_drift_"))
                    && l.contains(&format!("model=\"{model}\""))
                    && l.contains(&format!("version=\"{version}\""))
            })
            .count()
    };
    let m = s.metrics().await;
    assert!(series(&m, "lstm-forecaster", "1") > 0, "{m}");
    assert!(series(&m, "text-classifier", "2") > 0, "{m}");
    let only_v1 = json!({"version_policy": {"specific": {"versions": [1]}}});
    let (st, body) = load(&s, "text-classifier", Some(only_v1)).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = post(
        &s,
        "/v2/repository/models/lstm-forecaster/unload",
        None,
        json!({}),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    // Both left service while the eight were still in the model.
    assert_eq!(gate.waiting(), 8);
    gate.open();
    for f in flights {
        let (st, body) = f.await.unwrap();
        assert_eq!(st, 200, "an accepted request must finish: {body}");
    }
    // Their series left with the versions, and the requests that finished
    // after did not bring them back (an alert on drift or accuracy would
    // otherwise keep firing for a version nobody serves).
    let m = s.metrics().await;
    assert_eq!(series(&m, "lstm-forecaster", "1"), 0, "{m}");
    assert_eq!(series(&m, "text-classifier", "2"), 0, "{m}");
    // New requests: version 2 is gone, unnamed ones get version 1, the
    // forecaster is gone.
    assert_eq!(classify(&s, Some("2"), None).await.0, 404);
    assert_eq!(classify(&s, None, None).await.1["version"], "1");
    let (st, body) = forecast(&s).await;
    assert_eq!(st, 404, "{body}");
    let (st, _) = s.get("/v2/models/lstm-forecaster/ready").await;
    assert_eq!(st, 404);
    // And it comes back.
    assert_eq!(load(&s, "lstm-forecaster", None).await.0, 200);
    assert_eq!(s.get("/v2/models/lstm-forecaster/ready").await.0, 200);
    // With a fresh book.
    let (st, body) = forecast(&s).await;
    assert_eq!(st, 200, "{body}");
    let m = s.metrics().await;
    assert_eq!(
        common::metric(
            &m,
            "inferd_quality_served_total{arm=\"primary\",model=\"lstm-forecaster\",version=\"1\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_canary_takes_its_share_of_ten_thousand_requests_by_request_id() {
    let models = models_1_and_2();
    let s = TestServer::start(open_control(models.path())).await;
    let canary = json!({"version_policy": {"all": {}}, "default_version": 1,
        "canary": {"version": 2, "weight": 0.1}});
    let (st, body) = load(&s, "text-classifier", Some(canary)).await;
    assert_eq!(st, 200, "{body}");
    let (_, models) = s.get("/v1/models/text-classifier").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["latest"], "1");
    assert_eq!(models["versions"][0]["canary_weight"], 0.1);

    let s = std::sync::Arc::new(s);
    let n = 10_000usize;
    let workers = 16;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut on_canary = 0usize;
            for i in (w..n).step_by(workers) {
                let id = format!("order-{i:06}");
                let (st, body) = classify(&s, None, Some(&id)).await;
                assert_eq!(st, 200, "{body}");
                if body["version"] == "2" {
                    on_canary += 1;
                }
            }
            on_canary
        }));
    }
    let mut on_canary = 0;
    for t in tasks {
        on_canary += t.await.unwrap();
    }
    let share = on_canary as f64 / n as f64;
    eprintln!("canary at weight 0.1: {on_canary} of {n} requests ({share:.4}) on version 2");
    assert!(
        (0.085..=0.115).contains(&share),
        "canary share {share} of {n}"
    );
    // A retried request (same id) lands on the same version every time.
    for i in 0..50 {
        let id = format!("order-{i:06}");
        let first = classify(&s, None, Some(&id)).await.1["version"].clone();
        for _ in 0..3 {
            assert_eq!(classify(&s, None, Some(&id)).await.1["version"], first);
        }
    }
    // Every request metric carries the version that answered.
    let m = s.metrics().await;
    let v2 = common::metric(
        &m,
        "inferd_requests_total{model=\"text-classifier\",protocol=\"http\",status=\"200\",version=\"2\"}",
    );
    assert!(v2 >= on_canary as f64);
}

#[tokio::test]
async fn polling_picks_up_a_new_version_and_ignores_a_half_written_one() {
    let models = models_without_v2();
    let mut c = open_control(models.path());
    c.models.model_control = ModelControlMode::Off; // polling needs no API
    c.models.model_poll_secs = 1;
    let s = TestServer::start(c).await;
    // Half-written: everything but the manifest, which operators write last.
    let v2 = models.path().join("text-classifier/2");
    std::fs::create_dir_all(&v2).unwrap();
    for f in ["model.onnx", "golden.json"] {
        std::fs::copy(root().join("models/text-classifier/2").join(f), v2.join(f)).unwrap();
    }
    // Two whole passes of the poller after the files appeared: the first may
    // have begun before they did.
    let polls = |m: &str| common::metric(m, "inferd_model_polls_total");
    let before = polls(&s.metrics().await);
    common::eventually("two passes of the poller", || async {
        polls(&s.metrics().await) >= before + 2.0
    })
    .await;
    assert_eq!(classify(&s, None, None).await.1["version"], "1");
    let m = s.metrics().await;
    assert!(
        !m.contains("inferd_model_loads_total{model=\"text-classifier\""),
        "nothing was tried"
    );

    std::fs::copy(
        root().join("models/text-classifier/2/model.toml"),
        v2.join("model.toml"),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + common::gate::EVENTUALLY;
    loop {
        if classify(&s, None, None).await.1["version"] == "2" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "polling never loaded version 2"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Removed: version 1 takes over again.
    std::fs::remove_dir_all(&v2).unwrap();
    let deadline = tokio::time::Instant::now() + common::gate::EVENTUALLY;
    while classify(&s, None, None).await.1["version"] != "1" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "polling never retired version 2"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_version_is_refused_while_the_serving_one_answers() {
    let models = models_without_v2();
    let s = TestServer::start(open_control(models.path())).await;
    add_v2(models.path());
    let onnx = models.path().join("text-classifier/2/model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&onnx, bytes).unwrap();
    let (st, body) = load(&s, "text-classifier", None).await;
    assert_eq!(st, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("sha256"), "{body}");
    assert_eq!(classify(&s, None, None).await.1["version"], "1");
    let (st, body) = load(&s, "no-such-model", None).await;
    assert_eq!(st, 404, "{body}");
    let (st, _) = load(
        &s,
        "text-classifier",
        Some(json!({"version_policy": {"newest": {}}})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, body) = post(
        &s,
        "/v2/repository/models/text-classifier/load",
        None,
        json!({"parameters": {"config": 3}}),
        None,
    )
    .await;
    assert_eq!(st, 400, "{body}");
    s.stop().await.unwrap();
}

//! The router in process, without a socket (`tower::ServiceExt::oneshot`), on
//! the scripted backend: what each front door answers, and in which format,
//! checked in microseconds. The integration tests (`tests/`) do the same over
//! real connections to the real models.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use inferd_core::admission::Admission;
use inferd_core::backend::testing::{forecaster_model, TestBackend};
use inferd_core::lifecycle::Lifecycle;
use inferd_core::pipeline::{Limits, Pipeline};
use inferd_core::repository::Repository;
use inferd_core::Metrics;
use inferd_predlog::{PredLog, SinkConfig, WriterConfig};
use prometheus::Registry;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::{router, ApiKeys, AppState, DoorMetrics, KeySources, Settings};

/// A three-step window for the test forecaster, as a KServe v2 request.
const V2_WINDOW: &str = r#"{"inputs": [{"name": "window", "shape": [1, 3, 1], "datatype": "FP32", "data": [1, 2, 3]}]}"#;

/// The state of a server serving one scripted forecaster `m` (windows of 3
/// readings; the forecast is their sum), or still starting.
fn state(ready: bool) -> Arc<AppState> {
    state_with(ready, None)
}

/// `state`, with a memory budget of `budget` bytes when given (no wait for room).
fn state_with(ready: bool, budget: Option<u64>) -> Arc<AppState> {
    let registry = Registry::new();
    let metrics = Arc::new(Metrics::new(&registry));
    let limits = Limits {
        max_instances: 4,
        timeout_ms: 5_000,
        queue: Default::default(),
    };
    let pipeline = Pipeline::new(
        Admission::new(1, 8, metrics.clone()),
        None,
        metrics.clone(),
        limits,
    );
    let lifecycle = Lifecycle::new(metrics.clone());
    if ready {
        let model = forecaster_model("m", 3, 8, TestBackend::forecaster(3, 1, 1));
        lifecycle.deploy(pipeline.deploy(Repository::from_models([model]), None, None));
    }
    let off = WriterConfig {
        sink: SinkConfig::Off,
        shutdown_budget: Duration::ZERO,
        channel_capacity: 1,
        batch_rows: 1,
        flush_interval: Duration::from_millis(1),
        buffer_rows: 0,
    };
    let predlog = PredLog::start(off, Arc::new(inferd_predlog::Metrics::default()))
        .expect("no sink to start");
    let doors = DoorMetrics::new(&registry);
    let budget = budget.map(|b| {
        crate::MemoryBudget::new(
            b,
            Duration::ZERO,
            doors.memory_budget_used.clone(),
            &doors.memory_budget,
        )
    });
    let quality = Arc::new(inferd_core::quality::Quality::new(
        inferd_core::quality::QualitySettings::default(),
        Arc::new(inferd_core::quality::QualityMetrics::new(&registry)),
    ));
    Arc::new(AppState {
        settings: Settings {
            max_body_bytes: 1024,
            body_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_instances: 4,
            log_instances: false,
            model_control: false,
            defer_unknown_labels: false,
        },
        doors,
        registry,
        metrics,
        pipeline: Arc::new(pipeline),
        lifecycle: Arc::new(lifecycle),
        control: std::sync::OnceLock::new(),
        predlog,
        api_keys: Arc::new(ApiKeys::load(&KeySources::default()).expect("no keys")),
        quality,
        budget,
    })
}

/// One request through the router: the status and the body as JSON (or as
/// a JSON string when it is not JSON).
async fn call(
    st: &Arc<AppState>,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Body::from(body.unwrap_or("").to_string()))
        .expect("request");
    let resp = router(st.clone()).oneshot(req).await.expect("infallible");
    (resp.status(), json_of(resp).await)
}

/// A response's body as JSON, or as a JSON string when it is not JSON.
async fn json_of(resp: axum::response::Response) -> Value {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

#[tokio::test]
async fn predictions_come_from_the_model_in_each_front_doors_shape() {
    let st = state(true);
    let (status, v) = call(
        &st,
        Method::POST,
        "/predict",
        Some(r#"{"model": "m", "instances": [[[1], [2], [3]], [[1], [1], [1]]]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["predictions"],
        json!([{"forecast": {"y": 6.0}}, {"forecast": {"y": 3.0}}])
    );
    let (status, v) = call(&st, Method::POST, "/v2/models/m/infer", Some(V2_WINDOW)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outputs"][0]["data"], json!([6.0]));
}

#[tokio::test]
async fn refusals_are_json_in_the_routers_own_format() {
    let st = state(true);
    for (method, uri, body, want, code) in [
        (
            Method::POST,
            "/predict",
            Some("{not json"),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            "/predict",
            Some(r#"{"model": "nope", "instances": [1]}"#),
            404,
            "model_not_found",
        ),
        (
            Method::POST,
            "/predict",
            Some(r#"{"model": "m", "instances": [[[1]]]}"#),
            422,
            "invalid_input",
        ),
        (Method::GET, "/predict", None, 405, "method_not_allowed"),
        (Method::GET, "/nowhere", None, 404, "not_found"),
    ] {
        let (status, v) = call(&st, method, uri, body).await;
        assert_eq!(status.as_u16(), want, "{uri}: {v}");
        assert_eq!(v["error"]["code"], code, "{uri}: {v}");
    }
    let too_many = json!({"model": "m", "instances": vec![json!([[1], [2], [3]]); 5]});
    let (status, v) = call(&st, Method::POST, "/predict", Some(&too_many.to_string())).await;
    assert_eq!(
        (status.as_u16(), &v["error"]["field"]),
        (422, &json!("instances")),
        "{v}"
    );
    let (status, v) = call(&st, Method::POST, "/predict", Some(&"x".repeat(2048))).await;
    assert_eq!(
        (status.as_u16(), &v["error"]["code"]),
        (413, &json!("payload_too_large"))
    );
    // KServe v2 errors are `{"error": "<message>"}`.
    let (status, v) = call(
        &st,
        Method::POST,
        "/v2/models/nope/infer",
        Some(r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(v["error"].is_string(), "{v}");
}

#[tokio::test]
async fn a_starting_server_is_alive_but_not_ready_and_refuses_work() {
    let st = state(false);
    let (status, v) = call(&st, Method::GET, "/healthz", None).await;
    assert_eq!((status, &v["status"]), (StatusCode::OK, &json!("alive")));
    let (status, v) = call(&st, Method::GET, "/readyz", None).await;
    assert_eq!(
        (status, &v["status"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("starting"))
    );
    let (status, v) = call(
        &st,
        Method::POST,
        "/predict",
        Some(r#"{"model": "m", "instances": [[[1], [2], [3]]]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["error"]["code"], "not_ready");
    let (status, v) = call(&st, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        v.as_str().is_some_and(|m| m.contains("inferd_ready 0")),
        "{v}"
    );
}

/// A prediction with its `Content-Length`, as clients send it.
fn sized(body: &str) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("/predict")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.to_string()))
        .expect("request")
}

#[tokio::test]
async fn a_body_without_room_in_the_memory_budget_is_refused_and_the_room_comes_back() {
    const WINDOW: &str = r#"{"model": "m", "instances": [[[1], [2], [3]]]}"#;
    // Room for one small request (3 x the body + 16 KiB) and no more.
    let st = state_with(true, Some(20 * 1024));
    let budget = st.budget.clone().expect("a budget");
    let ok = router(st.clone())
        .oneshot(sized(WINDOW))
        .await
        .expect("infallible");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        st.doors.memory_budget_used.get(),
        0,
        "returned after the response"
    );

    let held = budget.reserve(8 * 1024).await.expect("room");
    assert_eq!(st.doors.memory_budget_used.get(), 8 * 1024);
    let refused = router(st.clone())
        .oneshot(sized(WINDOW))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    // A small body is drained here: the connection carries the next request.
    assert!(!refused.headers().contains_key(header::CONNECTION));
    assert!(refused.extensions().get::<crate::Linger>().is_none());
    let v = json_of(refused).await;
    assert_eq!(v["error"]["code"], "memory_budget");
    // A body without a length reserves as it arrives: refused the same way.
    let (status, v) = call(&st, Method::POST, "/predict", Some(WINDOW)).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("memory_budget"))
    );
    let m = crate::health::metrics(axum::extract::State(st.clone())).await;
    let text = m.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("inferd_rejections_total{reason=\"memory_budget\"} 2"),
        "{text}"
    );

    drop(held);
    assert_eq!(st.doors.memory_budget_used.get(), 0);
    let (status, v) = call(&st, Method::POST, "/predict", Some(WINDOW)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // The v2 door takes its share the same way.
    let _held = budget.reserve(8 * 1024).await.expect("room");
    let (status, v) = call(&st, Method::POST, "/v2/models/m/infer", Some(V2_WINDOW)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
}

/// A prediction whose client sends `first` and then nothing more, with the
/// accept loop's `Arrival` (now) so that the body's deadline applies.
fn stalled(first: &'static str, length: Option<usize>) -> (Request<Body>, crate::Arrival) {
    let arrival = crate::Arrival {
        // tokio's (paused) clock, which the deadlines are kept by.
        at: tokio::time::Instant::now().into_std(),
        body_timed_out: Arc::default(),
    };
    use futures::StreamExt;
    let body = futures::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from_static(
        first.as_bytes(),
    ))])
    .chain(futures::stream::pending());
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/predict")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(n) = length {
        req = req.header(header::CONTENT_LENGTH, n);
    }
    let mut req = req.body(Body::from_stream(body)).expect("request");
    req.extensions_mut().insert(arrival.clone());
    (req, arrival)
}

/// The status a prediction gets whose client sends its first bytes and then
/// nothing (`length`: its `Content-Length`, or none), after checking that it
/// came no sooner than the body's deadline (5 s here) and closes the
/// connection as a body timeout.
async fn given_up(st: &Arc<AppState>, length: Option<usize>) -> StatusCode {
    let start = tokio::time::Instant::now();
    let (req, arrival) = stalled(r#"{"model": "m", "#, length);
    let response = router(st.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(response.headers()[header::CONNECTION], "close");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(5), "{waited:?}");
    let timed_out = &arrival.body_timed_out;
    assert!(timed_out.load(std::sync::atomic::Ordering::Acquire));
    response.status()
}

/// A client that stops sending does not keep its connection past the body's
/// deadline on the memory budget's paths either: refused for memory, its body
/// is drained only until then and the 429 closes the connection; let in
/// without a length, its body is read only until then and answered 408.
#[tokio::test(start_paused = true)]
async fn a_stalled_body_is_given_up_at_its_deadline_on_the_budgets_paths() {
    let st = state_with(true, Some(20 * 1024));
    let budget = st.budget.clone().expect("a budget");
    let held = budget.reserve(8 * 1024).await.expect("room");
    assert_eq!(
        given_up(&st, Some(100)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    drop(held);
    assert_eq!(given_up(&st, None).await, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(st.doors.memory_budget_used.get(), 0, "its room came back");
}

#[tokio::test]
async fn labels_fed_back_by_request_id_score_the_version_that_answered() {
    let st = state(true);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/predict")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", "q1")
        .body(Body::from(
            r#"{"model": "m", "instances": [[[1], [2], [3]], [[1], [1], [1]]]}"#,
        ))
        .expect("request");
    let resp = router(st.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    // Predictions 6 and 3; true values 7 and 3.
    let (status, v) = call(
        &st,
        Method::POST,
        "/v1/feedback",
        Some(r#"{"request_id": "q1", "instance": 0, "value": 7}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["accepted"].clone(), v["results"][0]["versions"].clone()),
        (json!(1), json!(["1"]))
    );
    let (status, v) = call(
        &st,
        Method::POST,
        "/v1/feedback",
        Some(
            r#"{"labels": [
                {"request_id": "q1", "instance": 0, "value": 7},
                {"request_id": "q1", "instance": 1, "value": {"y": 3}},
                {"request_id": "q1", "instance": 1, "label": "up"},
                {"request_id": "q1", "instance": 9, "value": 1}
            ]}"#,
        ),
    )
    .await;
    // Judged label by label: 200, with each refusal's status.
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["accepted"].clone(),
            v["unchanged"].clone(),
            v["rejected"].clone()
        ),
        (json!(1), json!(1), json!(2))
    );
    let statuses: Vec<Value> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [Value::Null, Value::Null, json!(422), json!(404)]);
    // More labels than INFERD_MAX_INSTANCES (4 here): none is taken.
    let five = json!({"labels": vec![json!({"request_id": "q1", "value": 7}); 5]});
    let (status, v) = call(&st, Method::POST, "/v1/feedback", Some(&five.to_string())).await;
    assert_eq!(
        (status.as_u16(), v["error"]["code"].clone()),
        (422, json!("invalid_input"))
    );
    for (body, want, code) in [
        (
            r#"{"request_id": "nope", "value": 1}"#,
            404,
            "unknown_prediction",
        ),
        (
            r#"{"request_id": "q1", "label": "up"}"#,
            422,
            "invalid_label",
        ),
        (r#"{"request_id": "q1"}"#, 422, "invalid_label"),
        (r#"{"request_id": 5}"#, 422, "invalid_label"),
        ("{not json", 400, "malformed_json"),
    ] {
        let (status, v) = call(&st, Method::POST, "/v1/feedback", Some(body)).await;
        assert_eq!(
            (status.as_u16(), v["error"]["code"].clone()),
            (want, json!(code)),
            "{body}: {v}"
        );
    }
    let (status, v) = call(&st, Method::GET, "/v1/models/m/quality", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let primary = &v["versions"][0];
    assert_eq!(
        (primary["served"].clone(), primary["labelled"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(primary["total"]["mae"], json!(0.5));
    assert_eq!(v["drift"][0]["profile"], Value::Null);
    let (status, _) = call(&st, Method::GET, "/v1/models/nope/quality", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A body hyper would give for a `Content-Length` (its size hint exact) that
/// records whether anyone read from it, and never sends.
struct Unread {
    len: u64,
    polled: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for Unread {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.polled
            .store(true, std::sync::atomic::Ordering::Release);
        std::task::Poll::Pending
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// A refused prediction whose body is larger than a drain takes is answered
/// at once, its body not read: the answer closes the connection and is
/// marked for the accept loop's lingering close until the body's deadline.
/// Both doors that refuse before reading: the memory budget and the queue's.
#[tokio::test(start_paused = true)]
async fn a_refused_large_body_is_answered_at_once_and_left_for_the_lingering_close() {
    for full_queue in [false, true] {
        // Room for one request (its reservation counts the body up to the
        // size limit), unless the budget is to refuse it.
        let st = state_with(true, Some(20 * 1024));
        let budget = st.budget.clone().expect("a budget");
        let _held = match full_queue {
            false => Some(budget.reserve(8 * 1024).await.expect("room")),
            true => None,
        };
        let _queued: Vec<_> = if full_queue {
            let a = &st.pipeline.admission;
            std::iter::from_fn(|| a.enter().ok()).collect()
        } else {
            Vec::new()
        };
        let code = if full_queue {
            "queue_full"
        } else {
            "memory_budget"
        };
        let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let len = 1 << 20;
        let arrival = crate::Arrival {
            at: tokio::time::Instant::now().into_std(),
            body_timed_out: Arc::default(),
        };
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/predict")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, len)
            .body(Body::new(Unread {
                len,
                polled: polled.clone(),
            }))
            .expect("request");
        req.extensions_mut().insert(arrival.clone());
        let start = tokio::time::Instant::now();
        let response = router(st.clone()).oneshot(req).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        let linger = response
            .extensions()
            .get::<crate::Linger>()
            .expect("marked");
        assert_eq!(linger.until, arrival.at + Duration::from_secs(5));
        assert!(
            !polled.load(std::sync::atomic::Ordering::Acquire),
            "the body was read"
        );
        // Answered without waiting for the body (the memory budget's own
        // wait for room aside: 50 ms by default).
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        let v = json_of(response).await;
        assert_eq!(v["error"]["code"], code, "{v}");
    }
}

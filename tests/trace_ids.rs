//! A client's W3C `traceparent` reaches the prediction log's PostgreSQL row
//! (migration 3's `trace_id` column) and the `x-trace-id` response header,
//! with trace export off (no OTLP endpoint in this process): the trace id is
//! the client's, and a request without a valid `traceparent` has none. The
//! spans themselves are checked against a real OTLP receiver by
//! tests/conformance/test_otel.py.

mod common;

use std::time::Duration;

use common::services::Postgres;
use common::{config, TestServer};
use inferd::config::PredLogMode;
use serde_json::json;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_trace_id_is_in_the_log_row_and_the_response() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.predlog.sink = PredLogMode::Postgres;
    cfg.predlog.database_url = Some(pg.url());
    cfg.predlog.predlog_spill_path = dir.path().join("spill.jsonl");
    cfg.predlog.predlog_flush_ms = 50;
    let s = TestServer::start(cfg).await;
    let http = reqwest::Client::new();
    let send = |rid: &'static str, traceparent: Option<&'static str>, text: &'static str| {
        let mut r = http
            .post(s.url("/predict"))
            .header("x-request-id", rid)
            .json(&json!({"model": "text-classifier", "instances": [text]}));
        if let Some(tp) = traceparent {
            r = r.header("traceparent", tp);
        }
        async move {
            let resp = r.send().await.expect("request");
            let status = resp.status().as_u16();
            let id = resp
                .headers()
                .get("x-trace-id")
                .map(|v| v.to_str().unwrap().to_string());
            (status, id)
        }
    };
    let traced = format!("00-{TRACE}-b7ad6b7169203331-01");
    let traced: &'static str = Box::leak(traced.into_boxed_str());
    assert_eq!(
        send("traced", Some(traced), "Lunch on Friday at noon?").await,
        (200, Some(TRACE.to_string()))
    );
    // The W3C rules: an all-zero trace id, or a malformed header, is ignored.
    let zero = "00-00000000000000000000000000000000-b7ad6b7169203331-01";
    assert_eq!(
        send("zero", Some(zero), "Minutes attached.").await,
        (200, None)
    );
    assert_eq!(
        send("garbled", Some("not-a-traceparent"), "See you there.").await,
        (200, None)
    );
    assert_eq!(send("none", None, "Thanks!").await, (200, None));
    // A v2 request and an unsampled parent (flags 00) keep the id too.
    let v2 = http
        .post(s.url("/v2/models/text-classifier/infer"))
        .header("x-request-id", "v2")
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-00"))
        .json(&json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Call me back."]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status().as_u16(), 200, "{:?}", v2.text().await);

    let want = format!("traced|{TRACE}\nv2|{TRACE}\ngarbled|\nnone|\nzero|");
    let query = "SELECT request_id, coalesce(trace_id, '') FROM predictions ORDER BY trace_id NULLS LAST, request_id";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = pg.psql(query);
        if rows == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rows:\n{rows}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pg.psql("SELECT name FROM inferd_schema_migrations WHERE version = 3"),
        "trace id"
    );
    s.stop().await.unwrap();
}

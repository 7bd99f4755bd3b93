//! The result cache and the prediction log against real Redis and PostgreSQL
//! servers (started by the tests on free loopback ports), including their
//! failures: Redis killed under load, PostgreSQL stopped under load.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::services::{Postgres, Redis};
use common::{config, golden, metric, metric_opt, TestServer};
use inferd::config::{PredLogMode, ServeConfig};
use serde_json::{json, Value};

fn window(i: usize) -> Value {
    golden("lstm-forecaster")["cases"][i % 32]["input"].clone()
}

/// A window no golden case has, so the first request for it is a miss.
fn fresh_window(seed: usize) -> Value {
    let base = 300.0 + seed as f64 * 0.001;
    Value::Array((0..26).map(|t| json!([base + t as f64 * 0.05])).collect())
}

async fn instances_computed(s: &TestServer, model: &str) -> f64 {
    let m = s.get("/metrics").await.1;
    metric(
        &m,
        &common::latest_series("inferd_model_instances_total", model),
    )
}

async fn predict(s: &TestServer, body: Value) -> Value {
    let (st, _, v) = s.post_json("/predict", &body).await;
    assert_eq!(st, 200, "{v}");
    v
}

fn redis_config(r: &Redis) -> ServeConfig {
    let mut c = config();
    c.cache.redis_url = Some(r.url());
    c.cache.cache_breaker_ms = 100;
    c
}

async fn cache_hits_after_reformatted_json(s: &TestServer) {
    let w = fresh_window(7);
    let first = predict(s, json!({"model": "lstm-forecaster", "instances": [w]})).await;
    assert_eq!(first["cached"], json!([false]));
    // Same values, other spelling: keys reordered, whitespace, exponents, ints.
    let rows: Vec<String> = w
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("[ {:e} ]", r[0].as_f64().unwrap()))
        .collect();
    let raw = format!(
        "{{ \"instances\" : [ [ {} ] ],\n  \"model\":\"lstm-forecaster\" }}",
        rows.join(" ,\n ")
    );
    let (st, v) = s
        .post_raw("/predict", "application/json", raw.into_bytes())
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["cached"], json!([true]));
    assert_eq!(v["predictions"], first["predictions"]);

    let text =
        json!({"model": "text-classifier", "instances": ["Subject: cache me\n\nunique body 7f3a"]});
    assert_eq!(predict(s, text.clone()).await["cached"], json!([false]));
    assert_eq!(predict(s, text).await["cached"], json!([true]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_cache_hits_after_reformatted_json() {
    let s = TestServer::start(config()).await;
    cache_hits_after_reformatted_json(&s).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_hits_after_reformatted_json_and_keeps_order_on_partial_hits() {
    let r = Redis::start();
    let s = TestServer::start(redis_config(&r)).await;
    cache_hits_after_reformatted_json(&s).await;
    assert!(
        r.cli(&["DBSIZE"]).parse::<u64>().unwrap() >= 2,
        "entries live in Redis"
    );

    // Partial hits: x0 and x1 cached, y0 and y1 not.
    let (x0, x1, y0, y1) = (
        fresh_window(100),
        fresh_window(101),
        fresh_window(102),
        fresh_window(103),
    );
    let warm = predict(
        &s,
        json!({"model": "lstm-forecaster", "instances": [x0, x1]}),
    )
    .await;
    // Redis writes are asynchronous: wait until they have landed.
    let t = Instant::now();
    while r.cli(&["DBSIZE"]).parse::<u64>().unwrap() < 4 {
        assert!(t.elapsed() < common::gate::EVENTUALLY);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = instances_computed(&s, "lstm-forecaster").await;
    let mixed = predict(
        &s,
        json!({"model": "lstm-forecaster", "instances": [y0, x1, y1, x0]}),
    )
    .await;
    assert_eq!(mixed["cached"], json!([false, true, false, true]));
    assert_eq!(
        instances_computed(&s, "lstm-forecaster").await - before,
        2.0,
        "only the misses ran"
    );
    assert_eq!(mixed["predictions"][1], warm["predictions"][1]);
    assert_eq!(mixed["predictions"][3], warm["predictions"][0]);
    let alone = predict(&s, json!({"model": "lstm-forecaster", "instances": [y1]})).await;
    assert_eq!(mixed["predictions"][2], alone["predictions"][0]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_their_ttl() {
    // A 3 s time to live: the second request, sent at once, is well within it
    // on any machine; the entry is then seen to expire (a miss), however long
    // after 3 s that is observed.
    let r = Redis::start();
    let mut rc = redis_config(&r);
    rc.cache.cache_ttl_secs = 3;
    let mut mc = config();
    mc.cache.cache_ttl_secs = 3;
    for cfg in [rc, mc] {
        let s = TestServer::start(cfg).await;
        let body = json!({"model": "lstm-forecaster", "instances": [fresh_window(200)]});
        let stored = Instant::now();
        assert_eq!(predict(&s, body.clone()).await["cached"], json!([false]));
        // Redis writes land off the response path: the hit may take a moment.
        common::eventually("the entry is cached", || async {
            predict(&s, body.clone()).await["cached"] == json!([true])
        })
        .await;
        assert!(
            stored.elapsed() < Duration::from_secs(3),
            "the check outlasted the TTL"
        );
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(stored.elapsed())).await;
        common::eventually("the entry expires", || async {
            predict(&s, body.clone()).await["cached"] == json!([false])
        })
        .await;
        s.stop().await.unwrap();
    }
}

/// N identical requests at once: one runs the model, the N-1 others wait for its
/// result (single-flight). Every model call takes a second (the real model,
/// slowed), so all N are inside the server while the first one's call runs:
/// none can arrive late enough to find the result in the cache instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_run_the_model_once() {
    const N: usize = 24;
    let r = Redis::start();
    for (backend, mut cfg) in [("memory", config()), ("redis", redis_config(&r))] {
        cfg.limits.max_concurrency = Some(1);
        cfg.models.warmup_runs = 0; // each warm-up call would take the second too
        let s = TestServer::start_slowed(cfg, Duration::from_secs(1)).await;
        let m = s.metrics().await;
        // Zero before the first request (the series exists from the
        // batcher's start).
        let model_series =
            &common::latest_series("inferd_model_instances_total", "text-classifier");
        assert_eq!(
            metric_opt(&m, model_series).unwrap_or(0.0),
            0.0,
            "{backend}"
        );
        let coalesced_before = metric(&m, "inferd_cache_coalesced_total");
        let body = json!({"model": "text-classifier", "instances": [common::long_texts(1)[0].as_str().unwrap().to_string() + " coalesce"]});
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let (c, u, b) = (s.client.clone(), s.url("/predict"), body.clone());
                tokio::spawn(async move {
                    let r = c.post(u).json(&b).send().await.unwrap();
                    (r.status().as_u16(), r.json::<Value>().await.unwrap())
                })
            })
            .collect();
        let mut preds = Vec::new();
        for t in tasks {
            let (st, v) = t.await.unwrap();
            assert_eq!(st, 200, "{backend}: {v}");
            preds.push(v["predictions"][0].clone());
        }
        assert!(preds[0].is_object(), "{backend}: {:?}", preds[0]);
        assert!(
            preds.windows(2).all(|w| w[0] == w[1]),
            "{backend}: {preds:?}"
        );
        let m = s.metrics().await;
        let ran = metric(&m, model_series);
        let coalesced = metric(&m, "inferd_cache_coalesced_total") - coalesced_before;
        assert_eq!(
            ran, 1.0,
            "{backend}: {N} identical requests, one inference (coalesced {coalesced})"
        );
        assert_eq!(
            metric(
                &m,
                &common::latest_series("inferd_batches_total", "text-classifier")
            ),
            1.0,
            "{backend}: one model call"
        );
        assert_eq!(
            coalesced,
            (N - 1) as f64,
            "{backend}: every request but the first waited for the first one's result"
        );
        s.stop().await.unwrap();
    }
}

/// A `load` hook that takes a server down after `down_at` completed requests
/// and brings it back after `up_at`. The stop and start run on a thread of their
/// own: they block, and the hook is called on the async workers.
fn outage(
    down_at: usize,
    up_at: usize,
    mut act: impl FnMut(bool) + Send + 'static,
) -> (
    Arc<dyn Fn(usize) + Send + Sync>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    let ctl = std::thread::spawn(move || {
        while let Ok(down) = rx.recv() {
            act(down);
        }
    });
    let tx = std::sync::Mutex::new(tx);
    let hook = Arc::new(move |n: usize| {
        if n == down_at || n == up_at {
            let _ = tx.lock().unwrap().send(n == down_at);
        }
    });
    (hook, ctl)
}

/// Runs `total` requests with `concurrency` workers; `at(n)` is called as the
/// n-th request completes. Returns the statuses.
async fn load(
    s: &TestServer,
    bodies: Arc<Vec<Value>>,
    total: usize,
    concurrency: usize,
    at: Arc<dyn Fn(usize) + Send + Sync>,
) -> Vec<u16> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (c, u) = (s.client.clone(), s.url("/predict"));
            let (bodies, next, done, at) = (bodies.clone(), next.clone(), done.clone(), at.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break statuses;
                    }
                    let st = c
                        .post(&u)
                        .header("x-request-id", format!("load-{i}"))
                        .json(&bodies[i % bodies.len()])
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    statuses.push(st);
                    at(done.fetch_add(1, Ordering::Relaxed) + 1);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_load_fails_no_request_and_hits_resume_after_restart() {
    let redis = Arc::new(std::sync::Mutex::new(Redis::start()));
    let url = redis.lock().unwrap().url();
    let mut cfg = config();
    cfg.cache.redis_url = Some(url);
    cfg.cache.cache_breaker_ms = 100;
    let cfg2 = cfg.clone();
    let s = TestServer::start(cfg).await;
    // Every request a new instance: each one misses the in-process L1 and asks
    // Redis, so the outage is really felt.
    let bodies: Vec<Value> = (0..3000)
        .map(|i| json!({"model": "lstm-forecaster", "instances": [fresh_window(10_000 + i)]}))
        .collect();
    let total = 3000;
    let r2 = redis.clone();
    let (hook, ctl) = outage(total / 3, 2 * total / 3, move |down| {
        let mut r = r2.lock().unwrap();
        if down {
            r.kill()
        } else {
            r.restart()
        }
    });
    let statuses = load(&s, Arc::new(bodies), total, 16, hook).await;
    assert_eq!(statuses.len(), total);
    let failed = statuses.iter().filter(|&&c| c != 200).count();
    assert_eq!(
        failed,
        0,
        "requests failed while Redis was down: {:?}",
        statuses
            .iter()
            .filter(|&&c| c != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    let m = s.get("/metrics").await.1;
    assert!(
        m.contains("inferd_cache_errors_total{"),
        "Redis errors were counted:\n{m}"
    );
    ctl.join().ok();

    // Writes resume: once the breaker lets calls through, new instances reach
    // the restarted (empty) Redis.
    let dbsize = |r: &Arc<std::sync::Mutex<Redis>>| {
        r.lock()
            .unwrap()
            .cli(&["DBSIZE"])
            .parse::<u64>()
            .unwrap_or(0)
    };
    let t = Instant::now();
    let mut k = 0;
    while dbsize(&redis) == 0 {
        predict(
            &s,
            json!({"model": "lstm-forecaster", "instances": [fresh_window(50_000 + k)]}),
        )
        .await;
        k += 1;
        assert!(
            t.elapsed() < common::gate::EVENTUALLY,
            "Redis writes never resumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reads resume: a second worker with an empty L1, sharing Redis, hits on an
    // instance the first one computed. A cache write is made once, off the
    // response path, and a slow or refused one is dropped (fail open): when
    // one does not land, try a new instance rather than wait for it forever.
    let x = 'landed: {
        for j in 0.. {
            let x = json!({"model": "lstm-forecaster", "instances": [fresh_window(60_000 + j)]});
            let before = dbsize(&redis);
            assert_eq!(predict(&s, x.clone()).await["cached"], json!([false]));
            let tried = Instant::now();
            while tried.elapsed() < Duration::from_secs(2) {
                if dbsize(&redis) > before {
                    break 'landed x;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let m = s.get("/metrics").await.1;
            assert!(
                t.elapsed() < common::gate::EVENTUALLY,
                "Redis writes stopped landing; cache errors:\n{}",
                m.lines()
                    .filter(|l| l.starts_with("inferd_cache_errors_total"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        unreachable!()
    };
    let s2 = TestServer::start(cfg2).await;
    assert_eq!(
        predict(&s2, x).await["cached"],
        json!([true]),
        "served from Redis"
    );
    s2.stop().await.unwrap();
    s.stop().await.unwrap();
}

fn pg_config(pg: &Postgres, spill: &std::path::Path) -> ServeConfig {
    let mut c = config();
    c.predlog.sink = PredLogMode::Postgres;
    c.predlog.database_url = Some(pg.url());
    c.predlog.predlog_spill_path = spill.to_path_buf();
    c.predlog.predlog_flush_ms = 50;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_during_load_ends_with_one_row_per_request() {
    let pg = Arc::new(std::sync::Mutex::new(Postgres::start()));
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let mut cfg = pg_config(&pg.lock().unwrap(), &spill);
    cfg.predlog.predlog_buffer_rows = 300; // small, so the outage spills to disk
    cfg.predlog.predlog_batch_rows = 100;
    let s = TestServer::start(cfg).await;
    let bodies: Vec<Value> = (0..50)
        .map(|i| json!({"model": "lstm-forecaster", "instances": [fresh_window(400 + i)]}))
        .collect();
    let total = 2000;
    let p2 = pg.clone();
    let (hook, ctl) = outage(total / 4, 3 * total / 4, move |down| {
        let mut p = p2.lock().unwrap();
        if down {
            p.stop()
        } else {
            p.resume()
        }
    });
    let statuses = load(&s, Arc::new(bodies), total, 8, hook).await;
    assert!(
        statuses.iter().all(|&c| c == 200),
        "all served while Postgres was down"
    );
    ctl.join().ok();
    // Postgres is back: the running server replays the spill and removes it.
    let replaying = dir.path().join("spill.jsonl.replaying");
    let t = Instant::now();
    while spill.exists() || replaying.exists() {
        assert!(
            t.elapsed() < common::gate::EVENTUALLY,
            "spill never replayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = s.get("/metrics").await.1;
    s.stop().await.unwrap(); // flushes the buffer
    let pg = pg.lock().unwrap();
    let rows: usize = pg.psql("SELECT count(*) FROM predictions").parse().unwrap();
    let distinct: usize = pg
        .psql("SELECT count(DISTINCT request_id) FROM predictions")
        .parse()
        .unwrap();
    assert_eq!(
        (rows, distinct),
        (total, total),
        "exactly one row per request"
    );
    assert!(
        metric(&m, "inferd_predlog_spilled_total") > 0.0,
        "the outage spilled:\n{m}"
    );
    assert!(!spill.exists(), "the spill file was replayed and removed");
    assert_eq!(
        pg.psql("SELECT count(*) FROM inferd_schema_migrations"),
        "4"
    );
    // Every served row has the hash of the input as sent (migration 2).
    assert_eq!(
        pg.psql("SELECT count(*) FROM predictions WHERE status = 200 AND input_sha256 IS NULL"),
        "0"
    );
    let row = pg.psql("SELECT model, version, status, cached, instance IS NOT NULL, prediction->'forecast' ? 'co2_ppm' FROM predictions LIMIT 1");
    assert_eq!(row, "lstm-forecaster|1|200|f|t|t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_buffered_records_and_spills_when_postgres_is_down() {
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let mut cfg = pg_config(&pg, &spill);
    cfg.predlog.predlog_flush_ms = 60_000; // nothing is written before shutdown
    cfg.predlog.predlog_batch_rows = 100_000;
    let s = TestServer::start(cfg.clone()).await;
    for i in 0..50 {
        predict(
            &s,
            json!({"model": "lstm-forecaster", "instances": [window(i)]}),
        )
        .await;
    }
    // Nothing written yet: the per-sink counter is born with the first write,
    // and all 50 records are still queued or held by the writer.
    let t = Instant::now();
    loop {
        let m = s.get("/metrics").await.1;
        assert_eq!(
            metric_opt(&m, "inferd_predlog_written_total{sink=\"postgres\"}").unwrap_or(0.0),
            0.0,
            "nothing written yet"
        );
        let held = metric(&m, "inferd_predlog_queue_depth")
            + metric(&m, "inferd_predlog_buffered_records");
        if held == 50.0 {
            break;
        }
        assert!(
            t.elapsed() < common::gate::EVENTUALLY,
            "{held} records held, 50 expected:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.stop().await.unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM predictions"), "50");

    // With Postgres down at shutdown, records spill; the next start replays them.
    let s = TestServer::start(cfg.clone()).await;
    for i in 0..20 {
        predict(
            &s,
            json!({"model": "text-classifier", "instances": [format!("message {i}")]}),
        )
        .await;
    }
    pg.stop();
    s.stop().await.unwrap();
    let lines = std::fs::read_to_string(&spill).unwrap().lines().count();
    assert_eq!(lines, 20);
    pg.resume();
    let mut c2 = cfg;
    c2.predlog.predlog_flush_ms = 50;
    let s = TestServer::start(c2).await;
    let t = Instant::now();
    while pg.psql("SELECT count(*) FROM predictions") != "70" {
        assert!(t.elapsed() < common::gate::EVENTUALLY, "spill not replayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!spill.exists());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_fed_back_while_postgres_is_down_are_spilled_and_replayed_into_the_feedback_table() {
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let mut cfg = pg_config(&pg, &spill);
    // Small, so that labels arriving during the outage go to disk.
    cfg.predlog.predlog_buffer_rows = 5;
    cfg.predlog.predlog_batch_rows = 5;
    let s = TestServer::start(cfg).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let body = json!({"instances": [format!("message {i}"), format!("other {i}")]});
        let (status, headers, v) = s
            .post_json("/v1/models/text-classifier/predict", &body)
            .await;
        assert_eq!(status, 200, "{v}");
        ids.push(headers["x-request-id"].to_str().unwrap().to_string());
    }
    let t = Instant::now();
    while pg.psql("SELECT count(*) FROM predictions") != "20" {
        assert!(
            t.elapsed() < common::gate::EVENTUALLY,
            "predictions not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.stop();
    // Labels while the database is down: the first for every instance, then
    // one changed and one repeated.
    let labels: Vec<Value> = ids
        .iter()
        .flat_map(|id| {
            [
                json!({"request_id": id, "instance": 0, "label": "spam"}),
                json!({"request_id": id, "instance": 1, "label": "ham"}),
            ]
        })
        .collect();
    let (status, _, v) = s
        .post_json("/v1/feedback", &json!({ "labels": labels[..10] }))
        .await;
    assert_eq!((status, v["accepted"].clone()), (200, json!(10)), "{v}");
    let (status, _, v) = s
        .post_json("/v1/feedback", &json!({ "labels": labels[10..] }))
        .await;
    assert_eq!((status, v["accepted"].clone()), (200, json!(10)), "{v}");
    let changed = json!({"request_id": ids[0], "instance": 0, "label": "ham"});
    let (_, _, v) = s.post_json("/v1/feedback", &changed).await;
    assert_eq!(v["replaced"], json!(1), "{v}");
    let (_, _, v) = s.post_json("/v1/feedback", &labels[2]).await;
    assert_eq!(v["unchanged"], json!(1), "{v}");
    // A label for a prediction another worker served: recorded for the join
    // in the database, not refused.
    let elsewhere = json!({"request_id": "served-by-another-worker", "label": "ham",
        "model": "text-classifier"});
    let (status, _, v) = s.post_json("/v1/feedback", &elsewhere).await;
    assert_eq!((status, v["deferred"].clone()), (200, json!(1)), "{v}");
    common::eventually("the labels spill while the database is down", || async {
        spill.exists()
    })
    .await;
    pg.resume();
    let replaying = dir.path().join("spill.jsonl.replaying");
    let t = Instant::now();
    while spill.exists() || replaying.exists() {
        assert!(
            t.elapsed() < common::gate::EVENTUALLY,
            "spill never replayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await.unwrap();
    // One row per labelled instance, the changed one with its latest label;
    // every label joins its prediction.
    assert_eq!(pg.psql("SELECT count(*) FROM feedback"), "21");
    assert_eq!(
        pg.psql("SELECT model FROM feedback WHERE request_id = 'served-by-another-worker'"),
        "text-classifier"
    );
    assert_eq!(
        pg.psql(&format!(
            "SELECT label->>'label' FROM feedback WHERE request_id = '{}' AND instance_index = 0",
            ids[0]
        )),
        "ham"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM labelled_predictions WHERE role = 'primary'"),
        "20"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM predictions WHERE role = 'feedback'"),
        "0",
        "labels go to their own table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_sink_is_the_default_and_logs_failures_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log/predictions.jsonl");
    let mut cfg = config();
    cfg.predlog.sink = PredLogMode::Auto;
    cfg.predlog.predlog_path = path.clone();
    cfg.predlog.predlog_flush_ms = 20;
    let s = TestServer::start(cfg.clone()).await;
    for i in 0..5 {
        predict(
            &s,
            json!({"model": "lstm-forecaster", "instances": [window(i)]}),
        )
        .await;
    }
    predict(
        &s,
        json!({"model": "lstm-forecaster", "instances": [window(1), window(20), window(21)]}),
    )
    .await;
    let (st, _, _) = s
        .post_json(
            "/predict",
            &json!({"model": "lstm-forecaster", "instances": [[[1]]]}),
        )
        .await;
    assert_eq!(st, 422);
    s.stop().await.unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5 + 3 + 1);
    let ok: Vec<&Value> = lines.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(ok.len(), 8);
    assert!(ok
        .iter()
        .all(|l| l["instance"].is_array() && l["instance_sha256"].as_str().unwrap().len() == 64));
    assert_eq!(
        ok.iter().filter(|l| l["cached"] == true).count(),
        1,
        "window(1) was cached the second time"
    );
    let failed: Vec<&Value> = lines.iter().filter(|l| l["status"] == 422).collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["error"].as_str().unwrap().contains("26 rows"));

    // Hash mode keeps inputs out of the log.
    let mut hashed = cfg;
    hashed.predlog.predlog_path = dir.path().join("hashed.jsonl");
    hashed.predlog.predlog_inputs = inferd::config::LogInputs::Hash;
    let s = TestServer::start(hashed.clone()).await;
    predict(
        &s,
        json!({"model": "text-classifier", "instances": ["secret text"]}),
    )
    .await;
    s.stop().await.unwrap();
    let text = std::fs::read_to_string(&hashed.predlog.predlog_path).unwrap();
    assert!(!text.contains("secret text"));
    assert!(text.contains("instance_sha256"));
}

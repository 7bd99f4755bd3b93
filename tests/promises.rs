//! Behaviours the README promises that no other test exercised (issue 16):
//! the two ways a prediction-log record can be lost, each counted and logged;
//! shutdown when in-flight work outlasts the grace period, and the log
//! writer's "write, then spill" budget at shutdown; the KServe v2 routes under
//! overload and while starting or draining; a model whose manifest turns its
//! cache off.
//!
//! Overlaps that need a model call to stay in flight use a gate in front of the
//! real models (ONNX Runtime): a call from the batcher waits inside the model
//! until the test opens the gate, so "in flight" is a certainty rather than a
//! race against the machine's speed. Warm-up and the golden gate are not held.
//!
//! The log assertions read the server's own `tracing` output, captured by a
//! subscriber this test binary installs. The warnings checked are rate-limited
//! per call site for the whole process (`ratelimit`), so each site is reached
//! by exactly one test here.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::gate::{held, stalled, Gate, EVENTUALLY};
use common::services::Postgres;
use common::{config, golden, latest_series, metric, metric_opt, root, uncached, TestServer};
use inferd::config::{PredLogMode, ServeConfig};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Log capture

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything the servers of this test binary logged at INFO and above. The
/// subscriber is global, so lines of tests running side by side mix: the
/// assertions look for messages only one test can produce.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogSink(w.clone()))
            .try_init()
            .expect("the only subscriber of this test binary");
        buf
    })
    .clone()
}

fn logs_text(logs: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// The first captured line holding every one of `needles`, waiting up to
/// `within` for it.
async fn logged_line(logs: &Mutex<Vec<u8>>, needles: &[&str], within: Duration) -> String {
    let t = Instant::now();
    loop {
        if let Some(l) = logs_text(logs)
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return l.to_string();
        }
        assert!(
            t.elapsed() < within,
            "no log line containing {needles:?} within {within:?}; captured:\n{}",
            logs_text(logs)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// A gate in front of the real models

// ---------------------------------------------------------------------------
// PostgreSQL frozen (SIGSTOP): connections accepted, never answered

/// The cluster's processes: the postmaster (from its pid file) and its
/// children, the backends among them.
fn pg_processes(pg: &Postgres) -> Vec<i32> {
    let data = pg.psql("SHOW data_directory");
    let pidfile =
        std::fs::read_to_string(Path::new(&data).join("postmaster.pid")).expect("postmaster.pid");
    let postmaster: i32 = pidfile
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("postmaster pid");
    let mut pids = vec![postmaster];
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// Sends `sig` to each; a process that has exited meanwhile (the backend of
/// the `psql` that read the data directory) is skipped.
// Unsafe: std sends no signal but SIGKILL; see SAFETY.
#[allow(unsafe_code)]
fn signal(pids: &[i32], sig: i32) {
    for &p in pids {
        // SAFETY: kill(2) with a pid of the cluster this test started.
        if unsafe { libc::kill(p, sig) } != 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "kill({p}, {sig}): {e}");
        }
    }
}

/// Frozen until dropped: a failed assertion must not leave the cluster
/// stopped, or its own shutdown (`pg_ctl stop`) would wait on it.
struct Frozen(Vec<i32>);

impl Frozen {
    fn new(pg: &Postgres) -> Frozen {
        // The guard exists before the first SIGSTOP, so a failure part-way
        // still resumes what was stopped.
        let frozen = Frozen(pg_processes(pg));
        signal(&frozen.0, libc::SIGSTOP);
        frozen
    }
}

impl Drop for Frozen {
    // Unsafe: as `signal`.
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: as in `signal`; errors are ignored while unwinding.
            unsafe { libc::kill(p, libc::SIGCONT) };
        }
    }
}

// ---------------------------------------------------------------------------
// Shared bits

fn window(i: usize) -> Value {
    golden("lstm-forecaster")["cases"][i % 32]["input"].clone()
}

fn v2_window(i: usize) -> Value {
    json!({"inputs": [{"name": "window", "shape": [1, 26, 1], "datatype": "FP32", "data": window(i)}]})
}

fn v2_text(t: &str) -> Value {
    json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]})
}

fn jsonl_config(path: &Path) -> ServeConfig {
    let mut c = uncached();
    c.predlog.sink = PredLogMode::Jsonl;
    c.predlog.predlog_path = path.to_path_buf();
    c.predlog.predlog_flush_ms = 20;
    c
}

/// The records in a JSON-lines file (none when it was never created).
fn records(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(t) => t
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

async fn metrics_until(s: &TestServer, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let m = s.metrics().await;
        if ok(&m) {
            return m;
        }
        assert!(t.elapsed() < EVENTUALLY, "{what} never reached:\n{m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` LSTM predictions, each answered 200.
async fn serve_windows(s: &TestServer, n: usize) {
    for i in 0..n {
        let (st, _, v) = s
            .post_json(
                "/predict",
                &json!({"model": "lstm-forecaster", "instances": [window(i)]}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
}

/// The writer keeps every record queued or buffered until shutdown.
fn hold_records_until_shutdown(cfg: &mut ServeConfig) {
    cfg.predlog.predlog_flush_ms = 60_000;
    cfg.predlog.predlog_batch_rows = 100_000;
}

/// Waits until the writer holds `n` records, queued or buffered.
async fn held_by_writer(s: &TestServer, n: usize) {
    metrics_until(s, &format!("{n} records held by the writer"), |m| {
        metric(m, "inferd_predlog_queue_depth") + metric(m, "inferd_predlog_buffered_records")
            == n as f64
    })
    .await;
}

fn dropped(m: &str, reason: &str) -> f64 {
    metric_opt(
        m,
        &format!("inferd_predlog_dropped_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// 1. The two ways a record is lost: each counted and logged

/// A request's records go to a channel of `INFERD_PREDLOG_CHANNEL` places with
/// `try_send`. On a single-threaded runtime the writer cannot receive while the
/// handler logs a request's 64 records in one go, so with one place exactly one
/// record gets in and 63 overflow: each is counted, the overflow is logged, the
/// request itself is served, and the file holds the one record.
#[tokio::test(flavor = "current_thread")]
async fn channel_overflow_drops_records_counted_and_logged() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predictions.jsonl");
    let mut cfg = jsonl_config(&path);
    cfg.predlog.predlog_channel = 1;
    let s = TestServer::start(cfg).await;
    let instances: Vec<Value> = (0..64).map(window).collect();
    let (st, _, v) = s
        .post_json(
            "/predict",
            &json!({"model": "lstm-forecaster", "instances": instances}),
        )
        .await;
    assert_eq!(st, 200, "a dropped record never fails its request: {v}");
    assert_eq!(v["predictions"].as_array().map(Vec::len), Some(64));
    let m = metrics_until(&s, "the one record written", |m| {
        metric_opt(m, "inferd_predlog_written_total{sink=\"jsonl\"}") == Some(1.0)
    })
    .await;
    assert_eq!(dropped(&m, "channel_full"), 63.0, "{m}");
    assert_eq!(dropped(&m, "spill_failed"), 0.0, "{m}");
    let line = logged_line(
        &logs,
        &["prediction log channel full: record dropped"],
        EVENTUALLY,
    )
    .await;
    assert!(line.contains("WARN"), "{line}");
    s.stop().await.unwrap();
    let written = records(&path);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0]["status"], 200);
}

/// PostgreSQL is down and the spill file cannot be written (its directory is a
/// regular file): past the writer's buffer (`INFERD_PREDLOG_BUFFER_ROWS` = 2)
/// every record is dropped, counted as `spill_failed` and logged, while
/// predictions are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_spill_file_drops_records_counted_and_logged() {
    let logs = captured_logs();
    let mut pg = Postgres::start();
    pg.stop();
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("not-a-directory");
    std::fs::write(&not_a_dir, b"a file where the spill directory should be").unwrap();
    let spill = not_a_dir.join("spill.jsonl");
    let mut cfg = config();
    cfg.predlog.sink = PredLogMode::Postgres;
    cfg.predlog.database_url = Some(pg.url());
    cfg.predlog.predlog_spill_path = spill.clone();
    cfg.predlog.predlog_buffer_rows = 2;
    cfg.predlog.predlog_batch_rows = 1;
    cfg.predlog.predlog_flush_ms = 20;
    let s = TestServer::start(cfg).await;
    const N: usize = 16;
    let instances: Vec<Value> = (0..N).map(window).collect();
    let (st, _, v) = s
        .post_json(
            "/predict",
            &json!({"model": "lstm-forecaster", "instances": instances}),
        )
        .await;
    assert_eq!(st, 200, "the log's failure never fails a prediction: {v}");
    // Failed writes go back to the buffer, and the bound spills the excess
    // again, so in the end exactly the buffer's two records are held.
    let m = metrics_until(&s, "N - 2 records dropped, the database tried", |m| {
        dropped(m, "spill_failed") == (N - 2) as f64
            && metric(m, "inferd_predlog_retries_total") >= 1.0
    })
    .await;
    assert_eq!(dropped(&m, "channel_full"), 0.0, "{m}");
    assert_eq!(
        metric_opt(&m, "inferd_predlog_spilled_total").unwrap_or(0.0),
        0.0,
        "nothing reached the spill file:\n{m}"
    );
    let line = logged_line(
        &logs,
        &["prediction log spill failed, records dropped"],
        EVENTUALLY,
    )
    .await;
    assert!(line.contains("ERROR"), "{line}");
    s.stop().await.unwrap();
    assert!(!spill.exists());
    // The records are gone, not late: the database, back now, never got them.
    pg.resume();
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'predictions'"),
        "0"
    );
}

// ---------------------------------------------------------------------------
// 2. Shutdown: in-flight work past the grace period; the writer's budget

/// A prediction still inside the model when `INFERD_SHUTDOWN_GRACE_MS` runs
/// out is abandoned: the server stops waiting after the grace and returns
/// with a warning, after dropping the connections still open (their clients
/// see the connection close). The request is never answered and leaves no
/// record; the records of requests served before the shutdown are still
/// flushed after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_work_past_the_grace_period_is_abandoned() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predictions.jsonl");
    let mut cfg = jsonl_config(&path);
    cfg.limits.max_concurrency = Some(1);
    cfg.net.shutdown_grace_ms = 500;
    hold_records_until_shutdown(&mut cfg);
    let gate = Gate::default();
    let _open = gate.open_on_drop();
    let mut s = TestServer::start_with_loader(cfg, held(&gate)).await;
    serve_windows(&s, 3).await;
    held_by_writer(&s, 3).await;
    gate.close();
    // A client with no timeout of its own: the gate holds its request in the
    // model for as long as the test likes, so only the server can end it.
    let in_flight = tokio::spawn(
        s.client
            .post(s.url("/predict"))
            .json(&json!({"model": "lstm-forecaster", "instances": [window(3)]}))
            .send(),
    );
    gate.until_waiting(1, "the fourth request inside the model")
        .await;

    let t = Instant::now();
    s.trigger_shutdown();
    // The call stays held: a server that waited for it would never return.
    let ran = tokio::time::timeout(EVENTUALLY, &mut s.handle)
        .await
        .expect("the server returned with a call still held in the model")
        .expect("server task");
    let took = t.elapsed();
    ran.expect("a shutdown past the grace period is still a clean exit");
    assert!(
        took >= Duration::from_millis(490),
        "returned {took:?} after the signal, before the 500 ms grace was over"
    );
    println!("returned {took:?} after the signal with a call held in the model (grace 500 ms)");
    // Its connection is dropped when the grace ends: the client sees the
    // connection close, never an answer.
    let ended = tokio::time::timeout(EVENTUALLY, in_flight)
        .await
        .expect("the abandoned request's connection was closed")
        .expect("client task");
    match ended {
        Ok(r) => panic!("the abandoned request got an answer: {}", r.status()),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    let line = logged_line(
        &logs,
        &[
            "grace period over with requests still in flight",
            "grace_ms=500",
        ],
        EVENTUALLY,
    )
    .await;
    assert!(line.contains("WARN"), "{line}");
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err(),
        "the listener is closed"
    );
    let logged = records(&path);
    assert_eq!(
        logged.len(),
        3,
        "the served requests' records, flushed after the grace; none for the abandoned one: {logged:?}"
    );
    assert!(logged.iter().all(|r| r["status"] == 200));

    gate.until_waiting(0, "the abandoned run stopped once its client left")
        .await;
}

/// At shutdown the writer writes for a third of `INFERD_SHUTDOWN_GRACE_MS`,
/// then spills the rest for the next start. With PostgreSQL frozen (SIGSTOP:
/// connections accepted, never answered) the write cannot finish: shutdown
/// takes the budget (4 s of a 12 s grace) and no longer, every queued record is
/// in the spill file, and the next start writes each one exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_hung_database_gets_the_budget_then_records_spill() {
    let logs = captured_logs();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let mut cfg = config();
    cfg.predlog.sink = PredLogMode::Postgres;
    cfg.predlog.database_url = Some(pg.url());
    cfg.predlog.predlog_spill_path = spill.clone();
    // The budget is a third of the grace: 4 s of 12. Frozen, the database
    // would hold the write forever; shutdown must end after the budget, and
    // well before the grace (8 s of margin for a loaded machine).
    cfg.net.shutdown_grace_ms = 12_000;
    hold_records_until_shutdown(&mut cfg);
    let s = TestServer::start(cfg.clone()).await;
    const N: usize = 30;
    serve_windows(&s, N).await;
    held_by_writer(&s, N).await;

    let frozen = Frozen::new(&pg);
    let t = Instant::now();
    s.stop().await.unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(3_900),
        "shutdown took {took:?}: the write never waited on the frozen database"
    );
    assert!(
        took < Duration::from_secs(12),
        "shutdown took {took:?}: the budget is 4 s (a third of the 12 s grace)"
    );
    println!("shutdown with PostgreSQL frozen took {took:?} (budget 4 s of a 12 s grace)");
    logged_line(&logs, &["no answer within the shutdown budget"], EVENTUALLY).await;
    let spilled: Vec<Value> = records(&spill);
    assert_eq!(spilled.len(), N, "every queued record spilled");
    let ids: std::collections::HashSet<&str> =
        spilled.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids.len(), N);

    drop(frozen);
    let mut next = cfg;
    next.predlog.predlog_flush_ms = 50;
    let s = TestServer::start(next).await;
    let t = Instant::now();
    while pg.psql("SELECT count(*) FROM predictions") != N.to_string() {
        assert!(
            t.elapsed() < EVENTUALLY,
            "spill not replayed: {} rows",
            pg.psql("SELECT count(*) FROM predictions")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await.unwrap();
    assert!(!spill.exists(), "the spill file was replayed and removed");
    assert_eq!(
        pg.psql("SELECT count(DISTINCT id) FROM predictions"),
        N.to_string()
    );
}

/// In-flight work that outlasts the grace period but finishes while the log
/// writer is still shutting down (writing to a hung database for its budget).
/// README: every served prediction produces one record, lost only when the
/// spill file cannot be written or the channel overflows. Such a request was
/// once answered 200 with its record lost (the writer had drained the channel
/// for the last time); its connection is dropped at the end of the grace,
/// before the writer's last drain, so it is never answered, and the records of
/// the requests that were answered are all spilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_during_the_writers_shutdown_budget_keeps_its_record() {
    let logs = captured_logs();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let mut cfg = config();
    cfg.limits.max_concurrency = Some(1);
    cfg.predlog.sink = PredLogMode::Postgres;
    cfg.predlog.database_url = Some(pg.url());
    cfg.predlog.predlog_spill_path = spill.clone();
    cfg.net.shutdown_grace_ms = 2_400; // the writer's budget: 800 ms
    hold_records_until_shutdown(&mut cfg);
    let gate = Gate::default();
    let _open = gate.open_on_drop();
    let mut s = TestServer::start_with_loader(cfg, held(&gate)).await;
    serve_windows(&s, 5).await;
    gate.close();
    let late = tokio::spawn(
        s.client
            .post(s.url("/predict"))
            .header("x-request-id", "answered-after-the-grace")
            .json(&json!({"model": "lstm-forecaster", "instances": [window(5)]}))
            .send(),
    );
    gate.until_waiting(1, "the late request inside the model")
        .await;
    let frozen = Frozen::new(&pg);
    s.trigger_shutdown();
    // The grace is over and the writer has taken what was queued; it now
    // waits on the frozen database for its budget.
    logged_line(
        &logs,
        &[
            "grace period over with requests still in flight",
            "grace_ms=2400",
        ],
        EVENTUALLY,
    )
    .await;
    // The late request's connection is dropped when the grace ends, while
    // its call is still held in the model: it is never answered, so it can
    // have no record to lose.
    let r = tokio::time::timeout(EVENTUALLY, late)
        .await
        .expect("the late request's connection was closed")
        .unwrap();
    match r {
        Ok(r) => panic!("the late request got an answer: {}", r.status()),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    // Its call finishes now, during the writer's budget, into nothing.
    gate.open();
    tokio::time::timeout(EVENTUALLY, &mut s.handle)
        .await
        .expect("the server returned")
        .unwrap()
        .unwrap();
    drop(frozen);
    let spilled: Vec<String> = records(&spill)
        .iter()
        .map(|r| r["request_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        spilled.len(),
        5,
        "the five served requests' records, spilled; none for the unanswered one: {spilled:?}"
    );
    assert!(!spilled.iter().any(|id| id == "answered-after-the-grace"));
}

// ---------------------------------------------------------------------------
// 3. KServe v2 under overload, while starting and while draining

fn assert_v2_refusal(what: &str, st: u16, h: &reqwest::header::HeaderMap, v: &Value, want: u16) {
    assert_eq!(st, want, "{what}: {v}");
    assert!(
        v["error"].is_string(),
        "{what}: the v2 error shape {{\"error\": \"...\"}}: {v}"
    );
    assert_eq!(
        h.get("retry-after").and_then(|x| x.to_str().ok()),
        Some("1"),
        "{what}: Retry-After"
    );
}

/// One model call held in the model, one request in the queue
/// (`INFERD_MAX_QUEUE` = 1): the v2 inference routes answer 429 with
/// `Retry-After: 1`, as `/predict` does, and the admitted requests finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_v2_infer_answers_429_with_retry_after_when_the_queue_is_full() {
    let mut cfg = uncached();
    cfg.limits.max_concurrency = Some(1);
    cfg.limits.max_queue = 1;
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let s = TestServer::start_with_loader(cfg, held(&gate)).await;
    let admitted = |i: usize| {
        let (c, u) = (s.client.clone(), s.url("/v2/models/lstm-forecaster/infer"));
        tokio::spawn(async move {
            let r = c.post(u).json(&v2_window(i)).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let running = admitted(0);
    gate.until_waiting(1, "the first request inside the model")
        .await;
    let queued = admitted(1);
    metrics_until(&s, "one request queued", |m| {
        metric(m, "inferd_queue_depth") == 1.0
    })
    .await;

    for (path, body) in [
        ("/v2/models/lstm-forecaster/infer", v2_window(2)),
        ("/v2/models/lstm-forecaster/versions/1/infer", v2_window(3)),
        (
            "/v2/models/text-classifier/infer",
            v2_text("the queue is shared"),
        ),
    ] {
        let (st, h, v) = s.post_json(path, &body).await;
        assert_v2_refusal(path, st, &h, &v, 429);
        assert!(
            v["error"].as_str().unwrap().contains("capacity"),
            "{path}: {v}"
        );
    }
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "inferd_rejections_total{reason=\"queue_full\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "inferd_requests_total{model=\"\",protocol=\"http\",status=\"429\",version=\"\"}"
        ),
        3.0,
        "{m}"
    );

    gate.open();
    for t in [running, queued] {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["outputs"][0]["name"], "forecast", "{v}");
    }
    s.stop().await.unwrap();
}

/// Every v2 route that must refuse while starting or draining, and liveness.
async fn v2_refusals(s: &TestServer, phase: &str) {
    for (path, body) in [
        ("/v2/models/lstm-forecaster/infer", v2_window(0)),
        ("/v2/models/lstm-forecaster/versions/1/infer", v2_window(1)),
        ("/v2/models/text-classifier/infer", v2_text(phase)),
    ] {
        let (st, h, v) = s.post_json(path, &body).await;
        assert_v2_refusal(&format!("{phase} {path}"), st, &h, &v, 503);
    }
    let r = s
        .client
        .get(s.url("/v2/health/ready"))
        .send()
        .await
        .unwrap();
    let (st, h) = (r.status().as_u16(), r.headers().clone());
    let v: Value = r.json().await.unwrap();
    assert_v2_refusal(&format!("{phase} /v2/health/ready"), st, &h, &v, 503);
    let (st, body) = s.get("/v2/models/lstm-forecaster/ready").await;
    assert_eq!(st, 503, "{phase} model ready: {body}");
    let (st, body) = s.get("/v2/health/live").await;
    assert_eq!(st, 200, "{phase} live: {body}");
}

/// While the models load (the loader is held) and while draining
/// (`INFERD_DRAIN_DELAY_MS` keeps the listener open), the v2 inference and
/// readiness routes answer 503 in the v2 error shape with `Retry-After`,
/// liveness stays 200, and no refusal leaves a prediction-log record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_v2_routes_answer_503_while_starting_and_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predictions.jsonl");
    let mut cfg = jsonl_config(&path);
    // The listener stays open, answering 503, for the drain delay: the checks
    // below must fit in it, with room for a loaded machine.
    cfg.net.drain_delay_ms = 5_000;
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let mut s = TestServer::spawn_with_loader(cfg, stalled(&gate)).await;
    gate.until_waiting(1, "the first model load").await;

    v2_refusals(&s, "starting").await;
    let (st, h, v) = s
        .post_json("/v2/models/lstm-forecaster/infer", &v2_window(0))
        .await;
    assert!(
        v["error"].as_str().unwrap().contains("loading"),
        "{st} {h:?} {v}"
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "inferd_rejections_total{reason=\"not_ready\"}"),
        4.0,
        "{m}"
    );

    gate.open();
    s.wait_ready().await;
    let (st, _, v) = s
        .post_json("/v2/models/lstm-forecaster/infer", &v2_window(5))
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = s.get("/v2/health/ready").await;
    assert_eq!(st, 200);

    s.trigger_shutdown();
    let t = Instant::now();
    while s.get("/readyz").await.0 != 503 {
        assert!(t.elapsed() < EVENTUALLY, "never began draining");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    v2_refusals(&s, "draining").await;
    let (_, h, v) = s
        .post_json("/v2/models/lstm-forecaster/infer", &v2_window(0))
        .await;
    assert!(
        v["error"].as_str().unwrap().contains("shutting down"),
        "{v}"
    );
    assert_eq!(
        h.get("connection").and_then(|x| x.to_str().ok()),
        Some("close"),
        "a draining refusal closes its connection"
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "inferd_rejections_total{reason=\"draining\"}"),
        4.0,
        "{m}"
    );
    tokio::time::timeout(EVENTUALLY, &mut s.handle)
        .await
        .expect("drained")
        .unwrap()
        .unwrap();
    let logged = records(&path);
    assert_eq!(
        logged.len(),
        1,
        "only the served request has a record; 503s leave none: {logged:?}"
    );
}

// ---------------------------------------------------------------------------
// 4. `[cache] enabled = false`

/// A copy of the shipped models where `lstm-forecaster`'s manifest turns its
/// cache off; `text-classifier` keeps its cache.
fn models_with_lstm_cache_off() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in ["lstm-forecaster", "text-classifier"] {
        common::copy_dir(&root().join("models").join(m), &dir.path().join(m));
    }
    let manifest: PathBuf = dir.path().join("lstm-forecaster/1/model.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let edited = text.replace("[cache]\nenabled = true", "[cache]\nenabled = false");
    assert_ne!(edited, text, "the manifest's [cache] section moved");
    std::fs::write(&manifest, edited).unwrap();
    dir
}

fn cache_lookups(m: &str, result: &str) -> f64 {
    metric_opt(
        m,
        &format!("inferd_cache_requests_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// The same forecast asked four times (three `/predict`, one v2) runs the model
/// four times: never cached, the cache not even consulted, one batch each;
/// the text model beside it still hits on a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_manifest_disables_the_cache_is_never_cached() {
    let models = models_with_lstm_cache_off();
    let mut cfg = config();
    cfg.models.models_dir = models.path().to_path_buf();
    let s = TestServer::start(cfg).await;

    let (st, listing) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let cache_of = |name: &str| {
        listing["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name && d["default"] == true)
            .map(|d| d["cache"]["enabled"].clone())
    };
    assert_eq!(cache_of("lstm-forecaster"), Some(json!(false)), "{listing}");
    assert_eq!(cache_of("text-classifier"), Some(json!(true)), "{listing}");

    let lstm_batches = latest_series("inferd_batches_total", "lstm-forecaster");
    let lstm_instances = latest_series("inferd_model_instances_total", "lstm-forecaster");
    let m0 = s.metrics().await;
    let body = json!({"model": "lstm-forecaster", "instances": [window(7)]});
    let mut forecasts = Vec::new();
    for i in 0..3 {
        let (st, _, v) = s.post_json("/predict", &body).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["cached"], json!([false]), "request {i}: {v}");
        forecasts.push(v["predictions"][0]["forecast"]["co2_ppm"].clone());
    }
    assert!(forecasts
        .iter()
        .all(|f| f.is_number() && *f == forecasts[0]));
    let r = s
        .client
        .post(s.url("/v2/models/lstm-forecaster/infer"))
        .json(&v2_window(7))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-inferd-cached")
            .and_then(|x| x.to_str().ok()),
        Some("0")
    );
    let m1 = s.metrics().await;
    for result in ["hit", "miss"] {
        assert_eq!(
            cache_lookups(&m1, result),
            cache_lookups(&m0, result),
            "cache {result}s moved for a model without a cache:\n{m1}"
        );
    }
    assert_eq!(
        metric(&m1, &lstm_instances) - metric_opt(&m0, &lstm_instances).unwrap_or(0.0),
        4.0,
        "every request ran the model:\n{m1}"
    );
    assert_eq!(
        metric(&m1, &lstm_batches) - metric_opt(&m0, &lstm_batches).unwrap_or(0.0),
        4.0,
        "one batch per request:\n{m1}"
    );

    let text = json!({"model": "text-classifier", "instances": ["Subject: lunch\n\nNoon at the usual place?"]});
    let (_, _, first) = s.post_json("/predict", &text).await;
    let (_, _, second) = s.post_json("/predict", &text).await;
    assert_eq!(first["cached"], json!([false]), "{first}");
    assert_eq!(second["cached"], json!([true]), "{second}");
    let m2 = s.metrics().await;
    assert_eq!(cache_lookups(&m2, "miss") - cache_lookups(&m1, "miss"), 1.0);
    assert_eq!(cache_lookups(&m2, "hit") - cache_lookups(&m1, "hit"), 1.0);
    assert_eq!(
        metric(&m2, &lstm_batches),
        metric(&m1, &lstm_batches),
        "{m2}"
    );
    s.stop().await.unwrap();
}

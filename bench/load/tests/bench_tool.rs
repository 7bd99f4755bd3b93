//! `inferd-bench` against a live inferd started in-process: a short run, targets
//! checked, JSON and plot written; a missed target sets exit code 2. Payload
//! files reach the server as written (read back from its prediction log), on
//! both protocols; a rate schedule reports each step; bad input stops start-up.
//!
//! The tests take turns (`TURN`): each runs a server and timed load on the same
//! few cores, and the rates they check would suffer from a neighbour.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{golden, grpc_requests, root, uncached, TestServer};
use inferd::config::{PredLogMode, ServeConfig};
use serde_json::{json, Value};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `inferd-bench` with exactly `args`: exit code, stdout, stderr.
fn bench_raw(args: Vec<String>) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inferd-bench"))
        .args(&args)
        .output()
        .expect("run inferd-bench");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bench_raw` on a blocking thread, with `--url`, `--quiet` and a JSON report
/// in `dir`; returns the report too (`Null` when none was written).
async fn bench_json(url: &str, dir: &Path, args: &[&str]) -> (i32, String, String, Value) {
    let report = dir.join("report.json");
    let _ = std::fs::remove_file(&report);
    let mut all: Vec<String> = vec!["--url".into(), url.into(), "--quiet".into()];
    all.extend(["--json".into(), report.display().to_string()]);
    all.extend(args.iter().map(|a| a.to_string()));
    let (code, out, err) = tokio::task::spawn_blocking(move || bench_raw(all))
        .await
        .expect("bench thread");
    let json = std::fs::read(&report)
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("report JSON"))
        .unwrap_or(Value::Null);
    (code, out, err, json)
}

/// A server without a cache that logs every prediction, with its input, to `log`.
fn logging(log: &Path) -> ServeConfig {
    let mut c = uncached();
    c.predlog.sink = PredLogMode::Jsonl;
    c.predlog.predlog_path = log.to_path_buf();
    c.predlog.predlog_flush_ms = 20;
    c
}

/// The prediction log's records for `model`.
fn logged(log: &Path, model: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    // Complete lines only: a live server's writer may be half-way through one.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON record"))
        .filter(|r| r["model"] == model)
        .collect()
}

/// `v` with every number rounded to float32, as a v2 FP32 tensor carries it.
fn fp32(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(fp32).collect()),
        Value::Number(n) => json!(n.as_f64().expect("a number") as f32),
        other => other.clone(),
    }
}

/// How many times each instance was logged (as its JSON text, numbers in float32).
fn tally(records: &[Value]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for r in records {
        *n.entry(fp32(&r["instance"]).to_string()).or_insert(0) += 1;
    }
    n
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n") + "\n").expect("write payloads");
}

fn bench(url: &str, extra: &[&str], dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inferd-bench"))
        .args([
            "--url",
            url,
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--quiet",
            "--models-dir",
        ])
        .arg(root().join("models"))
        .arg("--json")
        .arg(dir.join("report.json"))
        .arg("--plot")
        .arg(dir.join("plot.svg"))
        .args(extra)
        .output()
        .expect("run inferd-bench");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_percentiles_checks_targets_and_writes_files() {
    let _turn = TURN.lock().await;
    let s = TestServer::start(uncached()).await;
    let url = format!("http://{}", s.addr);
    let dir = tempfile::tempdir().unwrap();

    let args = [
        "--model",
        "lstm-forecaster",
        "-c",
        "4",
        "--p99-max-ms",
        "5000",
        "--min-rps",
        "10",
        "--max-error-rate",
        "0",
    ];
    let url2 = url.clone();
    let d = dir.path().to_path_buf();
    let (code, stdout) = tokio::task::spawn_blocking(move || bench(&url2, &args, &d))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("p99 ms") && stdout.contains("target min_rps met"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert!(report["requests"].as_u64().unwrap() > 10);
    assert_eq!(report["ok"], report["requests"]);
    assert_eq!(report["passed"], true);
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_ms"][k].as_f64().unwrap() > 0.0, "{k}");
    }
    assert!(report["latency_ms"]["p50"].as_f64() <= report["latency_ms"]["p99"].as_f64());
    assert!(!report["timeline"].as_array().unwrap().is_empty());
    let svg = std::fs::read_to_string(dir.path().join("plot.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("latency over time"));

    // Open loop with an impossible target: the run completes and exits 2.
    let args = [
        "--model",
        "text-classifier",
        "--rate",
        "200",
        "--min-rps",
        "1000000000",
    ];
    let d = dir.path().to_path_buf();
    let (code, stdout) = tokio::task::spawn_blocking(move || bench(&url, &args, &d))
        .await
        .unwrap();
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.contains("MISSED"), "{stdout}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["mode"], "open");
    // The schedule is exact: 200/s for 1 s is 200 requests, however late a
    // loaded machine sends them (`send_lag_ms` says how late).
    assert_eq!(report["requests"].as_u64(), Some(200), "{report}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_files_reach_the_server_as_written_on_both_protocols() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("predictions.jsonl");
    let s = TestServer::start(logging(&log)).await;
    let url = format!("http://{}", s.addr);

    // v1, text: two bare texts and a full body around a third; one connection,
    // nine requests, so each line goes out exactly three times.
    let texts = [
        "Win a FREE cruise!!! Click now to claim your prize",
        "Are we still on for lunch at noon tomorrow?",
        "The quarterly report is attached; comments by Friday please.",
    ];
    let text_file = dir.path().join("texts.jsonl");
    write_lines(
        &text_file,
        &[
            json!(texts[0]),
            json!({"model": "text-classifier", "instances": [texts[1]]}),
            json!(texts[2]),
        ],
    );
    let (code, out, err, report) = bench_json(
        &url,
        dir.path(),
        &[
            "--model",
            "text-classifier",
            "--payloads",
            text_file.to_str().unwrap(),
            "-c",
            "1",
            "-n",
            "9",
            "--warmup",
            "0s",
            "--max-error-rate",
            "0",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        (report["requests"].as_u64(), report["ok"].as_u64()),
        (Some(9), Some(9)),
        "{report}"
    );
    assert_eq!(
        (report["protocol"].as_str(), report["payloads"].as_u64()),
        (Some("v1"), Some(3))
    );

    // v2, windows: two bare golden windows and a full v2 body holding a third,
    // its data nested as the file's author wrote it; open loop, 12 requests.
    let g = golden("lstm-forecaster");
    let windows: Vec<Value> = (0..3).map(|i| g["cases"][i * 5]["input"].clone()).collect();
    assert!(windows[0] != windows[1] && windows[1] != windows[2]);
    let window_file = dir.path().join("windows.jsonl");
    write_lines(
        &window_file,
        &[
            windows[0].clone(),
            windows[1].clone(),
            json!({"inputs": [{"name": "window", "datatype": "FP32", "shape": [1, 26, 1],
                               "data": [windows[2].clone()]}]}),
        ],
    );
    let (code, out, err, report) = bench_json(
        &url,
        dir.path(),
        &[
            "--model",
            "lstm-forecaster",
            "--protocol",
            "v2",
            "--payloads",
            window_file.to_str().unwrap(),
            "--rate",
            "100",
            "-n",
            "12",
            "--warmup",
            "0s",
            "--max-error-rate",
            "0",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        (report["requests"].as_u64(), report["ok"].as_u64()),
        (Some(12), Some(12)),
        "{report}"
    );
    assert_eq!(report["protocol"], "v2");
    assert!(report["errors_by_status"].as_object().unwrap().is_empty());

    // Two windows per request (--instances 2): each bare line's window and the
    // next bare line's; the full body stays as it is.
    let (code, out, err, report) = bench_json(
        &url,
        dir.path(),
        &[
            "--model",
            "lstm-forecaster",
            "--protocol",
            "v2",
            "--payloads",
            window_file.to_str().unwrap(),
            "--instances",
            "2",
            "-c",
            "1",
            "-n",
            "3",
            "--warmup",
            "0s",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(report["ok"].as_u64(), Some(3), "{report}");

    s.stop().await.unwrap();
    let text_records = logged(&log, "text-classifier");
    assert!(text_records.iter().all(|r| r["status"] == 200));
    let want: BTreeMap<String, usize> = texts.iter().map(|t| (json!(t).to_string(), 3)).collect();
    assert_eq!(tally(&text_records), want);
    let window_records = logged(&log, "lstm-forecaster");
    assert!(window_records.iter().all(|r| r["status"] == 200));
    // 4 each from the first run; then [w0, w1], [w1, w0] and w2 from the second.
    let counts = [4 + 2, 4 + 2, 4 + 1];
    let want: BTreeMap<String, usize> = windows
        .iter()
        .zip(counts)
        .map(|(w, n)| (fp32(w).to_string(), n))
        .collect();
    assert_eq!(tally(&window_records), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_reports_each_step_at_its_rate() {
    let _turn = TURN.lock().await;
    let s = TestServer::start(uncached()).await;
    let url = format!("http://{}", s.addr);
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("plot.svg");
    let models = root().join("models");
    let (code, out, err, report) = bench_json(
        &url,
        dir.path(),
        &[
            "--model",
            "lstm-forecaster",
            "--protocol",
            "v2",
            "--models-dir",
            models.to_str().unwrap(),
            "--schedule",
            "1s:40,1s:120",
            "--warmup",
            "200ms",
            "--plot",
            plot.to_str().unwrap(),
            "--max-error-rate",
            "0",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(report["mode"], "open");
    assert_eq!(report["schedule"], "1s:40,1s:120");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{report}");
    for (step, target) in steps.iter().zip([40.0, 120.0]) {
        assert_eq!(step["target_rps"].as_f64(), Some(target));
        // Requests are counted in the step they were scheduled in: exactly
        // rate x duration.
        assert_eq!(step["requests"].as_f64(), Some(target), "{step}");
        assert_eq!(step["ok"], step["requests"]);
        assert!(step["errors_by_status"].as_object().unwrap().is_empty());
        // Answers received during the step are reported (how near its target
        // depends on the machine; `send_lag_ms` says how late the sends were).
        assert!(step["rps"].as_f64().is_some_and(|r| r > 0.0), "{step}");
        let l = &step["latency_ms"];
        let (p50, p95, p99) = (
            l["p50"].as_f64().unwrap(),
            l["p95"].as_f64().unwrap(),
            l["p99"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{l}");
    }
    assert_eq!(report["requests"].as_u64(), Some(160));
    assert!((report["duration_s"].as_f64().unwrap() - 2.0).abs() < 1e-6);
    // What was answered before the end: some, and no more than was due.
    let delivered = report["delivered_rps"].as_f64().expect("delivered_rps");
    assert!(delivered > 0.0 && delivered <= 80.0, "{delivered}");
    assert!(!report["timeline"].as_array().unwrap().is_empty());
    // The table has a row per step, and the plot marks the second step.
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("1 ") || l.trim_start().starts_with("2 "))
        .collect();
    assert!(out.contains("target/s") && out.contains("p95 ms"), "{out}");
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[1].contains("120.0"), "{out}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("120/s") && svg.contains("latency over time"));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_sends_the_golden_inputs_and_bad_input_stops_start_up() {
    let _turn = TURN.lock().await;
    let s = TestServer::start(uncached()).await;
    let url = format!("http://{}", s.addr);
    let dir = tempfile::tempdir().unwrap();
    let models = root().join("models");
    let models = models.to_str().unwrap();

    // The default payloads (golden texts) over v2: the input name comes from
    // the model's metadata, and every request is answered 200.
    let (code, out, err, report) = bench_json(
        &url,
        dir.path(),
        &[
            "--model",
            "text-classifier",
            "--protocol",
            "v2",
            "--models-dir",
            models,
            "-c",
            "2",
            "-n",
            "40",
            "--warmup",
            "0s",
            "--instances",
            "2",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(report["ok"].as_u64(), Some(40), "{report}");
    assert!(out.contains("protocol v2"), "{out}");

    // Bad payload files: start-up errors (exit 1) naming the line, no report.
    let file = dir.path().join("bad.jsonl");
    for (lines, protocol, model, says) in [
        ("\"fine\"\n\n{\"instances\": [\n", "v1", "text-classifier", "line 3: not JSON"),
        ("\"fine\"\n42\n", "v1", "text-classifier", "line 2: expected a request body"),
        ("{\"inputs\": [{\"name\": \"text\"}]}\n", "v1", "text-classifier",
         "line 1: a v2 request body (it has `inputs`), but --protocol is v1"),
        ("\"a\"\n[[1.0]]\n", "v1", "text-classifier", "line 2: a window of 1x1, but line 1 is a text"),
        // Checked against the model's v2 metadata before any load.
        ("\"fine\"\n[[1.0], [2.0], [3.0]]\n", "v2", "lstm-forecaster", "line 1"),
        ("[[1.0], [2.0], [3.0]]\n", "v2", "lstm-forecaster",
         "line 1: model `lstm-forecaster`'s input `window` is FP32 with shape [-1, 26, 1], not a window of 3x1"),
        ("\"fine\"\n", "v2", "lstm-forecaster", "line 1: model `lstm-forecaster`'s input `window`"),
    ] {
        std::fs::write(&file, lines).unwrap();
        let (code, out, err, report) = bench_json(
            &url,
            dir.path(),
            &["--model", model, "--protocol", protocol, "--payloads", file.to_str().unwrap(),
              "-d", "1s"],
        )
        .await;
        assert_eq!(code, 1, "{lines:?}: {out}{err}");
        assert!(err.contains(says) && err.contains("bad.jsonl"), "{lines:?}: {err}");
        assert!(report.is_null() && out.is_empty(), "{lines:?}: {out}");
    }
    // An unknown model over v2: its metadata is refused, and start-up says so.
    let (code, _, err, _) = bench_json(
        &url,
        dir.path(),
        &[
            "--model",
            "no-such-model",
            "--protocol",
            "v2",
            "--payloads",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no-such-model") && err.contains("404"),
        "{err}"
    );
    s.stop().await.unwrap();
}

/// `--protocol grpc` against the server's gRPC port: the golden inputs of both
/// models are answered, counted by the server as gRPC; a payload file's texts
/// reach it as written (its prediction log); a wrong address stops start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sends_the_inputs_and_the_server_counts_them_as_grpc() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("predictions.jsonl");
    let mut cfg = logging(&log);
    cfg.net.grpc_listen = "127.0.0.1:0".parse().expect("addr");
    let s = TestServer::start(cfg).await;
    let url = format!("http://{}", s.grpc.expect("gRPC on"));
    let models = root().join("models");
    let models = models.to_str().unwrap();
    for (model, n) in [("lstm-forecaster", 30u64), ("text-classifier", 20)] {
        let (code, out, err, report) = bench_json(
            &url,
            dir.path(),
            &[
                "--model",
                model,
                "--protocol",
                "grpc",
                "--models-dir",
                models,
                "-c",
                "4",
                "-n",
                &n.to_string(),
                "--warmup",
                "0s",
            ],
        )
        .await;
        assert_eq!(code, 0, "{model}: {out}{err}");
        assert_eq!(report["ok"].as_u64(), Some(n), "{model}: {report}");
        assert!(out.contains("protocol grpc"), "{out}");
    }
    let m = s.metrics().await;
    let grpc_200 = grpc_requests(&m, 200);
    assert_eq!(grpc_200, 50.0, "{m}");

    // A payload file of three texts, sent 6 times: each logged twice (plain
    // one-line texts, which the model's cleaning leaves as they are).
    let file = dir.path().join("texts.jsonl");
    let texts: Vec<Value> = [
        "Claim your FREE prize now, reply today",
        "Can we move the review to Thursday afternoon?",
        "Minutes from the planning meeting are attached.",
    ]
    .iter()
    .map(|t| json!(t))
    .collect();
    write_lines(&file, &texts);
    let (code, out, err, _) = bench_json(
        &url,
        dir.path(),
        &[
            "--model",
            "text-classifier",
            "--protocol",
            "grpc",
            "--payloads",
            file.to_str().unwrap(),
            "-c",
            "1",
            "-n",
            "6",
            "--warmup",
            "0s",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    // The log writer is asynchronous: rows of the golden-input run above may
    // still be arriving, so the file's rows are picked out by text, not position.
    let ours = || -> Vec<Value> {
        logged(&log, "text-classifier")
            .into_iter()
            .filter(|r| texts.contains(&r["instance"]))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while ours().len() < 6 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let sent = &ours();
    assert_eq!(sent.len(), 6, "{sent:?}");
    for t in &texts {
        let n = sent.iter().filter(|r| &r["instance"] == t).count();
        assert_eq!(n, 2, "{t}: {sent:?}");
    }

    // Nothing listening there: a start-up error, no report.
    let (code, out, err, report) = bench_json(
        "http://127.0.0.1:9",
        dir.path(),
        &[
            "--model",
            "text-classifier",
            "--protocol",
            "grpc",
            "--models-dir",
            models,
            "-n",
            "1",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("gRPC connect"), "{err}");
    assert!(report.is_null());
}

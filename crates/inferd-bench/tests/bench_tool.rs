//! `inferd-bench` against a live inferd started in-process: a short run, targets
//! checked, JSON and plot written; a missed target sets exit code 2.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::{root, uncached, TestServer};
use serde_json::Value;

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
    let rps = report["rps"].as_f64().unwrap();
    assert!(
        (150.0..=250.0).contains(&rps),
        "open loop held its rate: {rps}"
    );
    s.stop().await.unwrap();
}

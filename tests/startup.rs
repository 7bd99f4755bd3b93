//! Start-up refuses broken model repositories with a message naming the file.

mod common;

use std::process::Command;

use common::{config, copy_dir, root};

fn broken_repo(edit: impl FnOnce(&std::path::Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("models"), dir.path());
    edit(dir.path());
    dir
}

fn set_sha(manifest: &std::path::Path, onnx: &std::path::Path) {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(onnx).unwrap()));
    let text = std::fs::read_to_string(manifest).unwrap();
    std::fs::write(manifest, common::with_graph_sha(&text, &sha)).unwrap();
}

/// The real binary, configured only by the test: none of the caller's
/// `INFERD_*` variables reach it.
fn inferd_binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_inferd"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("INFERD_") {
            cmd.env_remove(k);
        }
    }
    // Processes run in parallel here: none may take the default gRPC port.
    cmd.env("INFERD_GRPC_LISTEN", "127.0.0.1:0");
    cmd
}

async fn start_error(models: &std::path::Path) -> String {
    let mut cfg = config();
    cfg.models.models_dir = models.to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = inferd::run(cfg, listener, std::future::pending()).await;
    format!("{:#}", r.expect_err("start-up must fail"))
}

#[tokio::test]
async fn manifest_that_does_not_match_the_graph() {
    let d = broken_repo(|p| {
        let m = p.join("lstm-forecaster/1/model.toml");
        let t = std::fs::read_to_string(&m)
            .unwrap()
            .replace("shape = [-1, 26, 1]", "shape = [-1, 30, 1]");
        std::fs::write(m, t).unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("lstm-forecaster/1/model.onnx") && e.contains("[-1, 30, 1]"),
        "{e}"
    );

    let d = broken_repo(|p| {
        let m = p.join("text-classifier/1/model.toml");
        let t = std::fs::read_to_string(&m).unwrap().replace(
            "labels = [\"ham\", \"spam\"]",
            "labels = [\"ham\", \"spam\", \"eggs\"]",
        );
        std::fs::write(m, t).unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("text-classifier/1/model.onnx") && e.contains("3 labels"),
        "{e}"
    );

    let d = broken_repo(|p| {
        let m = p.join("text-classifier/1/model.toml");
        let t = std::fs::read_to_string(&m)
            .unwrap()
            .replace("name = \"text\"", "name = \"body\"");
        std::fs::write(m, t).unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("manifest inputs [\"body\"]") && e.contains("[\"text\"]"),
        "{e}"
    );
}

/// Rewrites `<version>/golden.json` under the repository copy `p`.
fn edit_golden(p: &std::path::Path, version: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let g = p.join(version).join("golden.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&g).unwrap()).unwrap();
    edit(&mut doc);
    std::fs::write(g, doc.to_string()).unwrap();
}

/// A version whose outputs miss its golden file never serves: here the
/// golden forecast of one case is moved by 1 ppm (tolerance 1e-3), which is
/// what a graph that computes something else would look like.
#[tokio::test]
async fn outputs_that_miss_the_golden_file() {
    let d = broken_repo(|p| {
        edit_golden(p, "lstm-forecaster/1", |doc| {
            let v = &mut doc["cases"][3]["expected"]["forecast"]["co2_ppm"];
            *v = serde_json::json!(v.as_f64().unwrap() + 1.0);
        })
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("lstm-forecaster/1/golden.json") && e.contains("beyond the tolerance"),
        "{e}"
    );

    // A raw-message golden case the server's preprocessing would label
    // differently: the gate runs the preprocessing too.
    let d = broken_repo(|p| {
        edit_golden(p, "text-classifier/2", |doc| {
            doc["cases"][0]["input"] = serde_json::json!(
                "Subject: FREE PRIZE\n\nClick here now to claim your free prize, act now, limited offer, free money!"
            );
        })
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("text-classifier/2/golden.json")
            && e.contains("label `spam`, golden says `ham`"),
        "{e}"
    );
}

#[tokio::test]
async fn corrupt_or_tampered_onnx() {
    let d = broken_repo(|p| {
        std::fs::write(p.join("lstm-forecaster/1/model.onnx"), b"not a model").unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("lstm-forecaster/1/model.onnx") && e.contains("sha256"),
        "{e}"
    );

    let d = broken_repo(|p| {
        let onnx = p.join("lstm-forecaster/1/model.onnx");
        let mut bytes = std::fs::read(&onnx).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&onnx, bytes).unwrap();
        set_sha(&p.join("lstm-forecaster/1/model.toml"), &onnx);
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("lstm-forecaster/1/model.onnx") && e.contains("cannot load the graph"),
        "{e}"
    );

    let d = broken_repo(|p| {
        std::fs::remove_file(p.join("text-classifier/1/model.toml")).unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(e.contains("text-classifier/1/model.toml"), "{e}");
}

#[test]
fn the_binary_exits_non_zero_naming_the_file() {
    let d = broken_repo(|p| {
        std::fs::write(p.join("text-classifier/1/model.onnx"), b"garbage").unwrap();
    });
    let cfg = config();
    let out = inferd_binary()
        .args(["serve", "--listen", "127.0.0.1:0", "--models-dir"])
        .arg(d.path())
        .env("ORT_DYLIB_PATH", cfg.runtime.ort_dylib_path.unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("text-classifier/1/model.onnx") && stderr.contains("sha256"),
        "{stderr}"
    );
}

#[test]
fn missing_onnx_runtime_says_how_to_install_it() {
    let out = inferd_binary()
        .args(["--listen", "127.0.0.1:0", "--models-dir"])
        .arg(root().join("models"))
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ORT_DYLIB_PATH") && stderr.contains("make ort"),
        "{stderr}"
    );
}

/// Runs one test of this binary in a child process with `env` added, and
/// checks that it ran and passed.
fn run_test_in_child(name: &str, env: &[(&str, &str)]) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads", "1"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} failed in the child:\n{text}");
    assert!(
        text.contains(&format!("test {name} ... ok")) && text.contains("1 passed"),
        "{name} did not run in the child:\n{text}"
    );
}

const MARKER_ORT: &str = "/nonexistent/marker/libonnxruntime.so";

/// The harness's `config()` is the documented defaults (plus the test
/// settings), whatever `INFERD_*` variables are set. Run alone it checks the
/// caller's environment; `harness_config_ignores_inferd_environment` runs it
/// again with a hostile one.
#[test]
fn harness_config_is_the_documented_defaults() {
    let child = std::env::var_os("INFERD_TEST_CHILD").is_some();
    if child {
        // The variables did reach this process: clap alone would read them.
        let plain = <inferd::config::Cli as clap::Parser>::try_parse_from(["inferd"])
            .expect("parse")
            .serve;
        assert_eq!(plain.limits.max_queue, 1);
        assert_eq!(plain.limits.max_instances, 3);
        assert_eq!(plain.auth.api_keys.as_deref(), Some("leaked-key"));
    }
    for c in [common::default_config(), config()] {
        assert_eq!(c.limits.max_queue, 512);
        assert_eq!(c.limits.max_instances, 64);
        assert_eq!(c.limits.request_timeout_ms, 10_000);
        assert_eq!(c.limits.max_body_bytes, 2 * 1024 * 1024);
        assert_eq!(c.cache.mode, inferd::config::CacheMode::On);
        assert_eq!(c.cache.cache_ttl_secs, 3600);
        assert_eq!(c.auth.api_keys, None);
        assert_eq!(c.auth.api_keys_file, None);
        assert_eq!(c.cache.redis_url, None);
        assert_eq!(c.predlog.database_url, None);
        assert_eq!(c.batching.max_batch_size, None);
        assert_eq!(c.net.drain_delay_ms, 0);
        assert_eq!(c.telemetry.log_format, inferd::config::LogFormat::Text);
        assert!(c.validate().is_ok());
    }
    assert_eq!(common::default_config().limits.max_concurrency, None);
    assert_eq!(
        common::default_config().net.listen,
        "0.0.0.0:8080".parse().unwrap()
    );
    let c = config();
    assert_eq!(c.net.listen, "127.0.0.1:0".parse().unwrap());
    assert_eq!(c.models.models_dir, root().join("models"));
    // ONNX Runtime: the caller's ORT_DYLIB_PATH when set, else the local install.
    let want = match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(p) => std::path::PathBuf::from(p),
        None => root().join(inferd_onnx::LOCAL_DYLIB),
    };
    assert_eq!(c.runtime.ort_dylib_path.as_deref(), Some(want.as_path()));
    if child {
        assert_eq!(
            c.runtime.ort_dylib_path.as_deref(),
            Some(std::path::Path::new(MARKER_ORT))
        );
    }
}

#[test]
fn harness_config_ignores_inferd_environment() {
    run_test_in_child(
        "harness_config_is_the_documented_defaults",
        &[
            ("INFERD_TEST_CHILD", "1"),
            ("INFERD_MAX_QUEUE", "1"),
            ("INFERD_MAX_INSTANCES", "3"),
            ("INFERD_REQUEST_TIMEOUT_MS", "1"),
            ("INFERD_MAX_BODY_BYTES", "10"),
            ("INFERD_CACHE", "off"),
            ("INFERD_CACHE_TTL_SECS", "1"),
            ("INFERD_API_KEYS", "leaked-key"),
            ("INFERD_API_KEYS_FILE", "/nonexistent/keys"),
            ("INFERD_REDIS_URL", "redis://127.0.0.1:1/0"),
            ("INFERD_DATABASE_URL", "postgres://u:p@127.0.0.1:1/x"),
            ("INFERD_MAX_BATCH_SIZE", "2"),
            ("INFERD_MAX_CONCURRENCY", "7"),
            ("INFERD_DRAIN_DELAY_MS", "5000"),
            ("INFERD_LOG_FORMAT", "json"),
            ("INFERD_LISTEN", "127.0.0.1:9"),
            ("ORT_DYLIB_PATH", MARKER_ORT),
        ],
    );
}

/// The real binary, started with API keys and a database password in its
/// environment, logs its configuration at start-up without either.
#[test]
fn startup_log_shows_the_config_without_keys_or_passwords() {
    const KEY_A: &str = "kz-alpha-51f0c2e7d9";
    const KEY_B: &str = "kz-bravo-8a3b6e04c1";
    const PASSWORD: &str = "topsecretpw";
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let port = common::services::free_port();
        let mut cmd = inferd_binary();
        cmd.current_dir(dir.path())
            .args(["--listen", &format!("127.0.0.1:{port}"), "--models-dir"])
            .arg(root().join("models"))
            .args([
                "--max-concurrency",
                "1",
                "--warmup-runs",
                "1",
                "--shutdown-grace-ms",
                "3000",
                "--log-format",
                format,
            ])
            .env("INFERD_API_KEYS", format!("{KEY_A},{KEY_B}"))
            .env(
                "INFERD_DATABASE_URL",
                format!("postgres://u:{PASSWORD}@127.0.0.1:1/x"),
            )
            .env("INFERD_PREDLOG_SPILL_PATH", dir.path().join("spill.jsonl"))
            .env("ORT_DYLIB_PATH", common::ort_dylib_path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let readers: Vec<_> = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .map(|pipe| {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            })
        })
        .collect();
        // The "ready" event itself (the config line mentions /readyz).
        let ready = |l: &str| {
            l.lines().any(|line| {
                line.contains("inferd::server: ready") || line.contains("\"message\":\"ready\"")
            })
        };
        let t = std::time::Instant::now();
        while !ready(&log.lock().unwrap()) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "inferd exited ({status}) before ready:\n{}",
                    log.lock().unwrap()
                );
            }
            if t.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                panic!("inferd not ready after 30 s:\n{}", log.lock().unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // It serves, and its keys guard the model routes.
        let probe = |path: &str| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            use std::io::{Read, Write};
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r.lines().next().unwrap_or("").to_string()
        };
        assert!(probe("/readyz").contains(" 200 "), "{format}");
        assert!(probe("/v1/models").contains(" 401 "), "{format}");

        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let t = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("inferd ignored SIGTERM:\n{}", log.lock().unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        for r in readers {
            r.join().unwrap();
        }
        let out = log.lock().unwrap().clone();
        assert!(status.success(), "{format}: exit {status}:\n{out}");
        let config_line = out
            .lines()
            .find(|l| l.contains("starting inferd"))
            .unwrap_or_else(|| panic!("{format}: no start-up line:\n{out}"));
        for shown in ["<2 keys>", "postgres://u:***@127.0.0.1:1/x", "max_queue"] {
            assert!(
                config_line.contains(shown),
                "{format}: {shown} missing from the start-up line: {config_line}"
            );
        }
        for secret in [KEY_A, KEY_B, PASSWORD] {
            assert!(!out.contains(secret), "{format}: {secret} logged:\n{out}");
        }
        // SIGTERM was handled (a clean exit, not the signal's default).
        assert!(
            out.contains("shutdown requested"),
            "{format}: SIGTERM not handled:\n{out}"
        );
    }
}

/// A build without the `torch` feature still starts on the shipped models:
/// the TorchScript twin is reported unavailable with the reason (repository
/// index, metrics, log), not a crash and not a silent skip, and everything
/// else serves.
#[cfg(not(feature = "torch"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_version_without_the_feature_is_unavailable_with_the_reason() {
    use serde_json::{json, Value};
    let s = common::TestServer::start(config()).await;
    let torch = "lstm-forecaster-torch";
    let (st, _, index) = s.post_json("/v2/repository/index", &json!({})).await;
    assert_eq!(st, 200, "{index}");
    let entry = index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == torch)
        .unwrap_or_else(|| panic!("{torch} missing from the index: {index}"))
        .clone();
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    let reason = entry["reason"].as_str().unwrap();
    assert!(
        reason.contains("unsupported failed") && reason.contains("--features torch"),
        "{reason}"
    );
    assert!(
        reason.contains("model.pt"),
        "the reason names the file: {reason}"
    );

    let m = s.metrics().await;
    // Prometheus text sorts the labels by name.
    let series =
        |name: &str, label: &str| format!("{name}{{model=\"{torch}\",{label},version=\"1\"}}");
    assert_eq!(
        common::metric(&m, &series("inferd_model_state", "state=\"UNAVAILABLE\"")),
        1.0
    );
    assert_eq!(
        common::metric(
            &m,
            &series("inferd_model_gate_failures_total", "stage=\"unsupported\"")
        ),
        1.0
    );

    // Not served: a clear 404 on both front doors; the ONNX twin serves.
    let window = common::golden("lstm-forecaster")["cases"][0]["input"].clone();
    let (st, _, body) = s
        .post_json("/predict", &json!({"model": torch, "instances": [window]}))
        .await;
    assert_eq!(st, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (st, _) = s.get(&format!("/v2/models/{torch}/ready")).await;
    assert_eq!(st, 404);
    let (st, _, body) = s
        .post_json(
            "/predict",
            &json!({"model": "lstm-forecaster", "instances": [window]}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (_, listing) = s.get("/v1/models").await;
    let listing: Value = serde_json::from_str(&listing).unwrap();
    assert!(listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["name"] != torch));
    s.stop().await.unwrap();
}

//! Test harness: starts a real inferd on 127.0.0.1:0 inside the test process and
//! talks to it over real HTTP.

#![allow(dead_code)]

pub(crate) mod gate;
pub(crate) mod services;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use inferd::config::{Cli, ServeConfig};
use inferd::server::MakeLoader;
use inferd_core::backend::testing::SlowLoader;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The repository root: the nearest directory at or above this package's manifest
/// that holds `models/` (the bench crate reuses this harness from `bench/load`).
pub(crate) fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("models").is_dir())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The documented defaults, whatever `INFERD_*` variables the caller's shell
/// exports: every argument's environment fallback is removed before parsing, so
/// a test server is configured only by the test.
pub(crate) fn default_config() -> ServeConfig {
    let no_env = |a: clap::Arg| a.env(None::<&'static str>);
    let cmd = Cli::command()
        .mut_args(no_env)
        .mut_subcommands(|s| s.mut_args(no_env));
    let matches = cmd.try_get_matches_from(["inferd"]).expect("defaults");
    Cli::from_arg_matches(&matches).expect("defaults").serve
}

/// Where ONNX Runtime is: `ORT_DYLIB_PATH` when the caller sets it (CI does),
/// else the project-local install.
pub(crate) fn ort_dylib_path() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(inferd_onnx::LOCAL_DYLIB))
}

pub(crate) fn config() -> ServeConfig {
    let mut c = default_config();
    c.net.listen = "127.0.0.1:0".parse().expect("addr");
    // gRPC tests bind their own port (`run_with_listeners`).
    c.net.grpc_listen = inferd::config::GrpcListen::Off;
    c.models.models_dir = root().join("models");
    c.limits.max_concurrency = Some(2);
    c.models.warmup_runs = 1;
    c.predlog.sink = inferd::config::PredLogMode::Off;
    c.runtime.ort_dylib_path = Some(ort_dylib_path());
    c
}

/// A loader of the real models (the server's runtimes) whose every inference first
/// sleeps `latency`: requests overlap for certain, whatever the machine's
/// speed. Warm-up pays the latency too (warmup_runs x sessions per model).
pub(crate) fn slowed(latency: Duration) -> MakeLoader {
    Box::new(move |opts| {
        Ok(Box::new(SlowLoader {
            inner: Box::new(inferd::server::runtimes(opts)?),
            latency,
        }))
    })
}

/// Polls `cond` until it holds; fails after `gate::EVENTUALLY`, which only a
/// defect (the condition never comes) reaches on a loaded machine.
pub(crate) async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = std::time::Instant::now();
    while !cond().await {
        assert!(t.elapsed() < gate::EVENTUALLY, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) struct TestServer {
    pub addr: SocketAddr,
    /// The gRPC port, when the config turns it on (bound here, port 0 is fine).
    pub grpc: Option<SocketAddr>,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Starts a server and waits until `/readyz` says ready.
    pub(crate) async fn start(config: ServeConfig) -> TestServer {
        let s = Self::spawn(config).await;
        s.wait_ready().await;
        s
    }

    /// Starts a server whose models are built by `make_loader` (see `slowed`)
    /// and waits until `/readyz` says ready.
    pub(crate) async fn start_with_loader(
        config: ServeConfig,
        make_loader: MakeLoader,
    ) -> TestServer {
        let s = Self::spawn_with_loader(config, make_loader).await;
        s.wait_ready().await;
        s
    }

    /// Starts a server on the real models, every inference slowed by `latency`.
    pub(crate) async fn start_slowed(config: ServeConfig, latency: Duration) -> TestServer {
        Self::start_with_loader(config, slowed(latency)).await
    }

    /// Starts a server without waiting for readiness.
    pub(crate) async fn spawn(config: ServeConfig) -> TestServer {
        Self::spawn_with(config, None).await
    }

    /// `spawn`, with the models' backends built by `make_loader`.
    pub(crate) async fn spawn_with_loader(
        config: ServeConfig,
        make_loader: MakeLoader,
    ) -> TestServer {
        Self::spawn_with(config, Some(make_loader)).await
    }

    async fn spawn_with(config: ServeConfig, make_loader: Option<MakeLoader>) -> TestServer {
        let listener = tokio::net::TcpListener::bind(config.net.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let grpc_listener = match config.net.grpc_listen.addr() {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.expect("bind gRPC")),
            None => None,
        };
        let grpc = grpc_listener
            .as_ref()
            .map(|l| l.local_addr().expect("addr"));
        let make = make_loader.unwrap_or_else(inferd::server::default_loader);
        let handle = tokio::spawn(inferd::server::run_with_listeners(
            config,
            listener,
            grpc_listener,
            shutdown,
            make,
        ));
        TestServer {
            addr,
            grpc,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            handle,
        }
    }

    /// Waits for `/readyz`. 30 s: a slowed server warms up every session of
    /// every version at its latency, about 11 s at 400 ms on 2 cores.
    pub(crate) async fn wait_ready(&self) {
        for _ in 0..1500 {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                !self.handle.is_finished(),
                "server exited before becoming ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("server not ready after 30 s");
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) async fn post_json(
        &self,
        path: &str,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body: Value = r.json().await.expect("JSON body");
        (status, headers, body)
    }

    pub(crate) async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// The server's Prometheus text.
    pub(crate) async fn metrics(&self) -> String {
        let (st, m) = self.get("/metrics").await;
        assert_eq!(st, 200, "GET /metrics: {m}");
        m
    }

    /// Triggers shutdown and returns what `run` returned.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.expect("server task")
    }

    pub(crate) fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The value of one series (`name{labels}` exactly as exposed, or a bare name)
/// in a Prometheus text, or `None` when the server does not expose it.
pub(crate) fn metric_opt(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .map(|l| {
            let v = l.rsplit(' ').next().unwrap_or("");
            v.parse()
                .unwrap_or_else(|_| panic!("series {series}: unreadable value in `{l}`"))
        })
}

/// The value of one series, which must exist: a renamed or missing metric fails
/// the test, naming it, rather than reading as 0.
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    metric_opt(text, series)
        .unwrap_or_else(|| panic!("metric series `{series}` missing from /metrics:\n{text}"))
}

/// The sum of every series whose line starts with `prefix` (e.g. one metric
/// over all its label sets); at least one must exist.
pub(crate) fn metric_sum(text: &str, prefix: &str) -> f64 {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{prefix}: unreadable value in `{l}`"))
        })
        .collect();
    assert!(
        !values.is_empty(),
        "no metric series starting with `{prefix}` in /metrics:\n{text}"
    );
    values.iter().sum()
}

/// The gRPC requests counted with HTTP status `status` (the code's stand-in
/// in `inferd_requests_total`), over every model; 0 when there are none.
pub(crate) fn grpc_requests(text: &str, status: u16) -> f64 {
    let status = format!("status=\"{status}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("inferd_requests_total{")
                && l.contains("protocol=\"grpc\"")
                && l.contains(&status)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A manifest's text with its `graph_sha256` line set to `sha`.
pub(crate) fn with_graph_sha(manifest: &str, sha: &str) -> String {
    manifest
        .lines()
        .map(|l| {
            if l.starts_with("graph_sha256") {
                format!("graph_sha256 = \"{sha}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A config whose cache is off: load tests need every request to reach the model.
pub(crate) fn uncached() -> ServeConfig {
    let mut c = config();
    c.cache.mode = inferd::config::CacheMode::Off;
    c
}

/// The model's latest version: the one the unversioned routes serve.
/// `models/<model>/<version>/model.toml`: expected values come from the
/// manifests, not restated by hand.
pub(crate) fn manifest(model: &str, version: &str) -> toml::Table {
    let path = root()
        .join("models")
        .join(model)
        .join(version)
        .join("model.toml");
    let text = std::fs::read_to_string(&path).expect("manifest");
    text.parse().expect("manifest TOML")
}

/// An integer of a model's manifest, by its path (`["text", "max_text_bytes"]`).
pub(crate) fn manifest_int(model: &str, version: &str, path: &[&str]) -> i64 {
    let m = manifest(model, version);
    let mut v = m.get(path[0]).expect("manifest key");
    for k in &path[1..] {
        v = v.get(k).expect("manifest key");
    }
    v.as_integer().expect("an integer")
}

/// The version the unversioned routes serve: the policy's `default_version`
/// when `models/<model>/policy.toml` sets one, else the highest.
pub(crate) fn latest_version(model: &str) -> String {
    let dir = root().join("models").join(model);
    if let Ok(text) = std::fs::read_to_string(dir.join("policy.toml")) {
        let policy: toml::Table = toml::from_str(&text).expect("policy.toml parses");
        if let Some(v) = policy.get("default_version").and_then(|v| v.as_integer()) {
            return v.to_string();
        }
    }
    std::fs::read_dir(dir)
        .expect("model dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("a version")
        .to_string()
}

/// `metric{model="...",version="<latest>"}`: a per-version series of the
/// version the unversioned routes serve.
pub(crate) fn latest_series(metric: &str, model: &str) -> String {
    format!(
        "{metric}{{model=\"{model}\",version=\"{}\"}}",
        latest_version(model)
    )
}

/// The golden file of the model's latest version.
pub(crate) fn golden(model: &str) -> Value {
    let dir = root().join("models").join(model);
    let p = dir.join(latest_version(model)).join("golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("golden")).expect("golden JSON")
}

/// The longest golden texts as the model sees them (cleaned, where the model
/// takes raw messages): the heaviest inputs for the graph, within any body limit.
pub(crate) fn long_texts(n: usize) -> Vec<Value> {
    let g = golden("text-classifier");
    let mut texts: Vec<String> = g["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let v = c.get("model_input").unwrap_or(&c["input"]);
            v.as_str().expect("text").to_string()
        })
        .collect();
    texts.sort_by_key(|t| std::cmp::Reverse(t.len()));
    texts
        .iter()
        .cycle()
        .take(n)
        .map(|t| Value::String(t.clone()))
        .collect()
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

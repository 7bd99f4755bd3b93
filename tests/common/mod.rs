//! Test harness: starts a real inferd on 127.0.0.1:0 inside the test process and
//! talks to it over real HTTP.

#![allow(dead_code)]

pub mod services;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use inferd::config::{Cli, ServeConfig};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The repository root: the nearest directory at or above this package's manifest
/// that holds `models/` (the bench crate reuses this harness from `crates/inferd-bench`).
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("models").is_dir())
        .unwrap_or(manifest)
        .to_path_buf()
}

pub fn config() -> ServeConfig {
    let mut c = Cli::try_parse_from(["inferd"]).expect("defaults").serve;
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.models_dir = root().join("models");
    c.max_concurrency = Some(2);
    c.warmup_runs = 1;
    c.predlog = inferd::config::PredLogMode::Off;
    if c.ort_dylib_path.is_none() {
        c.ort_dylib_path = Some(root().join(inferd::config::LOCAL_ORT_LIB));
    }
    c
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Starts a server and waits until `/readyz` says ready.
    pub async fn start(config: ServeConfig) -> TestServer {
        let s = Self::spawn(config).await;
        s.wait_ready().await;
        s
    }

    /// Starts a server without waiting for readiness.
    pub async fn spawn(config: ServeConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(inferd::run(config, listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            handle,
        }
    }

    pub async fn wait_ready(&self) {
        for _ in 0..600 {
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
        panic!("server not ready after 12 s");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_json(
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

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
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

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// Triggers shutdown and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.expect("server task")
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A config whose cache is off: load tests need every request to reach the model.
pub fn uncached() -> ServeConfig {
    let mut c = config();
    c.cache = inferd::config::CacheMode::Off;
    c
}

pub fn golden(model: &str) -> Value {
    let p = root().join("models").join(model).join("1/golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("golden")).expect("golden JSON")
}

/// The longest golden texts: the heaviest inputs the text model has.
pub fn long_texts(n: usize) -> Vec<Value> {
    let g = golden("text-classifier");
    let mut texts: Vec<String> = g["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["input"].as_str().expect("text").to_string())
        .collect();
    texts.sort_by_key(|t| std::cmp::Reverse(t.len()));
    texts
        .iter()
        .cycle()
        .take(n)
        .map(|t| Value::String(t.clone()))
        .collect()
}

pub fn copy_dir(from: &Path, to: &Path) {
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

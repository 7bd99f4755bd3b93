//! Server lifecycle: shared state, model loading and warm-up, serving, and
//! graceful shutdown.
//!
//! `run` binds nothing itself: it takes a listener (tests pass one on port 0) and
//! a shutdown future. It starts answering `/healthz` at once, reports ready only
//! after every model has loaded and run its warm-up, and on shutdown turns
//! not-ready, refuses new work (503 during the optional drain delay, then by
//! closing the listener), lets in-flight requests finish within the grace period,
//! and returns.

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::repository::Repository;
use crate::runtime::{self, SessionOptions};

pub struct AppState {
    pub config: ServeConfig,
    pub metrics: Arc<Metrics>,
    pub admission: Admission,
    repo: OnceLock<Arc<Repository>>,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
}

impl AppState {
    pub fn new(config: ServeConfig) -> Self {
        let metrics = Arc::new(Metrics::new());
        let admission = Admission::new(config.concurrency(), config.max_queue, metrics.clone());
        AppState {
            config,
            metrics,
            admission,
            repo: OnceLock::new(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// The loaded models, once warm-up is done.
    pub fn repository(&self) -> Option<&Arc<Repository>> {
        self.repo.get()
    }
}

/// Loads ONNX Runtime and every model, then warms each session up. Blocking.
pub fn load_models(config: &ServeConfig) -> anyhow::Result<Repository> {
    let dylib =
        runtime::resolve_dylib(config.ort_dylib_path.as_deref()).map_err(anyhow::Error::msg)?;
    runtime::init(&dylib).map_err(anyhow::Error::msg)?;
    let opts = SessionOptions {
        intra_threads: config.ort_threads,
        device: config.device,
        pool_size: config.concurrency(),
    };
    let repo = Repository::load(&config.models_dir, &opts)?;
    for model in repo.iter() {
        let input = model.task.warmup_input();
        // Round-robin through the pool: every session runs `warmup_runs` times.
        for _ in 0..config.warmup_runs * opts.pool_size {
            model.backend.infer(&input).map_err(|e| {
                anyhow::anyhow!("{}: warm-up inference failed: {e}", model.dir.display())
            })?;
        }
        tracing::info!(
            model = %model.manifest.name,
            version = %model.manifest.version,
            task = model.task.name(),
            sessions = opts.pool_size,
            "model loaded and warmed up"
        );
    }
    Ok(repo)
}

/// Serves until `shutdown` completes, then drains. Returns an error if the models
/// cannot be loaded (the caller should exit non-zero).
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let state = Arc::new(AppState::new(config.clone()));
    let app = crate::api::router(state.clone());
    let draining = CancellationToken::new();

    let signal = {
        let state = state.clone();
        let draining = draining.clone();
        let delay = config.drain_delay();
        async move {
            shutdown.await;
            state.draining.store(true, Ordering::Release);
            state.ready.store(false, Ordering::Release);
            state.metrics.ready.set(0);
            tracing::info!("shutdown requested: draining in-flight requests");
            draining.cancel();
            // Returning starts axum's graceful shutdown, which closes the listener.
            tokio::time::sleep(delay).await;
        }
    };
    let mut server = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .into_future(),
    );

    let loader = {
        let cfg = config.clone();
        tokio::task::spawn_blocking(move || load_models(&cfg))
    };
    tokio::select! {
        loaded = loader => {
            let repo = match loaded {
                Ok(Ok(repo)) => repo,
                Ok(Err(e)) => { server.abort(); return Err(e); }
                Err(e) => { server.abort(); return Err(anyhow::anyhow!("model loader failed: {e}")); }
            };
            for m in repo.iter() {
                state.metrics.model_info
                    .with_label_values(&[&m.manifest.name, &m.manifest.version, m.task.name(), &m.manifest.onnx_sha256])
                    .set(1);
            }
            let _ = state.repo.set(Arc::new(repo));
            if !state.draining.load(Ordering::Acquire) {
                state.ready.store(true, Ordering::Release);
                state.metrics.ready.set(1);
                tracing::info!("ready");
            }
        }
        res = &mut server => {
            return res.map_err(|e| anyhow::anyhow!("server task failed: {e}"))?.map_err(Into::into);
        }
    }

    tokio::select! {
        res = &mut server => res.map_err(|e| anyhow::anyhow!("server task failed: {e}"))?.map_err(Into::into),
        _ = draining.cancelled() => {
            let grace = config.drain_delay() + config.shutdown_grace();
            match tokio::time::timeout(grace, &mut server).await {
                Ok(res) => {
                    tracing::info!("drained; exiting");
                    res.map_err(|e| anyhow::anyhow!("server task failed: {e}"))?.map_err(Into::into)
                }
                Err(_) => {
                    tracing::warn!(grace_ms = config.shutdown_grace_ms, "grace period over with requests still in flight; exiting");
                    server.abort();
                    Ok(())
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

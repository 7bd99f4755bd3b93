//! The process's lifecycle on top of the front doors and the core: builds the
//! shared state, loads and warms up the models off the async runtime, serves,
//! and shuts down gracefully. It drives the core's `Lifecycle` (starting,
//! serving, draining); the front doors only read it.
//!
//! `run` binds nothing itself: it takes a listener (tests pass one on port 0) and
//! a shutdown future. It starts answering `/healthz` at once, reports ready only
//! after every model has loaded and run its warm-up, and on shutdown turns
//! not-ready, refuses new work (503 during the optional drain delay, then by
//! closing the listener), lets in-flight requests finish within the grace period,
//! and returns.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use inferd_api::{ApiKeys, AppState, DoorMetrics};
use inferd_core::admission::Admission;
use inferd_core::backend::{BackendOptions, Loader, Runtimes};
use inferd_core::cache::Cache;
use inferd_core::control::ModelControl;
use inferd_core::lifecycle::{Lifecycle, Phase};
use inferd_core::manifest::Format;
use inferd_core::pipeline::Pipeline;
use inferd_core::policy::Routing;
use inferd_core::repository::Repository;
use inferd_core::Metrics;
use inferd_onnx::OrtLoader;
use inferd_predlog::PredLog;
use inferd_telemetry::metrics::Registrar;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{CacheChoice, ServeConfig};
use crate::listen::ConnMetrics;

fn build_cache(config: &ServeConfig, metrics: &Arc<Metrics>) -> anyhow::Result<Option<Arc<Cache>>> {
    Ok(match config.cache.choice() {
        CacheChoice::Off => None,
        CacheChoice::Redis { settings, ttl } => {
            let url = crate::config::redact_url(&settings.url);
            let store = Arc::new(inferd_cache_redis::RedisStore::new(settings)?);
            // Said at start-up, once: the service starts either way and the
            // cache fails open, so an operator would otherwise learn of a
            // wrong URL only from the error counters.
            let probe = store.clone();
            tokio::spawn(async move {
                match probe.ping().await {
                    Ok(()) => tracing::info!(url = %url, "Redis reachable"),
                    Err(e) => tracing::warn!(
                        url = %url,
                        error = %e,
                        "Redis not reachable at start-up: predictions are served from the \
                         model, uncached, until it is"
                    ),
                }
            });
            Some(Arc::new(Cache::shared(store, ttl, metrics.clone())))
        }
        CacheChoice::Memory { max_bytes, ttl } => {
            Some(Arc::new(Cache::memory(max_bytes, ttl, metrics.clone())))
        }
    })
}

/// Every layer's metrics in one registry, plus the process-wide ones: the
/// span exporter's counts and the process collector's `process_*` (resident
/// memory, descriptors, CPU), so memory growth and descriptor leaks show on
/// the dashboard and in alerts.
fn registry() -> Registry {
    let registry = Registry::new();
    let r = Registrar(&registry);
    r.collector(Box::new(inferd_telemetry::trace::SPANS_EXPORTED.clone()));
    r.collector(Box::new(inferd_telemetry::trace::SPANS_DROPPED.clone()));
    r.collector(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    registry
}

/// Builds the shared state, and the accept loop's metrics in the same
/// registry. Needs a tokio runtime (the log writer starts here).
pub fn build_state(config: &ServeConfig) -> anyhow::Result<(AppState, Arc<ConnMetrics>)> {
    let registry = registry();
    let metrics = Arc::new(Metrics::new(&registry));
    let doors = DoorMetrics::new(&registry);
    let conns = Arc::new(ConnMetrics::new(&registry));
    let predlog_metrics = Arc::new(inferd_predlog::Metrics::new(&registry));
    let admission = Admission::new(
        config.limits.concurrency(),
        config.limits.max_queue,
        metrics.clone(),
    );
    let cache = build_cache(config, &metrics)?;
    if let Some(c) = &cache {
        tracing::info!(backend = c.backend_name(), "result cache on");
    }
    let pipeline = Pipeline::new(admission, cache, metrics.clone(), config.limits.pipeline());
    let api_keys = ApiKeys::load(&config.auth.sources())?;
    if api_keys.enabled() {
        tracing::info!(
            keys = api_keys.count(),
            "API keys required on the model routes"
        );
    }
    if api_keys.admin_count() > 0 {
        tracing::info!(
            keys = api_keys.admin_count(),
            "admin keys required on the model control routes"
        );
    }
    let predlog = PredLog::start(config.predlog_writer(), predlog_metrics)?;
    let budget = config.limits.memory_budget().map(|bytes| {
        tracing::info!(bytes, "memory budget for requests in flight");
        inferd_api::MemoryBudget::new(
            bytes,
            Duration::from_millis(config.limits.memory_wait_ms),
            doors.memory_budget_used.clone(),
            &doors.memory_budget,
        )
    });
    let quality = inferd_core::quality::Quality::new(
        config.quality.settings(),
        Arc::new(inferd_core::quality::QualityMetrics::new(&registry)),
    );
    let state = AppState {
        quality: Arc::new(quality),
        budget,
        settings: config.api_settings(),
        api_keys: Arc::new(api_keys),
        lifecycle: Arc::new(Lifecycle::new(metrics.clone())),
        control: std::sync::OnceLock::new(),
        registry,
        metrics,
        doors,
        pipeline: Arc::new(pipeline),
        predlog,
    };
    Ok((state, conns))
}

/// Builds the loader for the models from the backend options. `run` uses
/// `runtimes`; tests wrap it (a slowed backend makes overlaps certain).
pub type MakeLoader = Box<dyn FnOnce(BackendOptions) -> anyhow::Result<Box<dyn Loader>> + Send>;

/// The runtimes this build has, by graph format: ONNX Runtime always, libtorch
/// with the `torch` feature. Fails where `--device cuda` cannot be honoured by
/// libtorch (ONNX Runtime says so at its first session).
pub fn runtimes(opts: BackendOptions) -> anyhow::Result<Runtimes> {
    let runtimes = Runtimes::new().with(Format::Onnx, OrtLoader::new(opts.clone()));
    #[cfg(feature = "torch")]
    let runtimes = runtimes.with(
        Format::Torchscript,
        inferd_torch::TorchLoader::new(opts).map_err(anyhow::Error::msg)?,
    );
    #[cfg(not(feature = "torch"))]
    let _ = opts;
    Ok(runtimes)
}

/// The loader `run` uses: this build's runtimes.
pub fn default_loader() -> MakeLoader {
    Box::new(|opts| Ok(Box::new(runtimes(opts)?)))
}

/// What start-up loaded: the model control that loaded it, the repository
/// and each model's routing.
struct Loaded {
    control: Arc<ModelControl>,
    repo: Repository,
    routing: HashMap<String, Routing>,
}

/// Loads ONNX Runtime and every model version its policy selects, each
/// verified, warmed up and gated by its golden file. Blocking.
fn load_models(
    config: &ServeConfig,
    state: &AppState,
    make_loader: MakeLoader,
) -> anyhow::Result<Loaded> {
    let cwd = std::env::current_dir()?;
    let dylib = inferd_onnx::resolve_dylib(config.runtime.ort_dylib_path.as_deref(), &cwd)
        .map_err(anyhow::Error::msg)?;
    inferd_onnx::init(&dylib).map_err(anyhow::Error::msg)?;
    let opts = config.runtime.backend_options(config.limits.concurrency());
    let loader: Arc<dyn Loader> = Arc::from(make_loader(opts)?);
    let control = Arc::new(
        ModelControl::new(
            config.control_settings(),
            loader,
            state.pipeline.clone(),
            state.lifecycle.clone(),
            state.metrics.clone(),
        )
        .with_quality(state.quality.clone()),
    );
    let (repo, routing) = control.load_initial()?;
    Ok(Loaded {
        control,
        repo,
        routing,
    })
}

/// Serves until `shutdown` completes, then drains. Returns an error if the models
/// cannot be loaded (the caller should exit non-zero).
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_loader(config, listener, shutdown, default_loader()).await
}

/// `run`, with the models' backends built by `make_loader`. The gRPC port
/// (`INFERD_GRPC_LISTEN`, unless `off`) is bound here.
pub async fn run_with_loader(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    make_loader: MakeLoader,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let grpc = match config.net.grpc_listen.addr() {
        Some(addr) => Some(
            crate::listen::bind(addr, config.net.listen_backlog)
                .map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {addr}: {e}"))?,
        ),
        None => None,
    };
    run_with_listeners(config, listener, grpc, shutdown, make_loader).await
}

/// `run_with_loader` on listeners bound by the caller (tests bind port 0).
pub async fn run_with_listeners(
    config: ServeConfig,
    listener: TcpListener,
    grpc: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    make_loader: MakeLoader,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let (state, conns) = build_state(&config)?;
    let state = Arc::new(state);
    let app = inferd_api::router(state.clone());
    let draining = CancellationToken::new();
    // Both doors stop accepting at the same moment, after the drain delay.
    let stop_accepting = CancellationToken::new();

    let signal = {
        let state = state.clone();
        let draining = draining.clone();
        let stop_accepting = stop_accepting.clone();
        let delay = config.net.drain_delay();
        async move {
            shutdown.await;
            state.lifecycle.drain();
            tracing::info!("shutdown requested: draining in-flight requests");
            draining.cancel();
            // Returning starts the accept loop's graceful shutdown, which closes
            // the listener.
            tokio::time::sleep(delay).await;
            stop_accepting.cancel();
        }
    };
    let limits = config.net.conn_limits(crate::listen::fd_limit());
    let abandon = CancellationToken::new();
    let mut server = tokio::spawn(crate::listen::serve(
        listener,
        app,
        limits,
        conns.clone(),
        signal,
        abandon.clone(),
    ));
    let grpc_server = grpc.map(|l| {
        match l.local_addr() {
            Ok(a) => tracing::info!("gRPC listening on {a}"),
            Err(e) => tracing::warn!(error = %e, "gRPC listener has no address"),
        }
        let (router, health) = inferd_api::grpc_router(state.clone());
        let served = tokio::spawn(crate::listen::serve(
            l,
            router,
            limits,
            conns.clone(),
            stop_accepting.clone().cancelled_owned(),
            abandon.clone(),
        ));
        (AbortOnDrop(served), AbortOnDrop(health))
    });

    // The tails of bursts of repeated warnings (`ratelimit`).
    let reporter = tokio::spawn(async {
        let mut tick = tokio::time::interval(inferd_telemetry::ratelimit::INTERVAL);
        loop {
            tick.tick().await;
            inferd_telemetry::ratelimit::report_held_back();
        }
    });
    let _reporter = AbortOnDrop(reporter);

    let loader = {
        let (cfg, st) = (config.clone(), state.clone());
        tokio::task::spawn_blocking(move || load_models(&cfg, &st, make_loader))
    };
    tokio::select! {
        loaded = loader => {
            let loaded = match loaded {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => { server.abort(); return Err(e); }
                Err(e) => { server.abort(); return Err(anyhow::anyhow!("model loader failed: {e}")); }
            };
            let control = loaded.control;
            tracing::info!(
                api = config.model_control_on(),
                poll_secs = config.models.model_poll_secs,
                "model control"
            );
            let serving = serving_summary(&loaded.repo);
            if control.deploy_initial(loaded.repo, loaded.routing) == Phase::Serving {
                tracing::info!(models = %serving, "ready");
            }
            if config.models.model_poll_secs > 0 {
                control.spawn_poller(Duration::from_secs(config.models.model_poll_secs));
            }
            let _ = state.control.set(control);
        }
        res = &mut server => {
            return res.map_err(|e| anyhow::anyhow!("server task failed: {e}"))?.map_err(Into::into);
        }
    }

    let served = serve_until_drained(&config, &mut server, &draining, &abandon).await;
    if let Some((mut grpc, _health)) = grpc_server {
        // Its calls had the same grace as HTTP's, and were abandoned with
        // them if HTTP's outlasted it; those still running now get one grace
        // more at most, then are dropped before the log's last drain.
        if tokio::time::timeout(config.shutdown_grace(), &mut grpc.0)
            .await
            .is_err()
        {
            abandon.cancel();
            // Dropped (aborted) at the end of this block if still running.
            let _ = tokio::time::timeout(ABANDON_WAIT, &mut grpc.0).await;
        }
    }
    // Nothing new can arrive now: write out (or spill) every log record.
    state.predlog.shutdown(config.shutdown_grace()).await;
    inferd_telemetry::ratelimit::report_all_held_back();
    served
}

async fn serve_until_drained(
    config: &ServeConfig,
    server: &mut tokio::task::JoinHandle<std::io::Result<()>>,
    draining: &CancellationToken,
    abandon: &CancellationToken,
) -> anyhow::Result<()> {
    // Biased, shutdown first: when the server ends because a drain finished,
    // both arms are ready, and the drain's arm is the one that says so.
    tokio::select! {
        biased;
        _ = draining.cancelled() => {
            let grace = config.net.drain_delay() + config.shutdown_grace();
            match tokio::time::timeout(grace, &mut *server).await {
                Ok(res) => {
                    tracing::info!("drained; exiting");
                    res.map_err(|e| anyhow::anyhow!("server task failed: {e}"))?.map_err(Into::into)
                }
                Err(_) => {
                    tracing::warn!(grace_ms = config.net.shutdown_grace_ms, "grace period over with requests still in flight; exiting");
                    // Drop the connections still open and wait until they are
                    // gone, so that none answers (and logs) after the log
                    // writer's last drain. A task is dropped at its next
                    // await, so this takes a moment, not a request's length.
                    abandon.cancel();
                    if tokio::time::timeout(ABANDON_WAIT, &mut *server).await.is_err() {
                        server.abort();
                    }
                    Ok(())
                }
            }
        }
        res = &mut *server => res.map_err(|e| anyhow::anyhow!("server task failed: {e}"))?.map_err(Into::into),
    }
}

/// `name 1,2; other 1`: every model and its serving versions, for the log.
fn serving_summary(repo: &Repository) -> String {
    repo.models
        .iter()
        .map(|(name, versions)| {
            let vs: Vec<String> = versions.keys().map(u64::to_string).collect();
            format!("{name} {}", vs.join(","))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How long dropping the connections left at the end of the grace may take:
/// a handler busy in a synchronous stretch (JSON parsing of a large body) is
/// only dropped when it next yields.
const ABANDON_WAIT: Duration = Duration::from_secs(1);

/// Ends a background task when the server returns.
struct AbortOnDrop<T = ()>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
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

/// `inferd healthcheck`: one GET, exit 0 on a 200 and 1 otherwise, with the reason
/// on stderr. Docker runs it as the container HEALTHCHECK.
pub async fn healthcheck(cfg: &crate::config::HealthcheckConfig) -> std::process::ExitCode {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("inferd healthcheck: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match client.get(&cfg.url).send().await {
        Ok(r) if r.status().is_success() => std::process::ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("inferd healthcheck: {} answered {}", cfg.url, r.status());
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("inferd healthcheck: {}: {e}", cfg.url);
            std::process::ExitCode::FAILURE
        }
    }
}

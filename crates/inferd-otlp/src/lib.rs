//! OpenTelemetry trace export, configured only by the standard `OTEL_*`
//! environment variables and off when no OTLP endpoint is set.
//!
//! The SDK builds the spans (ids, sampler from `OTEL_TRACES_SAMPLER`, resource
//! from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, limits) and the OTLP
//! exporter sends them (`OTEL_EXPORTER_OTLP_ENDPOINT`, `_PROTOCOL` = `grpc` or
//! `http/protobuf`, `_HEADERS`, `_TIMEOUT`). Between the two sits a processor
//! of our own instead of the SDK's batch processor, for two reasons: its queue
//! is a bounded channel whose every drop (queue full, export failed) is counted
//! in `inferd_trace_spans_dropped_total`, which the SDK's keeps to itself; and
//! its exports run on a thread with a tokio runtime of their own, so neither
//! a slow collector nor the exporter's I/O touches the runtime serving requests.
//! A request only ever pays for building its spans and one `try_send` each.

#![warn(missing_docs)]
// Request paths return typed errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;

use inferd_telemetry::trace::{self, SPANS_DROPPED, SPANS_EXPORTED};

/// The batching settings, from the standard `OTEL_BSP_*` variables.
#[derive(Debug, Clone)]
pub struct Batching {
    /// Spans waiting for export, at most (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue: usize,
    /// Longest a span waits before its batch is sent (`OTEL_BSP_SCHEDULE_DELAY`).
    pub delay: Duration,
    /// Spans per export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_batch: usize,
    /// One export's deadline (`OTEL_BSP_EXPORT_TIMEOUT`).
    pub export_timeout: Duration,
}

impl Batching {
    fn from_env() -> Batching {
        let num = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        let max_queue = num("OTEL_BSP_MAX_QUEUE_SIZE", 2048).max(1) as usize;
        Batching {
            max_queue,
            delay: Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            max_batch: (num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).max(1) as usize).min(max_queue),
            export_timeout: Duration::from_millis(num("OTEL_BSP_EXPORT_TIMEOUT", 30_000)),
        }
    }
}

/// Export is on when an OTLP endpoint is configured and the SDK is not
/// disabled (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
pub fn configured() -> Option<String> {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The running export; `shutdown` sends what is queued (bounded in time).
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// Starts export when the environment asks for it and installs the tracer
    /// the core records spans with. `Ok(None)`: tracing is off.
    pub fn from_env() -> anyhow::Result<Option<Otel>> {
        let Some(endpoint) = configured() else {
            return Ok(None);
        };
        // The exporter would fall back to its default for a value it does not
        // know; a typo should stop start-up instead of sending elsewhere.
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Ok(v) = std::env::var(name) {
                if !matches!(v.trim(), "" | "grpc" | "http/protobuf") {
                    anyhow::bail!("{name}={v:?}: expected `grpc` or `http/protobuf`");
                }
            }
        }
        let batching = Batching::from_env();
        let mut resource = Resource::builder();
        let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
        if !named {
            resource = resource.with_service_name("inferd");
        }
        let resource = resource
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let processor = Exporting::start(batching.clone(), resource.clone())?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|_| "http/protobuf".into());
        let sampler =
            std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_else(|_| "parentbased_always_on".into());
        let sampler_arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").unwrap_or_default();
        tracing::info!(
            %endpoint, %protocol, %sampler, %sampler_arg,
            queue = batching.max_queue, batch = batching.max_batch,
            delay_ms = batching.delay.as_millis() as u64,
            "OpenTelemetry traces: exporting over OTLP"
        );
        if !trace::install(provider.tracer("inferd")) {
            tracing::warn!("a tracer was already installed in this process; keeping it");
        }
        Ok(Some(Otel { provider }))
    }

    /// Exports what is queued, within `timeout`, and stops the exporter.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!("OpenTelemetry export did not finish at shutdown: {e}");
        }
    }
}

enum Msg {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
    Stop(SyncSender<()>),
}

/// The processor: spans go through a bounded channel to the export thread.
#[derive(Debug)]
struct Exporting {
    tx: SyncSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Exporting {
    fn start(cfg: Batching, resource: Resource) -> anyhow::Result<Exporting> {
        let (tx, rx) = mpsc::sync_channel(cfg.max_queue);
        // The exporter (its tonic channel or hyper client) lives on this thread's
        // runtime; it is built there, so a bad endpoint fails start-up here.
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("otel-export".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("export runtime: {e}")));
                        return;
                    }
                };
                let built =
                    rt.block_on(async { opentelemetry_otlp::SpanExporter::builder().build() });
                let mut exporter = match built {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("OTLP exporter: {e}")));
                        return;
                    }
                };
                exporter.set_resource(&resource);
                let _ = ready_tx.send(Ok(()));
                export_loop(&rt, &exporter, &rx, &cfg);
                let _ = exporter.shutdown_with_timeout(Duration::from_secs(1));
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the OTLP export thread did not start"))??;
        Ok(Exporting {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Sends a control message and waits for its answer, up to `timeout`.
    fn ask(&self, make: impl FnOnce(SyncSender<()>) -> Msg, timeout: Duration) -> OTelSdkResult {
        let until = Instant::now() + timeout;
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        // A full queue must not lose a flush or a stop, nor hold it past
        // `timeout` (the export thread may be waiting on a dead collector).
        let mut msg = make(done_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
                Err(TrySendError::Full(m)) if Instant::now() < until => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(timeout)),
            }
        }
        done_rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for Exporting {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                SPANS_DROPPED.with_label_values(&["queue_full"]).inc()
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Msg::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let r = self.ask(Msg::Stop, timeout);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            if r.is_ok() {
                let _ = t.join();
            }
        }
        r
    }
}

/// Collects spans until a batch is full or `delay` has passed since the
/// first, then exports it under `export_timeout`. A failed or timed-out
/// export drops its batch (counted): retrying would only queue more behind a
/// collector that is down.
fn export_loop(
    rt: &tokio::runtime::Runtime,
    exporter: &opentelemetry_otlp::SpanExporter,
    rx: &Receiver<Msg>,
    cfg: &Batching,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(cfg.max_batch);
    let mut due: Option<Instant> = None;
    let export = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let spans = std::mem::replace(batch, Vec::with_capacity(cfg.max_batch));
        let sent = rt.block_on(async {
            tokio::time::timeout(cfg.export_timeout, exporter.export(spans)).await
        });
        match sent {
            Ok(Ok(())) => SPANS_EXPORTED.inc_by(n as u64),
            Ok(Err(e)) => failed(n, &e.to_string()),
            Err(_) => failed(n, "timed out"),
        }
    };
    loop {
        let msg = match due {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Msg::Span(s)) => {
                batch.push(*s);
                due.get_or_insert_with(|| Instant::now() + cfg.delay);
                if batch.len() >= cfg.max_batch {
                    export(&mut batch);
                    due = None;
                }
            }
            Ok(Msg::Flush(done)) => {
                drain(rx, &mut batch, cfg, &export);
                export(&mut batch);
                due = None;
                let _ = done.send(());
            }
            Ok(Msg::Stop(done)) => {
                drain(rx, &mut batch, cfg, &export);
                export(&mut batch);
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&mut batch);
                due = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut batch);
                return;
            }
        }
    }
}

/// Takes the spans already queued into batches (a flush covers everything
/// ended before it was asked for).
fn drain(
    rx: &Receiver<Msg>,
    batch: &mut Vec<SpanData>,
    cfg: &Batching,
    export: &impl Fn(&mut Vec<SpanData>),
) {
    while let Ok(m) = rx.try_recv() {
        match m {
            Msg::Span(s) => {
                batch.push(*s);
                if batch.len() >= cfg.max_batch {
                    export(batch);
                }
            }
            Msg::Flush(done) | Msg::Stop(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// One warning per interval, with the count of those held back: a collector
/// that is down fails every export.
fn failed(spans: usize, why: &str) {
    use inferd_telemetry::ratelimit::{every, Every};
    use std::sync::LazyLock;
    SPANS_DROPPED
        .with_label_values(&["export_failed"])
        .inc_by(spans as u64);
    static FAILED: LazyLock<Every> = every!("OTLP export failed");
    if let Some(suppressed) = FAILED.tick() {
        tracing::warn!(
            spans,
            error = why,
            suppressed,
            "OTLP export failed; spans dropped"
        );
    }
}

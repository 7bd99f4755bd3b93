//! The one prediction path behind every HTTP front door. A front door resolves
//! the model and turns its wire format into JSON instances (`Prepared`), and
//! says how to answer (`Answer`); between the two, `serve_prediction` asks the
//! lifecycle for a deployment, runs the core's pipeline, and does what every
//! protocol owes a request: metrics, the prediction log and timing headers,
//! whatever the outcome.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use inferd_telemetry::ratelimit::{every, Every};
use std::time::{Duration, Instant};

use std::borrow::Cow;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use uuid::Uuid;

use super::error::ApiError;
use super::shadow;
use super::state::AppState;
use inferd_core::deployment::{Deployment, Target};
use inferd_core::instances::Instances;
use inferd_core::pipeline::{Predicted, Timings};
use inferd_core::quality::Arm;
use inferd_core::repository::Model;
use inferd_core::CoreError;
use inferd_predlog::{JsonText, Record};
use inferd_telemetry::trace::{self, RequestSpan, TraceRef};
use opentelemetry::trace::SpanContext;
use opentelemetry::KeyValue;

/// Who asked, for the prediction log: the proxy's `x-forwarded-for` (first hop)
/// or `x-real-ip` when present, else the peer address.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub request_id: String,
    /// The proxy's `x-forwarded-for` (first hop) or `x-real-ip`, when sent.
    pub forwarded: Option<String>,
    /// The connection's peer.
    pub peer: Option<SocketAddr>,
    /// When the request's header arrived: its deadline runs from here.
    pub arrived: Instant,
    /// The front door's protocol, a metric label: `http` or `grpc`.
    pub protocol: &'static str,
    /// A deadline the client set (gRPC's `grpc-timeout`); the earlier of it
    /// and `INFERD_REQUEST_TIMEOUT_MS` applies.
    pub timeout: Option<Duration>,
    /// The client's W3C `traceparent`, continued by the request's span.
    pub trace_parent: Option<SpanContext>,
    /// The request's span name: method and route template, or the gRPC method.
    pub span_name: Cow<'static, str>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let mut caller = Caller::from_parts(&parts.headers, peer);
        caller.arrived = super::extract::Arrival::of(&parts.extensions);
        // Named only when someone records spans.
        if let Some(path) = parts
            .extensions
            .get::<MatchedPath>()
            .filter(|_| trace::enabled())
        {
            caller.span_name = format!("{} {}", parts.method, path.as_str()).into();
        }
        Ok(caller)
    }
}

impl Caller {
    fn from_parts(headers: &HeaderMap, peer: Option<SocketAddr>) -> Self {
        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let forwarded = h("x-forwarded-for")
            .and_then(|v| v.split(',').next())
            .or_else(|| h("x-real-ip"))
            .map(|s| s.trim().to_string());
        Caller {
            request_id: h("x-request-id").unwrap_or_default().to_string(),
            forwarded,
            peer,
            arrived: Instant::now(),
            protocol: "http",
            timeout: None,
            trace_parent: trace::remote_parent(h("traceparent"), h("tracestate")),
            span_name: Cow::Borrowed("POST"),
        }
    }

    /// Who asked, for the log and the trace: the proxy's word, else the peer.
    /// Formatted only where it is written, not on every request.
    pub(crate) fn client(&self) -> Option<String> {
        self.forwarded
            .clone()
            .or_else(|| self.peer.map(|p| p.to_string()))
    }

    /// A caller from a protocol's own headers (gRPC metadata is HTTP/2 headers).
    pub(crate) fn from_headers(
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
        protocol: &'static str,
    ) -> Self {
        Caller {
            protocol,
            span_name: Cow::Borrowed(GRPC_INFER),
            ..Caller::from_parts(headers, peer)
        }
    }
}

/// The span name of gRPC predictions (the only gRPC call that reaches
/// `serve_prediction`), as the RPC semantic conventions name spans.
const GRPC_INFER: &str = "inference.GRPCInferenceService/ModelInfer";

/// What a front door hands to `serve_prediction`: the model version it resolved and,
/// unless the request's instances were unusable, the instances as JSON values
/// (the form `Task::decode` validates and the prediction log stores) plus
/// whatever the front door needs to answer (`T`).
pub(crate) type Prepared<T> = Result<(Target, Result<(Instances, T), ApiError>), ApiError>;

/// How a front door renders an answer, in its own reply type.
pub(crate) trait Answer<T> {
    type Reply: Reply;
    fn ok(self, model: &Model, done: &Predicted, extra: T) -> Self::Reply;
    fn err(self, e: ApiError) -> Self::Reply;
}

/// What every reply gives the shared path: the HTTP status it stands for
/// (the metrics' `status` label, the same for every protocol, so one alert
/// on 5xx covers them all) and a place for the queue and inference times.
pub(crate) trait Reply {
    fn status(&self) -> u16;
    fn add_timings(&mut self, t: &Timings);
    /// The request's trace id (`x-trace-id`), so a client that sent no
    /// `traceparent` can still find its trace and its log row.
    fn add_trace_id(&mut self, trace_id: &str);
}

impl Reply for Response {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }

    fn add_timings(&mut self, t: &Timings) {
        let h = self.headers_mut();
        // Room for these and the layers' two, without regrowing the map.
        h.reserve(6);
        h.insert(QUEUE_TIME, ms(t.queue));
        h.insert(INFERENCE_TIME, ms(t.inference));
        let timing = HeaderText::default()
            .text("queue;dur=")
            .ms(t.queue)
            .text(", inference;dur=")
            .ms(t.inference);
        if let Some(v) = timing.value() {
            h.insert(SERVER_TIMING, v);
        }
    }

    fn add_trace_id(&mut self, trace_id: &str) {
        if let Ok(v) = HeaderValue::from_str(trace_id) {
            self.headers_mut()
                .insert(HeaderName::from_static("x-trace-id"), v);
        }
    }
}

/// The one prediction path behind every front door: lifecycle checks, the
/// instance limit, validation, the pipeline (cache, single-flight, admission,
/// batching, inference), then metrics, the prediction log and timing headers,
/// whatever the outcome.
pub(crate) async fn serve_prediction<T, A: Answer<T>>(
    st: Arc<AppState>,
    caller: Caller,
    prepare: impl FnOnce(&Deployment, &str) -> Prepared<T>,
    answer: A,
) -> A::Reply {
    let start = caller.arrived;
    let _in_flight = InFlight::enter(&st.doors.requests_in_flight);
    let span = RequestSpan::start(
        caller.span_name.clone(),
        caller.trace_parent.as_ref(),
        start,
        || request_attributes(&caller),
    );
    let mut ctx = RequestCtx {
        timings: Timings::default(),
        model: None,
        instances: None,
        raw_sha256: Vec::new(),
        trace: span.at(),
        trace_id: span.at().trace_id_hex(),
        instance_count: 0,
        arm: Arm::Primary,
    };
    let timeout = caller.timeout.map_or(st.settings.request_timeout, |t| {
        t.min(st.settings.request_timeout)
    });
    let result = run(&st, prepare, &caller.request_id, start, timeout, &mut ctx).await;
    let resolved = ctx.model.clone();
    let (model_label, version_label) = resolved.as_deref().map_or(("", ""), |m| {
        (m.manifest.name.as_str(), m.manifest.version.as_str())
    });
    let latency = start.elapsed();
    let mut resp = match result {
        Ok((model, done, extra)) => {
            if st.predlog.enabled() {
                log_success(&st, &caller, &model, &done, &mut ctx, latency);
            }
            answer.ok(&model, &done, extra)
        }
        Err(e) => {
            if let Some(reason) = e.core().and_then(CoreError::rejection_reason) {
                st.metrics.rejections.with_label_values(&[reason]).inc();
            }
            if e.status().is_server_error() && e.status() != StatusCode::SERVICE_UNAVAILABLE {
                // Under overload every request past its deadline fails alike.
                static FAILED: LazyLock<Every> = every!("prediction failed");
                if let Some(suppressed) = FAILED.tick() {
                    tracing::warn!(error = %e, model = %model_label, suppressed, "prediction failed");
                }
            }
            // A request refused at the door (draining, not ready) was never
            // accepted: the proxy retries it elsewhere, and logging it would give
            // that one client request two rows.
            let at_door = e.core().is_some_and(CoreError::refused_at_door);
            if st.predlog.enabled() && !at_door {
                st.predlog.log(Record {
                    id: Uuid::new_v4(),
                    ts: chrono::Utc::now(),
                    request_id: caller.request_id.clone(),
                    model: model_label.to_string(),
                    version: version_label.to_string(),
                    status: e.status().as_u16(),
                    instance: None,
                    instance_sha256: None,
                    input_sha256: None,
                    prediction: None,
                    cached: false,
                    latency_ms: latency.as_secs_f32() * 1e3,
                    client: caller.client(),
                    error: Some(e.to_string()),
                    trace_id: ctx.trace_id.clone(),
                    instance_index: None,
                    role: None,
                    trace: ctx.trace,
                });
            }
            answer.err(e)
        }
    };
    let status = status_label(Reply::status(&resp));
    st.doors
        .requests
        .with_label_values(&[model_label, version_label, &status, caller.protocol])
        .inc();
    st.doors
        .request_duration
        .with_label_values(&[model_label, version_label])
        .observe(latency.as_secs_f64());
    resp.add_timings(&ctx.timings);
    if let Some(id) = &ctx.trace_id {
        resp.add_trace_id(id);
    }
    let instances = ctx.instance_count;
    span.finish(Reply::status(&resp), || {
        vec![
            KeyValue::new("inferd.model", model_label.to_string()),
            KeyValue::new("inferd.version", version_label.to_string()),
            KeyValue::new("inferd.instances", instances as i64),
        ]
    });
    resp
}

/// The request span's attributes known at its start (semantic conventions
/// for HTTP servers and RPC, plus inferd's request id).
fn request_attributes(caller: &Caller) -> Vec<KeyValue> {
    let mut a = vec![KeyValue::new(
        "inferd.request_id",
        caller.request_id.clone(),
    )];
    if caller.protocol == "grpc" {
        a.push(KeyValue::new("rpc.system", "grpc"));
        a.push(KeyValue::new(
            "rpc.service",
            "inference.GRPCInferenceService",
        ));
        a.push(KeyValue::new("rpc.method", "ModelInfer"));
    } else {
        a.push(KeyValue::new("http.request.method", "POST"));
        if let Some((_, route)) = caller.span_name.split_once(' ') {
            a.push(KeyValue::new("http.route", route.to_string()));
        }
    }
    if let Some(c) = caller.client() {
        a.push(KeyValue::new("client.address", c));
    }
    a
}

struct RequestCtx {
    timings: Timings,
    /// The model version once resolved to a loaded model: metric labels stay bounded
    /// to real models, whatever names clients send.
    model: Option<Arc<Model>>,
    /// The instances as the model saw them, kept for the prediction log.
    instances: Option<Vec<Option<JsonText>>>,
    /// SHA-256 of each instance as sent.
    raw_sha256: Vec<String>,
    /// Where the request's spans hang.
    trace: TraceRef,
    /// Its trace id as written to the log and the response, formatted once.
    trace_id: Option<String>,
    /// How many instances the request carried, once decoded.
    instance_count: usize,
    /// How the request reached its version.
    arm: Arm,
}

async fn run<T>(
    st: &Arc<AppState>,
    prepare: impl FnOnce(&Deployment, &str) -> Prepared<T>,
    request_id: &str,
    start: Instant,
    timeout: Duration,
    ctx: &mut RequestCtx,
) -> Result<(Arc<Model>, Predicted, T), ApiError> {
    let deployment = st.lifecycle.admit()?;
    let decoding = trace::start(ctx.trace);
    let (target, instances) = prepare(&deployment, request_id)?;
    let model = &target.model;
    ctx.model = Some(model.clone());
    let (instances, extra) = instances?;
    let entering = target.enter()?;
    // Cleaning large email messages costs milliseconds of CPU: off the reactor.
    let (decoded, instances) =
        if model.task.preprocesses() && instances.text_bytes() > OFFLOAD_BYTES {
            let (st2, target2) = (st.clone(), target.clone());
            tokio::task::spawn_blocking(move || {
                let d = st2.pipeline.decode(&target2, &instances);
                (d, instances)
            })
            .await
            .map_err(|_| CoreError::Internal("the preprocessing task failed"))?
        } else {
            (st.pipeline.decode(&target, &instances), instances)
        };
    let decoded = decoded?;
    drop(entering);
    ctx.instance_count = decoded.batch.len();
    trace::child(
        ctx.trace,
        "decode",
        decoding,
        || vec![KeyValue::new("inferd.instances", ctx.instance_count as i64)],
        Vec::new(),
    );
    let (name, number) = (
        &model.manifest.name,
        model.manifest.version.parse::<u64>().ok(),
    );
    let routing = deployment.routing(name);
    let arm = match (routing, number) {
        (Some(r), Some(v)) if r.is_canary(name, v, request_id) => Arm::Canary,
        _ => Arm::Primary,
    };
    // A share of the default version's requests is copied to the shadow
    // version: its own decode (its preprocessing may differ), later.
    let shadow = match (routing, number) {
        (Some(r), Some(v)) => r.shadow_of(name, v, request_id),
        _ => None,
    }
    .and_then(|v| deployment.resolve(name, Some(&v.to_string()), None).ok())
    .map(|t| (t, instances.clone()));
    let book = st.quality.active().then(|| st.quality.book(model));
    let features = book
        .as_ref()
        .and_then(|b| st.quality.features(b, &decoded.batch));
    if st.predlog.enabled() {
        // The log keeps the instance the model saw (the cache key's input) and
        // the hash of the one that was sent.
        ctx.raw_sha256 = instances.input_sha256();
        if st.settings.log_instances {
            ctx.instances = Some(if model.task.preprocesses() {
                let b = &decoded.batch;
                (0..b.len())
                    .map(|i| JsonText::of(&b.instance_json(i)))
                    .collect()
            } else {
                instances.into_values().iter().map(JsonText::of).collect()
            });
        }
    }
    let (batch, filled) = (decoded.batch, decoded.filled);
    st.doors
        .instances
        .with_label_values(&[&model.manifest.name])
        .observe(batch.len() as f64);
    let deadline = tokio::time::Instant::from_std(start + timeout);
    let done = st
        .pipeline
        .predict(
            &target,
            batch,
            deadline,
            st.predlog.enabled(),
            ctx.trace,
            &mut ctx.timings,
        )
        .await?;
    if let Some(book) = &book {
        st.quality.record(
            book,
            arm,
            request_id,
            &done.predictions,
            features,
            ctx.timings.queue + ctx.timings.inference,
        );
    }
    ctx.arm = arm;
    if let Some((shadow, instances)) = shadow {
        shadow::spawn(st, &target.model, shadow, instances, request_id);
    }
    let done = Predicted { filled, ..done };
    Ok((target.model, done, extra))
}

fn log_success(
    st: &AppState,
    caller: &Caller,
    model: &Model,
    done: &Predicted,
    ctx: &mut RequestCtx,
    latency: Duration,
) {
    let full = st.settings.log_instances;
    let ts = chrono::Utc::now();
    let mut instances = ctx.instances.take().unwrap_or_default().into_iter();
    let mut raw = std::mem::take(&mut ctx.raw_sha256).into_iter();
    for (i, (p, cached)) in done.predictions.iter().zip(&done.cached).enumerate() {
        let instance = instances.next();
        let key = done.keys.get(i);
        st.predlog.log(Record {
            id: Uuid::new_v4(),
            ts,
            request_id: caller.request_id.clone(),
            model: model.manifest.name.clone(),
            version: model.manifest.version.clone(),
            status: 200,
            instance: if full { instance.flatten() } else { None },
            instance_sha256: key.map(inferd_core::instances::sha256_hex),
            input_sha256: raw.next(),
            prediction: JsonText::of(p),
            cached: *cached,
            latency_ms: latency.as_secs_f32() * 1e3,
            client: caller.client(),
            error: None,
            trace_id: ctx.trace_id.clone(),
            instance_index: Some(i as u32),
            role: (ctx.arm != Arm::Primary).then(|| ctx.arm.as_str().to_string()),
            trace: ctx.trace,
        });
    }
}

/// Counts a request in `inferd_requests_in_flight` for as long as it lives,
/// including when the client goes away and the handler future is dropped.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `status` label of a response: the common codes without formatting.
fn status_label(status: u16) -> Cow<'static, str> {
    Cow::Borrowed(match status {
        200 => "200",
        400 => "400",
        404 => "404",
        408 => "408",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        504 => "504",
        other => return Cow::Owned(other.to_string()),
    })
}

/// A duration as a header value in milliseconds, formatted on the stack:
/// three of these go on every prediction's response.
pub(crate) fn ms(d: Duration) -> HeaderValue {
    HeaderText::default()
        .ms(d)
        .value()
        .unwrap_or(HeaderValue::from_static("0"))
}

const QUEUE_TIME: HeaderName = HeaderName::from_static("x-queue-time");
const INFERENCE_TIME: HeaderName = HeaderName::from_static("x-inference-time");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// A header value written on the stack: text, and durations in milliseconds
/// with three decimals from whole microseconds. Five such numbers go on every
/// response; through `fmt` (a `u128` from `as_micros`, divided and padded)
/// they cost about 3,500 instructions per request, with `itoa` a few hundred.
struct HeaderText {
    buf: [u8; 96],
    len: usize,
    overflow: bool,
}

impl Default for HeaderText {
    fn default() -> Self {
        HeaderText {
            buf: [0; 96],
            len: 0,
            overflow: false,
        }
    }
}

impl HeaderText {
    fn bytes(mut self, b: &[u8]) -> Self {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
        self
    }

    fn text(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    fn ms(self, d: Duration) -> Self {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let frac = (us % 1000) as u16;
        let digits = [
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        self.bytes(itoa::Buffer::new().format(us / 1000).as_bytes())
            .bytes(&digits)
    }

    fn value(&self) -> Option<HeaderValue> {
        if self.overflow {
            return None;
        }
        HeaderValue::from_bytes(&self.buf[..self.len]).ok()
    }
}

/// Text instances above this many bytes in all are preprocessed on a blocking
/// thread; below it the hand-off would cost more than the work.
const OFFLOAD_BYTES: usize = 32 * 1024;

#[cfg(test)]
mod tests {
    #[test]
    fn milliseconds_with_three_decimals() {
        use std::time::Duration;
        let ms = |d| super::ms(d).to_str().unwrap().to_string();
        assert_eq!(ms(Duration::from_micros(1_234_567)), "1234.567");
        assert_eq!(ms(Duration::from_micros(5)), "0.005");
        assert_eq!(ms(Duration::from_nanos(999)), "0.000");
        assert_eq!(ms(Duration::ZERO), "0.000");
        assert_eq!(ms(Duration::from_micros(1_000_010)), "1000.010");
        assert_eq!(ms(Duration::MAX), "18446744073709551.615");
        let timing = super::HeaderText::default()
            .text("queue;dur=")
            .ms(Duration::from_micros(20))
            .text(", inference;dur=")
            .ms(Duration::from_micros(1_500));
        assert_eq!(
            timing.value().unwrap().to_str().unwrap(),
            "queue;dur=0.020, inference;dur=1.500"
        );
        // Text past the buffer gives no value rather than a cut one.
        let long = "x".repeat(100);
        assert!(super::HeaderText::default().text(&long).value().is_none());
    }
}

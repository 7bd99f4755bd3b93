//! HTTP routes: prediction, model listing, health, readiness and metrics.
//!
//! Handlers stay thin: they resolve the model, let `Task` validate the instances,
//! hand the batch to the shared `Pipeline` (cache, single-flight, admission,
//! inference), answer, and log. Failures are `ApiError`s.

pub mod error;
pub mod extract;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::config::LogInputs;
use crate::pipeline::{Predicted, Timings};
use crate::predlog::Record;
use crate::repository::{Lookup, Model};
use crate::server::AppState;
use crate::task::Prediction;
pub use error::ApiError;
use extract::JsonBody;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/predict", post(predict_any))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}", get(get_model))
        .route("/v1/models/{name}/predict", post(predict_named))
        .route(
            "/v1/models/{name}/versions/{version}/predict",
            post(predict_versioned),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|req: Request| async move {
            ApiError::RouteNotFound(format!("{} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(response_time))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

fn ms(d: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// `x-response-time` (milliseconds in the server) on every response.
async fn response_time(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        HeaderName::from_static("x-response-time"),
        ms(start.elapsed()),
    );
    resp
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub instances: Option<Vec<Value>>,
}

#[derive(Debug, Serialize)]
pub struct PredictResponse<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub predictions: &'a [Prediction],
    /// Per instance: whether the prediction came from the cache.
    pub cached: &'a [bool],
}

/// Who asked, for the prediction log: the proxy's `x-forwarded-for` (first hop)
/// or `x-real-ip` when present, else the peer address.
#[derive(Debug, Clone)]
pub struct Caller {
    pub request_id: String,
    pub client: Option<String>,
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
            client: forwarded.or_else(|| peer.map(|p| p.to_string())),
        }
    }
}

async fn predict_any(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Response {
    let target = body
        .as_ref()
        .ok()
        .map(|JsonBody(b)| (b.model.clone(), b.version.clone()));
    let (name, version) = target.unwrap_or_default();
    predict(
        st,
        Caller::from_parts(&headers, Some(peer)),
        name,
        version,
        body,
    )
    .await
}

async fn predict_named(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Response {
    let version = body.as_ref().ok().and_then(|JsonBody(b)| b.version.clone());
    predict(
        st,
        Caller::from_parts(&headers, Some(peer)),
        Some(name),
        version,
        body,
    )
    .await
}

async fn predict_versioned(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Response {
    predict(
        st,
        Caller::from_parts(&headers, Some(peer)),
        Some(name),
        Some(version),
        body,
    )
    .await
}

/// Runs one prediction request; records metrics and the prediction log, whatever
/// the outcome.
async fn predict(
    st: Arc<AppState>,
    caller: Caller,
    name: Option<String>,
    version: Option<String>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Response {
    let start = Instant::now();
    let _in_flight = InFlight::enter(&st.metrics.requests_in_flight);
    let mut ctx = RequestCtx::default();
    let result = predict_inner(&st, name, version, body, start, &mut ctx).await;
    let (model_label, version_label) = ctx.labels.clone().unwrap_or_default();
    let latency = start.elapsed();
    let mut resp = match result {
        Ok((model, done)) => {
            let resp = Json(PredictResponse {
                model: &model.manifest.name,
                version: &model.manifest.version,
                predictions: &done.predictions,
                cached: &done.cached,
            })
            .into_response();
            if st.predlog.enabled() {
                log_success(&st, &caller, &model, &done, ctx.instances.take(), latency);
            }
            resp
        }
        Err(e) => {
            if let Some(reason) = e.rejection_reason() {
                st.metrics.rejections.with_label_values(&[reason]).inc();
            }
            if e.status().is_server_error() && e.status() != StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(error = %e, model = %model_label, "prediction failed");
            }
            // A request refused at the door (draining, not ready) was never
            // accepted: the proxy retries it elsewhere, and logging it would give
            // that one client request two rows.
            if st.predlog.enabled() && !e.refused_at_door() {
                st.predlog.log(Record {
                    id: Uuid::new_v4(),
                    ts: chrono::Utc::now(),
                    request_id: caller.request_id.clone(),
                    model: model_label.clone(),
                    version: version_label.clone(),
                    status: e.status().as_u16(),
                    instance: None,
                    instance_sha256: None,
                    prediction: None,
                    cached: false,
                    latency_ms: latency.as_secs_f32() * 1e3,
                    client: caller.client.clone(),
                    error: Some(e.to_string()),
                });
            }
            e.into_response()
        }
    };
    let status = resp.status().as_u16().to_string();
    st.metrics
        .requests
        .with_label_values(&[&model_label, &version_label, &status])
        .inc();
    st.metrics
        .request_duration
        .with_label_values(&[&model_label])
        .observe(latency.as_secs_f64());
    let t = ctx.timings;
    let h = resp.headers_mut();
    h.insert(HeaderName::from_static("x-queue-time"), ms(t.queue));
    h.insert(HeaderName::from_static("x-inference-time"), ms(t.inference));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "queue;dur={:.3}, inference;dur={:.3}",
        t.queue.as_secs_f64() * 1e3,
        t.inference.as_secs_f64() * 1e3
    )) {
        h.insert(HeaderName::from_static("server-timing"), v);
    }
    resp
}

fn log_success(
    st: &AppState,
    caller: &Caller,
    model: &Model,
    done: &Predicted,
    instances: Option<Vec<Value>>,
    latency: Duration,
) {
    let full = st.config.predlog_inputs == LogInputs::Full;
    let ts = chrono::Utc::now();
    let mut instances = instances.unwrap_or_default().into_iter();
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
            instance: if full { instance } else { None },
            instance_sha256: key.map(hex::encode),
            prediction: serde_json::to_value(p).ok(),
            cached: *cached,
            latency_ms: latency.as_secs_f32() * 1e3,
            client: caller.client.clone(),
            error: None,
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

#[derive(Default)]
struct RequestCtx {
    timings: Timings,
    /// (model, version) once resolved to a loaded model: metric labels stay bounded
    /// to real models, whatever names clients send.
    labels: Option<(String, String)>,
    /// The instances as sent, kept for the prediction log.
    instances: Option<Vec<Value>>,
}

async fn predict_inner(
    st: &Arc<AppState>,
    name: Option<String>,
    version: Option<String>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
    start: Instant,
    ctx: &mut RequestCtx,
) -> Result<(Arc<Model>, Predicted), ApiError> {
    if st.draining.load(Ordering::Acquire) {
        return Err(ApiError::Draining);
    }
    let repo = st.repository().ok_or(ApiError::NotReady)?;
    let JsonBody(req) = body?;
    let name =
        name.ok_or_else(|| ApiError::invalid("model", "required: the name of the model to run"))?;
    if let Some(body_model) = &req.model {
        if body_model != &name {
            return Err(ApiError::invalid(
                "model",
                format!("body names model `{body_model}` but the path names `{name}`"),
            ));
        }
    }
    let model: Arc<Model> = match repo.get(&name, version.as_deref()) {
        Ok(m) => m.clone(),
        Err(Lookup::NoModel) => return Err(ApiError::ModelNotFound(name)),
        Err(Lookup::NoVersion) => {
            return Err(ApiError::VersionNotFound(name, version.unwrap_or_default()))
        }
    };
    ctx.labels = Some((model.manifest.name.clone(), model.manifest.version.clone()));
    let instances = req.instances.ok_or_else(|| {
        ApiError::invalid("instances", "required: an array of instances to predict")
    })?;
    if instances.is_empty() {
        return Err(ApiError::invalid(
            "instances",
            "must contain at least one instance",
        ));
    }
    let limit = st.config.max_instances;
    if instances.len() > limit {
        return Err(ApiError::invalid(
            "instances",
            format!(
                "at most {limit} instances per request (INFERD_MAX_INSTANCES), got {}",
                instances.len()
            ),
        ));
    }
    let batch = model
        .task
        .decode(&instances)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    if st.predlog.enabled() && st.config.predlog_inputs == LogInputs::Full {
        ctx.instances = Some(instances);
    }
    st.metrics
        .instances
        .with_label_values(&[&model.manifest.name])
        .observe(batch.len() as f64);
    let deadline = tokio::time::Instant::from_std(start + st.config.request_timeout());
    let done = st
        .pipeline
        .predict(
            &model,
            batch,
            deadline,
            st.predlog.enabled(),
            &mut ctx.timings,
        )
        .await?;
    Ok((model, done))
}

fn describe(model: &Model, ready: bool) -> Value {
    let m = &model.manifest;
    let mut v = json!({
        "name": m.name,
        "version": m.version,
        "status": if ready { "ready" } else { "loading" },
        "task": model.task.name(),
        "description": m.description,
        "instance": model.task.instance_doc(),
        "inputs": m.inputs,
        "outputs": m.outputs,
        "batching": m.batching,
        "cache": m.cache,
        "onnx_sha256": m.onnx_sha256,
        "metrics": m.metrics,
    });
    if let Some(t) = &m.text {
        v["labels"] = json!(t.labels);
        v["max_text_bytes"] = json!(t.max_text_bytes);
    }
    if let Some(t) = &m.timeseries {
        v["timeseries"] = serde_json::to_value(t).unwrap_or_default();
    }
    v
}

async fn list_models(State(st): State<Arc<AppState>>) -> Response {
    let ready = st.ready.load(Ordering::Acquire);
    let models: Vec<Value> = st
        .repository()
        .map(|r| r.iter().map(|m| describe(m, ready)).collect())
        .unwrap_or_default();
    Json(json!({ "ready": ready, "models": models })).into_response()
}

async fn get_model(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let repo = st.repository().ok_or(ApiError::NotReady)?;
    let versions = repo
        .models
        .get(&name)
        .ok_or_else(|| ApiError::ModelNotFound(name.clone()))?;
    let ready = st.ready.load(Ordering::Acquire);
    let list: Vec<Value> = versions
        .values()
        .rev()
        .map(|m| describe(m, ready))
        .collect();
    Ok(Json(json!({ "name": name, "latest": list.first().map(|v| v["version"].clone()), "versions": list }))
        .into_response())
}

async fn healthz() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
            .into_response();
    }
    if !st.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting" })),
        )
            .into_response();
    }
    Json(json!({ "status": "ready" })).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

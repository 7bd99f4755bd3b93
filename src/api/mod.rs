//! HTTP front doors and what they share.
//!
//! Two protocols reach the same models: inferd's own JSON API (`v1`: `/predict`,
//! `/v1/models/...`) and the KServe v2 / Open Inference Protocol (`v2`). Each
//! front door only translates its wire format into JSON instances and back; the
//! path in between (`serve_prediction`: admission, validation by the model's
//! `Task`, the shared `Pipeline` with cache, single-flight and batching, the
//! prediction log and the metrics) is one piece of code. Routes are registered
//! with their OpenAPI description (`openapi`), so the document served at
//! `/openapi.json` lists exactly the routes the server has. Optional bearer-token
//! auth (`auth`) wraps the model routes. Failures are `ApiError`s.

pub mod auth;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod v1;
pub mod v2;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::config::LogInputs;
use crate::pipeline::{Predicted, Timings};
use crate::predlog::Record;
use crate::repository::{Model, Repository};
use crate::server::AppState;
pub use error::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route with its OpenAPI description, plus the document itself.
pub fn router(state: Arc<AppState>) -> Router {
    let (routes, _) = api_routes().split_for_parts();
    let body_limit = state.config.max_body_bytes;
    routes
        .fallback(|req: Request| async move {
            let path = req.uri().path().to_string();
            let e = ApiError::RouteNotFound(format!("{} {path}", req.method()));
            if v2::is_v2_path(&path) {
                v2::error_response(e)
            } else {
                e.into_response()
            }
        })
        .method_not_allowed_fallback(|req: Request| async move {
            if v2::is_v2_path(req.uri().path()) {
                v2::error_response(ApiError::MethodNotAllowed)
            } else {
                ApiError::MethodNotAllowed.into_response()
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        .layer(middleware::from_fn(response_time))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// The routes and their description, without state: `openapi::document()` uses
/// this too, so the committed `docs/openapi.json` comes from the same list.
pub fn api_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(v1::predict_any))
        .routes(routes!(v1::list_models))
        .routes(routes!(v1::get_model))
        .routes(routes!(v1::predict_named))
        .routes(routes!(v1::predict_versioned))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(v2::server_metadata))
        .routes(routes!(v2::server_live))
        .routes(routes!(v2::server_ready))
        .routes(routes!(v2::model_metadata))
        .routes(routes!(v2::model_version_metadata))
        .routes(routes!(v2::model_ready))
        .routes(routes!(v2::model_version_ready))
        .routes(routes!(v2::infer))
        .routes(routes!(v2::infer_version))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(openapi::reference))
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

/// Who asked, for the prediction log: the proxy's `x-forwarded-for` (first hop)
/// or `x-real-ip` when present, else the peer address.
#[derive(Debug, Clone)]
pub struct Caller {
    pub request_id: String,
    pub client: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(Caller::from_parts(&parts.headers, peer))
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
            client: forwarded.or_else(|| peer.map(|p| p.to_string())),
        }
    }
}

/// What a front door hands to `serve_prediction`: the model it resolved and,
/// unless the request's instances were unusable, the instances as JSON values
/// (the form `Task::decode` validates and the prediction log stores) plus
/// whatever the front door needs to answer (`T`).
pub type Prepared<T> = Result<(Arc<Model>, Result<(Vec<Value>, T), ApiError>), ApiError>;

/// How a front door renders an answer.
pub trait Answer<T> {
    fn ok(self, model: &Model, done: &Predicted, extra: T) -> Response;
    fn err(self, e: ApiError) -> Response;
}

/// The one prediction path behind every front door: lifecycle checks, the
/// instance limit, validation, the pipeline (cache, single-flight, admission,
/// batching, inference), then metrics, the prediction log and timing headers,
/// whatever the outcome.
pub async fn serve_prediction<T>(
    st: Arc<AppState>,
    caller: Caller,
    prepare: impl FnOnce(&Repository) -> Prepared<T>,
    answer: impl Answer<T>,
) -> Response {
    let start = Instant::now();
    let _in_flight = InFlight::enter(&st.metrics.requests_in_flight);
    let mut ctx = RequestCtx::default();
    let result = run(&st, prepare, start, &mut ctx).await;
    let (model_label, version_label) = ctx.labels.clone().unwrap_or_default();
    let latency = start.elapsed();
    let mut resp = match result {
        Ok((model, done, extra)) => {
            if st.predlog.enabled() {
                log_success(&st, &caller, &model, &done, ctx.instances.take(), latency);
            }
            answer.ok(&model, &done, extra)
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
            answer.err(e)
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

#[derive(Default)]
struct RequestCtx {
    timings: Timings,
    /// (model, version) once resolved to a loaded model: metric labels stay bounded
    /// to real models, whatever names clients send.
    labels: Option<(String, String)>,
    /// The instances as sent, kept for the prediction log.
    instances: Option<Vec<Value>>,
}

async fn run<T>(
    st: &Arc<AppState>,
    prepare: impl FnOnce(&Repository) -> Prepared<T>,
    start: Instant,
    ctx: &mut RequestCtx,
) -> Result<(Arc<Model>, Predicted, T), ApiError> {
    if st.draining.load(Ordering::Acquire) {
        return Err(ApiError::Draining);
    }
    let repo = st.repository().ok_or(ApiError::NotReady)?;
    let (model, instances) = prepare(repo)?;
    ctx.labels = Some((model.manifest.name.clone(), model.manifest.version.clone()));
    let (instances, extra) = instances?;
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
    Ok((model, done, extra))
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

#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `alive`, `ready`, `starting` or `draining`.
    #[schema(example = "ready")]
    pub status: &'static str,
}

/// Liveness: the process answers. Never depends on models or backends.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "alive" })
}

/// Readiness: models loaded and warmed up, and not draining.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to serve predictions", body = Status),
        (status = 503, description = "Starting (models loading) or draining", body = Status),
    ))]
pub async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let status = match st.readiness() {
        Ok(()) => return Json(Status { status: "ready" }).into_response(),
        Err(ApiError::Draining) => "draining",
        Err(_) => "starting",
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(Status { status })).into_response()
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain", body = String)))]
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

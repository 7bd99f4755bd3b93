//! inferd's front doors and what they share.
//!
//! Three wire formats reach the same models: inferd's own JSON API (`v1`:
//! `/predict`, `/v1/models/...`), the KServe v2 / Open Inference Protocol over
//! REST (`v2`, a router nested under `/v2`) and over gRPC (`grpc`). Each front door only translates its wire format into JSON
//! instances and back; the path in between (`serve::serve_prediction`) is one
//! piece of code over the core's pipeline. Each router is mounted with its own
//! error format (`error::ErrorFormat`), so its fallbacks, auth refusals
//! (`auth`) and refusals at the door while the queue is full (`door`) answer
//! in its protocol. Routes are registered with their OpenAPI
//! description (`openapi`), so the document served at `/openapi.json` lists
//! exactly the routes the server has.

#![warn(missing_docs)]
// Request paths return typed errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod auth;
mod budget;
mod door;
mod error;
mod extract;
mod front;
mod grpc;
mod health;
mod openapi;
mod quality;
mod routes;
mod serve;
mod shadow;
mod state;
mod v1;
mod v2;

#[cfg(test)]
mod oneshot_tests;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;

pub use auth::{ApiKeys, KeySources};
pub use budget::MemoryBudget;
use error::{method_not_allowed, route_not_found, ErrorFormat, JsonApi};
pub use error::{ApiError, Linger, Shed};
pub use extract::Arrival;
pub use grpc::router as grpc_router;
pub use routes::document;
use routes::{doc_routes, v1_routes, Routes};
pub use state::{AppState, DoorMetrics, Settings};

/// The decoders on their own, as entry points for property tests, fuzzers and
/// benchmarks (the `test-util` feature); and the protocol's generated gRPC
/// client, for tests that call the server.
#[cfg(feature = "test-util")]
pub mod testing {
    pub use crate::extract::parse;
    pub use crate::grpc::pb;
    pub use crate::v1::PredictRequest;
    pub use crate::v2::codec;
    pub use crate::v2::wire::{InferRequest, TensorData};
}

/// Fallbacks and the gate (`gate`) in the router's own error format.
fn with_format<F: ErrorFormat>(routes: Routes, state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let (router, _) = routes.split_for_parts();
    router
        .fallback(route_not_found::<F>)
        .method_not_allowed_fallback(method_not_allowed::<F>)
        .layer(middleware::from_fn_with_state(state.clone(), gate::<F>))
}

/// The three checks before a handler, as one middleware (each layer on a
/// route costs allocations on every request): the API key, then refusal at
/// the door while the queue is full or the model's queue is over its limit,
/// then the memory budget, which holds its reservation while the request is
/// served.
async fn gate<F: ErrorFormat>(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(refused) = auth::refusal::<F>(&st.api_keys, &req) {
        return refused;
    }
    let req = match door::check::<F>(&st, req).await {
        Ok(req) => req,
        Err(refused) => return refused,
    };
    budget::reserve::<F>(&st, req, next).await
}

/// The whole HTTP service. What every request gets (its id, its response
/// time, its trace and the body limit) wraps the router once (`front`), not
/// each of its routes.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = with_format::<JsonApi>(v1_routes().merge(doc_routes()), &state);
    let v2 = with_format::<v2::V2>(v2::routes(), &state);
    let body_limit = state.settings.max_body_bytes;
    let routes = v1.nest("/v2", v2).with_state(state);
    let app = tower::ServiceBuilder::new()
        .layer(front::FrontLayer)
        .layer(TraceLayer::new_for_http().on_failure(log_failure))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .service(routes);
    Router::new().fallback_service(app)
}

/// tower-http logs every 5xx at ERROR by default. A 503 is an expected state
/// (starting, draining: the proxy retries elsewhere) and goes to DEBUG; other
/// server errors are WARN, at most one line per interval with the count of
/// those held back, since under overload they come by the thousand.
fn log_failure(
    failure: ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use std::sync::LazyLock;

    use inferd_telemetry::ratelimit::{every, Every};
    static FAILED: LazyLock<Every> = every!("response failed");
    match failure {
        ServerErrorsFailureClass::StatusCode(s) if s == StatusCode::SERVICE_UNAVAILABLE => {
            tracing::debug!(status = 503, "service unavailable (starting or draining)");
        }
        other => {
            if let Some(suppressed) = FAILED.tick() {
                tracing::warn!(
                    classification = %other,
                    latency_ms = latency.as_millis() as u64,
                    suppressed,
                    "response failed"
                );
            }
        }
    }
}

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
mod grpc;
mod health;
mod openapi;
mod routes;
mod serve;
mod state;
mod v1;
mod v2;

#[cfg(test)]
mod oneshot_tests;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderName;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{ApiKeys, KeySources};
pub use budget::MemoryBudget;
pub use error::ApiError;
use error::{method_not_allowed, route_not_found, ErrorFormat, JsonApi};
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

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Fallbacks, API keys and refusal at the door in the router's own error
/// format. Keys are checked first (the outer layer).
fn with_format<F: ErrorFormat>(routes: Routes, state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let (router, _) = routes.split_for_parts();
    router
        .fallback(route_not_found::<F>)
        .method_not_allowed_fallback(method_not_allowed::<F>)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            budget::reserve::<F>,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            door::refuse_when_full::<F>,
        ))
        .layer(middleware::from_fn_with_state(
            state.api_keys.clone(),
            auth::require_api_key::<F>,
        ))
}

/// The whole HTTP service.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = with_format::<JsonApi>(v1_routes().merge(doc_routes()), &state);
    let v2 = with_format::<v2::V2>(v2::routes(), &state);
    v1.nest("/v2", v2)
        .layer(axum::extract::DefaultBodyLimit::max(
            state.settings.max_body_bytes,
        ))
        .layer(middleware::from_fn(response_time))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().on_failure(log_failure))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
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

/// `x-response-time` (milliseconds in the server) on every response.
async fn response_time(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        HeaderName::from_static("x-response-time"),
        serve::ms(start.elapsed()),
    );
    resp
}

//! Probes and metrics: liveness never depends on models or backends; readiness
//! is the lifecycle's phase.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::state::AppState;
use inferd_core::lifecycle::Phase;

#[derive(Serialize, ToSchema)]
pub(crate) struct Status {
    /// `alive`, `ready`, `starting` or `draining`.
    #[schema(example = "ready")]
    pub status: &'static str,
}

/// Liveness: the process answers. Never depends on models or backends.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = Status)))]
pub(crate) async fn healthz() -> Json<Status> {
    Json(Status { status: "alive" })
}

/// Readiness: models loaded and warmed up, and not draining.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to serve predictions", body = Status),
        (status = 503, description = "Starting (models loading) or draining", body = Status),
    ))]
pub(crate) async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let phase = st.lifecycle.phase();
    let status = if phase == Phase::Serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Status {
            status: phase.name(),
        }),
    )
        .into_response()
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let slots = st.pipeline.admission.slots().count().max(1) as f64;
    let busy = (st.metrics.in_flight.get().max(0) as f64 / slots).min(1.0);
    let waiting = st.lifecycle.deployment().map_or(0.0, |d| d.queue_fill());
    st.doors.load.set(busy + waiting);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        inferd_telemetry::metrics::render(&st.registry),
    )
        .into_response()
}

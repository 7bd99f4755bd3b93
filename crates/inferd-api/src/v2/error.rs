//! How KServe v2 writes errors: `{"error": "<message>"}`, the one place the
//! protocol's statuses differ from the JSON API's, and the error lists its
//! routes declare in the OpenAPI document.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorFormat};
use inferd_core::CoreError;

/// The v2 router's error format.
pub(crate) struct V2;

impl ErrorFormat for V2 {
    fn render(e: ApiError) -> Response {
        error_response(e)
    }
}

/// The protocol's error document.
#[derive(Serialize, ToSchema)]
pub(crate) struct V2Error {
    #[schema(example = "input `text`: expected datatype BYTES, got FP32")]
    pub error: String,
}

/// An `ApiError` in the protocol's shape: `{"error": "..."}`. Invalid input is
/// 400 here (the protocol has no 422); the other statuses and headers
/// (`Retry-After`, `WWW-Authenticate`) are the JSON API's.
pub(crate) fn error_response(e: ApiError) -> Response {
    let status = match e.status() {
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            StatusCode::BAD_REQUEST
        }
        s => s,
    };
    let message = match (&e, e.field()) {
        (ApiError::Core(CoreError::Invalid { message, .. }), Some(f)) => format!("{f}: {message}"),
        _ => e.to_string(),
    };
    let mut resp = (status, Json(V2Error { error: message })).into_response();
    e.finish(&mut resp);
    resp
}

/// An `ApiError` rendered in the protocol's shape, for handlers returning `Result`.
pub(crate) struct V2Failure(ApiError);

impl IntoResponse for V2Failure {
    fn into_response(self) -> Response {
        error_response(self.0)
    }
}

impl From<ApiError> for V2Failure {
    fn from(e: ApiError) -> Self {
        V2Failure(e)
    }
}

impl From<CoreError> for V2Failure {
    fn from(e: CoreError) -> Self {
        V2Failure(e.into())
    }
}

/// The failures of the model metadata and readiness routes.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used
pub(crate) enum ModelRouteErrors {
    #[response(
        status = 401,
        description = "Missing or wrong API key (when INFERD_API_KEYS is set)"
    )]
    Unauthorized(#[to_schema] V2Error),
    #[response(status = 404, description = "No such model or version")]
    NotFound(#[to_schema] V2Error),
    #[response(status = 503, description = "Still loading, or draining")]
    Unavailable(#[to_schema] V2Error),
}

/// The failures only the infer routes add to `ModelRouteErrors`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used
pub(crate) enum InferErrors {
    #[response(status = 400, description = "Invalid request")]
    Invalid(#[to_schema] V2Error),
    #[response(status = 413, description = "Body over INFERD_MAX_BODY_BYTES")]
    TooLarge(#[to_schema] V2Error),
    #[response(
        status = 429,
        description = "At capacity (`queue_full`, `overloaded`: the model's queue is at its \
            adaptive limit; `memory_budget`): retry after `Retry-After` seconds"
    )]
    QueueFull(#[to_schema] V2Error),
    #[response(
        status = 504,
        description = "Deadline (INFERD_REQUEST_TIMEOUT_MS) passed"
    )]
    Deadline(#[to_schema] V2Error),
}

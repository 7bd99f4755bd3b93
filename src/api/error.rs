//! The one error type of the HTTP API and the one place it becomes a status code.
//!
//! Every failure a client can cause or observe is a variant here, rendered as
//! `{"error": {"code", "message", "field"?}}`. Keeping the mapping in one match
//! is what makes "no input produces a 500" checkable by reading one function.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body exceeds the limit of {0} bytes (INFERD_MAX_BODY_BYTES)")]
    PayloadTooLarge(usize),
    #[error("no model named `{0}`; GET /v1/models lists them")]
    ModelNotFound(String),
    #[error("model `{0}` has no version `{1}`; GET /v1/models/{0} lists them")]
    VersionNotFound(String, String),
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    #[error("server is at capacity ({0} requests already waiting); retry shortly")]
    QueueFull(usize),
    #[error("models are still loading or warming up")]
    NotReady,
    #[error("the server is shutting down and accepts no new work")]
    Draining,
    #[error("the request deadline of {0} ms passed before the prediction was ready")]
    DeadlineExceeded(u64),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed for this route")]
    MethodNotAllowed,
    #[error("{0}")]
    Unauthorized(&'static str),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ModelNotFound(_)
            | ApiError::VersionNotFound(..)
            | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady | ApiError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Inference(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::VersionNotFound(..) => "version_not_found",
            ApiError::Invalid { .. } => "invalid_input",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::NotReady => "not_ready",
            ApiError::Draining => "draining",
            ApiError::DeadlineExceeded(_) => "deadline_exceeded",
            ApiError::Inference(_) => "inference_failed",
            ApiError::RouteNotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthorized(_) => "unauthorized",
        }
    }

    /// The headers that go with this error in either protocol: when to retry
    /// (load shedding and restarts are transient) and how to authenticate.
    pub fn set_headers(&self, headers: &mut HeaderMap) {
        match self {
            ApiError::QueueFull(_) | ApiError::NotReady | ApiError::Draining => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"inferd\""),
                );
            }
            _ => {}
        }
    }

    /// Refusals before the request is accepted (the server is starting or
    /// stopping): nothing was computed, and a proxy may send it to another worker.
    pub fn refused_at_door(&self) -> bool {
        matches!(self, ApiError::NotReady | ApiError::Draining)
    }

    /// The `reason` label of `inferd_rejections_total`, for refusals that are
    /// about capacity or lifecycle rather than the request's content.
    pub fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            ApiError::QueueFull(_) => Some("queue_full"),
            ApiError::NotReady => Some("not_ready"),
            ApiError::Draining => Some("draining"),
            ApiError::DeadlineExceeded(_) => Some("deadline"),
            _ => None,
        }
    }
}

/// The JSON API's error document.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable, machine-readable: `invalid_input`, `model_not_found`, `queue_full`, ...
    #[schema(example = "invalid_input")]
    pub code: &'a str,
    /// For people.
    pub message: String,
    /// The offending field, as a path into the request (`instances[2][25][0]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let field = match &self {
            ApiError::Invalid { field, .. } => field.as_deref(),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                field,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        self.set_headers(resp.headers_mut());
        resp
    }
}

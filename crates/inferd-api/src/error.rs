//! The HTTP layer's error type and the one place core errors become status codes.
//!
//! `ApiError` is a core error, or one of the failures only HTTP has (malformed
//! JSON, media type, body too large, unknown route or method, missing key).
//! `status` and `code` hold the whole mapping, which is what makes "no input
//! produces a 500" checkable by reading two functions. How the error is written
//! is the front door's business: `ErrorFormat` renders it, `JsonApi` as
//! `{"error": {"code", "message", "field"?}}`, KServe v2 as `{"error": "..."}`.

use axum::extract::{OriginalUri, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use inferd_core::CoreError;

#[derive(Debug, Clone, thiserror::Error)]
/// A request the front doors could not serve, from the core or from HTTP itself.
pub enum ApiError {
    #[error("{}", core_message(.0))]
    /// The core refused or failed.
    Core(#[from] CoreError),
    #[error("malformed JSON: {0}")]
    /// The body is not JSON.
    MalformedJson(String),
    #[error("{0}")]
    /// The body's content type is not one the route takes.
    UnsupportedMediaType(String),
    #[error("request body exceeds the limit of {0} bytes (INFERD_MAX_BODY_BYTES)")]
    /// The body is over the limit.
    PayloadTooLarge(usize),
    #[error("the request body did not arrive within {0} ms (INFERD_BODY_READ_TIMEOUT_MS)")]
    /// The body did not arrive within its deadline.
    BodyTimeout(u64),
    #[error("no route for {0}")]
    /// No such route.
    RouteNotFound(String),
    #[error("method not allowed for this route")]
    /// The route takes another method.
    MethodNotAllowed,
    #[error("{0}")]
    /// No key, or a wrong one.
    Unauthorized(&'static str),
    /// Authenticated, but not allowed: an inference key on an admin route, or
    /// model control switched off.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The memory budget for requests in flight has no room for this body.
    #[error(
        "the server's memory budget for requests in flight ({0} bytes, \
         INFERD_MEMORY_BUDGET_BYTES) is in use; retry shortly"
    )]
    MemoryBudget(u64),
    /// Label feedback refused as a whole.
    #[error("{0}")]
    Feedback(inferd_core::quality::FeedbackError),
    /// One label refused, with its status (404 unknown id, 422 invalid).
    #[error("{1}")]
    Label(StatusCode, String),
}

/// Marks a response that shed load (429 `queue_full` or `overloaded`, in any
/// HTTP format). The accept loop reads it: it leaves the connection's next
/// request unread for a while, so that a client resending at once does not
/// spend the core on refusals (`inferd::listen`).
#[derive(Debug, Clone, Copy)]
pub struct Shed;

/// Marks a refusal answered before the rest of its body was read (a body
/// larger than 16 KiB, the most a refusal drains): the answer closes the
/// connection, and the accept loop then reads and drops what the client still
/// sends, until it closes its side or `until` (the body's deadline), rather
/// than closing at once on unread data, which resets the connection and can
/// lose the answer. Reading the rest through hyper instead kept two read
/// buffers per connection alive: 10,000 clients refused for memory held
/// about 28 KB each, 270 MB outside the memory budget.
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    /// When to stop reading and close, answered or not.
    pub until: std::time::Instant,
}

/// Core messages, with a pointer to the listing route where one helps.
/// `Retry-After` in whole seconds (the header has no finer unit), rounded
/// up from the core's estimate and at least 1.
pub(crate) fn retry_after_secs(e: &CoreError) -> u64 {
    e.retry_after()
        .map_or(1, |d| d.as_millis().div_ceil(1000) as u64)
        .max(1)
}

fn retry_after_header(e: &CoreError) -> HeaderValue {
    HeaderValue::from(retry_after_secs(e))
}

fn core_message(e: &CoreError) -> String {
    match e {
        CoreError::ModelNotFound(name) => {
            format!("no model named `{name}`; GET /v1/models lists them")
        }
        CoreError::VersionNotFound(name, v) => {
            format!("model `{name}` has no version `{v}`; GET /v1/models/{name} lists them")
        }
        other => other.to_string(),
    }
}

impl ApiError {
    /// Invalid input at `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Core(CoreError::invalid(field, message))
    }

    /// The core error, when it is one.
    pub fn core(&self) -> Option<&CoreError> {
        match self {
            ApiError::Core(e) => Some(e),
            _ => None,
        }
    }

    /// The HTTP status: the one place errors become statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Core(e) => match e {
                CoreError::ModelNotFound(_) | CoreError::VersionNotFound(..) => {
                    StatusCode::NOT_FOUND
                }
                CoreError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                CoreError::QueueFull(_) | CoreError::Overloaded { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                CoreError::NotReady | CoreError::Draining => StatusCode::SERVICE_UNAVAILABLE,
                CoreError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
                CoreError::Backend(_) | CoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                CoreError::ModelBusy(_) => StatusCode::CONFLICT,
                CoreError::LoadFailed(_) => StatusCode::BAD_REQUEST,
            },
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MemoryBudget(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Feedback(_) => StatusCode::CONFLICT,
            ApiError::Label(s, _) => *s,
        }
    }

    /// The JSON API's machine-readable `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Core(e) => match e {
                CoreError::ModelNotFound(_) => "model_not_found",
                CoreError::VersionNotFound(..) => "version_not_found",
                CoreError::Invalid { .. } => "invalid_input",
                CoreError::QueueFull(_) => "queue_full",
                CoreError::Overloaded { .. } => "overloaded",
                CoreError::NotReady => "not_ready",
                CoreError::Draining => "draining",
                CoreError::DeadlineExceeded(_) => "deadline_exceeded",
                CoreError::Backend(_) => "inference_failed",
                CoreError::Internal(_) => "internal",
                CoreError::ModelBusy(_) => "model_busy",
                CoreError::LoadFailed(_) => "load_failed",
            },
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::RouteNotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::MemoryBudget(_) => "memory_budget",
            ApiError::Feedback(_) => "feedback_off",
            ApiError::Label(s, _) if *s == StatusCode::NOT_FOUND => "unknown_prediction",
            ApiError::Label(..) => "invalid_label",
        }
    }

    /// The offending field, for invalid input.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Core(CoreError::Invalid { field, .. }) => field.as_deref(),
            _ => None,
        }
    }

    /// Whether this error sheds load: a refusal because the model's queue is
    /// full or its wait is over the target, which the same request may pass
    /// moments later.
    pub(crate) fn sheds(&self) -> bool {
        matches!(
            self,
            ApiError::Core(CoreError::QueueFull(_) | CoreError::Overloaded { .. })
        )
    }

    /// The headers, and the [`Shed`] mark, that go with this error in every
    /// format.
    pub(crate) fn finish(&self, resp: &mut Response) {
        self.set_headers(resp.headers_mut());
        if self.sheds() {
            resp.extensions_mut().insert(Shed);
        }
    }

    /// The headers that go with this error in every format: when to retry
    /// (load shedding and restarts are transient) and how to authenticate.
    pub fn set_headers(&self, headers: &mut HeaderMap) {
        match self {
            ApiError::Core(e) if e.retryable() => {
                headers.insert(header::RETRY_AFTER, retry_after_header(e));
                // Draining ends by closing every connection: a client that kept
                // this one would send its next request into the close and could
                // not tell whether it was served. Closed now, it reconnects
                // (to another worker) cleanly.
                if matches!(e, CoreError::Draining) {
                    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
            }
            ApiError::MemoryBudget(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The rest of the body may still come: the connection cannot carry
            // another request.
            ApiError::BodyTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
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
}

/// How a front door writes its errors. Routers are mounted with theirs, so
/// fallbacks and auth refusals come out in the protocol of the router that
/// answered, never by looking at the path.
pub(crate) trait ErrorFormat: Send + Sync + 'static {
    fn render(e: ApiError) -> Response;
}

/// inferd's own JSON API.
pub(crate) struct JsonApi;

impl ErrorFormat for JsonApi {
    fn render(e: ApiError) -> Response {
        e.into_response()
    }
}

/// The fallback for paths no route of the router matches.
pub(crate) async fn route_not_found<F: ErrorFormat>(req: Request) -> Response {
    // A nested router sees its path without the prefix; report the one sent.
    let path = req
        .extensions()
        .get::<OriginalUri>()
        .map(|u| u.path().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    F::render(ApiError::RouteNotFound(format!("{} {path}", req.method())))
}

pub(crate) async fn method_not_allowed<F: ErrorFormat>() -> Response {
    F::render(ApiError::MethodNotAllowed)
}

/// The JSON API's error document.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail<'a> {
    /// Stable, machine-readable: `invalid_input`, `model_not_found`, `queue_full`, `overloaded`, `memory_budget`, ...
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
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                field: self.field(),
            },
        };
        let mut resp = (self.status(), Json(body)).into_response();
        self.finish(&mut resp);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_core::backend::BackendError;

    #[test]
    fn every_core_error_has_a_status_and_only_server_faults_are_5xx_500() {
        let all = [
            CoreError::ModelNotFound("m".into()),
            CoreError::VersionNotFound("m".into(), "9".into()),
            CoreError::invalid("instances", "bad"),
            CoreError::QueueFull(3),
            CoreError::Overloaded {
                model: "m".into(),
                wait_ms: 30,
                target_ms: 12,
                retry_after_ms: 2_400,
            },
            CoreError::NotReady,
            CoreError::Draining,
            CoreError::DeadlineExceeded(10),
            CoreError::Backend(BackendError::EmptyBatch),
            CoreError::Internal("x"),
            CoreError::ModelBusy("m".into()),
            CoreError::LoadFailed("m/2: golden".into()),
        ];
        for e in all {
            let api = ApiError::from(e.clone());
            assert_eq!(
                api.status() == StatusCode::INTERNAL_SERVER_ERROR,
                e.is_server_fault(),
                "{e:?}"
            );
            let mut h = HeaderMap::new();
            api.set_headers(&mut h);
            assert_eq!(h.contains_key(header::RETRY_AFTER), e.retryable(), "{e:?}");
        }
        let e = ApiError::from(CoreError::ModelNotFound("m".into()));
        assert_eq!(
            e.to_string(),
            "no model named `m`; GET /v1/models lists them"
        );
    }

    /// Only load shedding marks its response for the accept loop's pause
    /// (`Shed`), in the JSON API's format and in KServe v2's: a refusal for
    /// memory, or a restart, says nothing about how soon the same client's
    /// next request would be refused.
    #[test]
    fn only_shed_load_is_marked_for_the_pause() {
        let shed = [
            ApiError::from(CoreError::QueueFull(3)),
            ApiError::from(CoreError::Overloaded {
                model: "m".into(),
                wait_ms: 30,
                target_ms: 12,
                retry_after_ms: 100,
            }),
        ];
        let not = [
            ApiError::MemoryBudget(1 << 20),
            ApiError::from(CoreError::Draining),
            ApiError::from(CoreError::NotReady),
            ApiError::from(CoreError::invalid("instances", "bad")),
        ];
        let cases = shed
            .map(|e| (e, true))
            .into_iter()
            .chain(not.map(|e| (e, false)));
        for (e, marked) in cases {
            let v2 = crate::v2::error::error_response(e.clone());
            assert_eq!(v2.extensions().get::<Shed>().is_some(), marked, "{e:?}");
            let json = e.clone().into_response();
            assert_eq!(json.extensions().get::<Shed>().is_some(), marked, "{e:?}");
        }
    }

    #[test]
    fn retry_after_is_the_drain_time_rounded_up_to_whole_seconds() {
        let overloaded = |ms| CoreError::Overloaded {
            model: "m".into(),
            wait_ms: 0,
            target_ms: 0,
            retry_after_ms: ms,
        };
        for (ms, secs) in [(0, 1), (12, 1), (1_000, 1), (1_001, 2), (2_400, 3)] {
            let mut h = HeaderMap::new();
            ApiError::from(overloaded(ms)).set_headers(&mut h);
            assert_eq!(h[header::RETRY_AFTER], secs.to_string().as_str(), "{ms} ms");
        }
        let e = ApiError::from(overloaded(40));
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code(), "overloaded");
        assert_eq!(
            e.to_string(),
            "model `m` is at capacity: a request now would wait about 0 ms in its queue, \
             over its target of 0 ms; retry after 40 ms"
        );
        let mut h = HeaderMap::new();
        let budget = ApiError::MemoryBudget(1 << 20);
        budget.set_headers(&mut h);
        assert_eq!(h[header::RETRY_AFTER], "1");
        assert_eq!(budget.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}

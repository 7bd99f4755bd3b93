//! The one place the gRPC front door turns errors into gRPC statuses.
//!
//! Overload is `RESOURCE_EXHAUSTED`, a deadline `DEADLINE_EXCEEDED`, bad input
//! `INVALID_ARGUMENT`, an unknown model `NOT_FOUND`, starting or draining
//! `UNAVAILABLE` (which gRPC clients retry), missing keys `UNAUTHENTICATED`.
//! The HTTP status an error stands for is kept too: it is the `status` label
//! of `inferd_requests_total`, the same for both protocols.

use axum::http::StatusCode;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::ApiError;
use inferd_core::CoreError;

/// The gRPC code for an error, variant by variant: a new variant does not
/// compile until it has its code.
pub(crate) fn code(e: &ApiError) -> Code {
    match e {
        ApiError::Core(core) => match core {
            CoreError::ModelNotFound(_) | CoreError::VersionNotFound(..) => Code::NotFound,
            CoreError::Invalid { .. } | CoreError::LoadFailed(_) => Code::InvalidArgument,
            CoreError::QueueFull(_) | CoreError::Overloaded { .. } => Code::ResourceExhausted,
            CoreError::NotReady | CoreError::Draining => Code::Unavailable,
            CoreError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CoreError::Backend(_) | CoreError::Internal(_) => Code::Internal,
            CoreError::ModelBusy(_) => Code::Aborted,
        },
        ApiError::MalformedJson(_)
        | ApiError::UnsupportedMediaType(_)
        | ApiError::PayloadTooLarge(_) => Code::InvalidArgument,
        ApiError::BodyTimeout(_) => Code::DeadlineExceeded,
        ApiError::RouteNotFound(_) => Code::NotFound,
        ApiError::MethodNotAllowed => Code::Unimplemented,
        ApiError::Unauthorized(_) => Code::Unauthenticated,
        ApiError::Forbidden(_) => Code::PermissionDenied,
        ApiError::MemoryBudget(_) => Code::ResourceExhausted,
        ApiError::Feedback(_) => Code::FailedPrecondition,
        ApiError::Label(s, _) if *s == StatusCode::NOT_FOUND => Code::NotFound,
        ApiError::Label(..) => Code::InvalidArgument,
    }
}

/// The HTTP status an error is counted under: the KServe v2 REST door's
/// (invalid input is 400 there, as the protocol has no 422).
pub(crate) fn http_status(e: &ApiError) -> u16 {
    match e.status() {
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => 400,
        s => s.as_u16(),
    }
}

/// An `ApiError` as a gRPC status, with the message the REST doors give
/// (naming the field), and `retry-after` where they send `Retry-After`.
pub(crate) fn status(e: &ApiError) -> Status {
    let message = match (e, e.field()) {
        (ApiError::Core(CoreError::Invalid { message, .. }), Some(f)) => format!("{f}: {message}"),
        _ => e.to_string(),
    };
    let mut s = Status::new(code(e), message);
    let retry = match e {
        ApiError::MemoryBudget(_) => Some(1),
        _ => e
            .core()
            .filter(|c| c.retryable())
            .map(crate::error::retry_after_secs),
    };
    if let Some(secs) = retry {
        s.metadata_mut()
            .insert("retry-after", MetadataValue::from(secs));
    }
    s
}

/// Refusals made before tonic sees a call (the memory budget's), as a
/// trailers-only gRPC response.
pub(crate) struct Grpc;

impl crate::error::ErrorFormat for Grpc {
    fn render(e: ApiError) -> axum::response::Response {
        status(&e).into_http()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_core_refusal_has_its_code() {
        let cases = [
            (
                ApiError::Core(CoreError::QueueFull(1)),
                Code::ResourceExhausted,
            ),
            (ApiError::Core(CoreError::NotReady), Code::Unavailable),
            (ApiError::Core(CoreError::Draining), Code::Unavailable),
            (
                ApiError::Core(CoreError::invalid("inputs[0]", "bad")),
                Code::InvalidArgument,
            ),
            (ApiError::Unauthorized("no key"), Code::Unauthenticated),
            (ApiError::Forbidden("admin only"), Code::PermissionDenied),
        ];
        for (e, want) in cases {
            assert_eq!(status(&e).code(), want, "{e}");
        }
        let s = status(&ApiError::Core(CoreError::QueueFull(1)));
        assert_eq!(
            s.metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let s = status(&ApiError::Core(CoreError::invalid(
            "inputs[0].shape",
            "bad",
        )));
        assert_eq!(s.message(), "inputs[0].shape: bad");
        assert_eq!(
            http_status(&ApiError::Core(CoreError::invalid("x", "y"))),
            400
        );
    }

    /// Each error's gRPC code agrees with the HTTP status it is counted
    /// under, so one alert on either covers both protocols.
    #[test]
    fn codes_agree_with_the_http_statuses() {
        let every = [
            ApiError::Core(CoreError::ModelNotFound("m".into())),
            ApiError::Core(CoreError::VersionNotFound("m".into(), "9".into())),
            ApiError::Core(CoreError::invalid("x", "y")),
            ApiError::Core(CoreError::QueueFull(1)),
            ApiError::Core(CoreError::NotReady),
            ApiError::Core(CoreError::Draining),
            ApiError::Core(CoreError::DeadlineExceeded(10)),
            ApiError::Core(CoreError::Backend(
                inferd_core::backend::BackendError::PoolClosed,
            )),
            ApiError::Core(CoreError::ModelBusy("m".into())),
            ApiError::Core(CoreError::LoadFailed("bad".into())),
            ApiError::Core(CoreError::Internal("bug")),
            ApiError::MalformedJson("x".into()),
            ApiError::UnsupportedMediaType("x".into()),
            ApiError::PayloadTooLarge(1),
            ApiError::BodyTimeout(1),
            ApiError::RouteNotFound("/x".into()),
            ApiError::MethodNotAllowed,
            ApiError::Unauthorized("no key"),
            ApiError::Forbidden("admin only"),
        ];
        for e in every {
            let want = match e.status().as_u16() {
                400 | 413 | 415 | 422 => Code::InvalidArgument,
                401 => Code::Unauthenticated,
                403 => Code::PermissionDenied,
                404 => Code::NotFound,
                405 => Code::Unimplemented,
                408 | 504 => Code::DeadlineExceeded,
                409 => Code::Aborted,
                429 => Code::ResourceExhausted,
                500 => Code::Internal,
                503 => Code::Unavailable,
                other => panic!("{e}: no gRPC code for HTTP {other}"),
            };
            assert_eq!(code(&e), want, "{e}");
        }
    }
}

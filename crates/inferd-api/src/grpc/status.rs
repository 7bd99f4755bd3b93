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

/// The gRPC code for an HTTP status.
pub(crate) fn code(status: StatusCode) -> Code {
    match status.as_u16() {
        400 | 413 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::Aborted,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        500 => Code::Internal,
        _ => Code::Unknown,
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
    let mut s = Status::new(code(e.status()), message);
    if matches!(e.status().as_u16(), 429 | 503) {
        s.metadata_mut()
            .insert("retry-after", MetadataValue::from_static("1"));
    }
    s
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
}

//! Request bodies: `JsonBody<T>`, a JSON extractor whose every failure is an
//! `ApiError`, and `RawBody` for the KServe v2 binary extension; both read the
//! body through `read_body`, which bounds it in size (413) and in time (408).
//!
//! axum's own `Json` answers some failures in plain text; ours checks the content
//! type (415), the size limit (413), the body's deadline (408), syntax (400,
//! trailing characters after the document included) and the shape of the
//! document (422, naming the offending field through `serde_path_to_error`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::error::Category;

use super::error::ApiError;
use super::state::AppState;
use inferd_core::CoreError;

pub(crate) struct JsonBody<T>(pub T);

/// When the request's header arrived, set by the accept loop (`listen`) on
/// every request: the body's deadline and the request's deadline run from
/// here, so a client that sends its body slowly spends its own time.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The header's arrival.
    pub at: Instant,
    /// Set when the body missed its deadline: the connection is closed after
    /// the 408, and counted as closed for that reason.
    pub body_timed_out: Arc<AtomicBool>,
}

impl Arrival {
    /// The arrival of a request, or now for one that came without (a router
    /// called directly, as in some tests).
    pub fn of(extensions: &axum::http::Extensions) -> Instant {
        extensions
            .get::<Arrival>()
            .map(|a| a.at)
            .unwrap_or_else(Instant::now)
    }
}

/// `read`, a step of reading a request's body, if it ends by the body's
/// deadline (`--body-read-timeout-ms` from the header's `arrival`); `None`
/// past it, with the connection marked to close as a body timeout. Without
/// an arrival (a router called directly), no deadline. Every path that reads
/// a body keeps it: the extractors, the memory budget's chunked reads, and the
/// drain after a refusal.
pub(crate) async fn by_body_deadline<T>(
    arrival: Option<&Arrival>,
    timeout: Duration,
    read: impl Future<Output = T>,
) -> Option<T> {
    let Some(a) = arrival else {
        return Some(read.await);
    };
    let deadline = tokio::time::Instant::from_std(a.at + timeout);
    match tokio::time::timeout_at(deadline, read).await {
        Ok(v) => Some(v),
        Err(_) => {
            a.body_timed_out.store(true, Ordering::Release);
            None
        }
    }
}

/// The body, within `--max-body-bytes` and `--body-read-timeout-ms`.
pub(crate) async fn read_body(req: Request, state: &Arc<AppState>) -> Result<Bytes, ApiError> {
    let limit = state.settings.max_body_bytes;
    let timeout = state.settings.body_read_timeout;
    let arrival = req.extensions().get::<Arrival>().cloned();
    let read = Bytes::from_request(req, state);
    let Some(res) = by_body_deadline(arrival.as_ref(), timeout, read).await else {
        return Err(ApiError::BodyTimeout(timeout.as_millis() as u64));
    };
    res.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::MalformedJson(r.body_text())
        }
    })
}

/// The raw body for handlers that parse it themselves; its failure is kept
/// for the handler to answer in its protocol.
pub(crate) struct RawBody(pub Result<Bytes, ApiError>);

impl FromRequest<Arc<AppState>> for RawBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        Ok(RawBody(read_body(req, state).await))
    }
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json(ct) {
            return Err(ApiError::UnsupportedMediaType(if ct.is_empty() {
                "missing Content-Type; send `Content-Type: application/json`".into()
            } else {
                format!("Content-Type `{ct}` is not supported; send `application/json`")
            }));
        }
        let bytes = read_body(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// Deserializes a JSON document: syntax errors are 400, a document of the wrong
/// shape is 422 naming the field (`inputs[0].shape`). Anything but whitespace
/// after the document is a syntax error: `{...}garbage` is not JSON.
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))] // exported by `testing`
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Tracking the path costs a wrapper per value (a tenth of a miss-path
    // request's CPU): valid documents go without it, and only a failed one is
    // parsed again to name the field. Both parsers see the same bytes, so the
    // second fails the same way.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut *de) {
        Ok(v) => {
            de.end()
                .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
            Ok(v)
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                Category::Data => Err(ApiError::Core(CoreError::Invalid {
                    field: (path != ".").then_some(path),
                    message: inner.to_string(),
                })),
                // serde reads a struct from an array too, and an element too
                // many is reported as "trailing characters", a syntax error,
                // though the document is JSON of the wrong shape: well-formed
                // documents are never 400.
                _ if serde_json::from_slice::<IgnoredAny>(bytes).is_ok() => {
                    Err(ApiError::Core(CoreError::Invalid {
                        field: (path != ".").then_some(path),
                        message: format!("wrong shape: {inner}"),
                    }))
                }
                _ => Err(ApiError::MalformedJson(inner.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_characters_are_malformed_json() {
        let ok: Result<serde_json::Value, _> = parse(b"{\"a\": 1} \n");
        assert!(ok.is_ok());
        for bad in [&b"{\"a\": 1}garbage"[..], b"{\"a\": 1}{}", b"[1] 2"] {
            let e = parse::<serde_json::Value>(bad).unwrap_err();
            assert_eq!(e.code(), "malformed_json", "{e}");
        }
        // A document of the wrong shape is still a 422 naming the field.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            n: u32,
        }
        let e = parse::<T>(b"{\"n\": \"x\"}").unwrap_err();
        assert_eq!((e.code(), e.field()), ("invalid_input", Some("n")));
    }

    #[test]
    fn json_content_types() {
        assert!(super::is_json("application/json"));
        assert!(super::is_json("application/json; charset=utf-8"));
        assert!(super::is_json("application/vnd.api+json"));
        assert!(!super::is_json("text/plain"));
        assert!(!super::is_json(""));
    }
}

//! `JsonBody<T>`: a JSON extractor whose every failure is an `ApiError`.
//!
//! axum's own `Json` answers some failures in plain text; ours checks the content
//! type (415), the size limit (413), syntax (400, trailing characters after the
//! document included) and the shape of the document (422, naming the offending
//! field through `serde_path_to_error`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use super::error::ApiError;
use super::state::AppState;
use crate::core::CoreError;

pub struct JsonBody<T>(pub T);

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
        let limit = state.config.max_body_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::MalformedJson(r.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Deserializes a JSON document: syntax errors are 400, a document of the wrong
/// shape is 422 naming the field (`inputs[0].shape`). Anything but whitespace
/// after the document is a syntax error: `{...}garbage` is not JSON.
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

//! `JsonBody<T>`: a JSON extractor whose every failure is an `ApiError`.
//!
//! axum's own `Json` answers some failures in plain text; ours checks the content
//! type (415), the size limit (413), syntax (400) and the shape of the document
//! (422, naming the offending field through `serde_path_to_error`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use super::error::ApiError;
use crate::server::AppState;

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
/// shape is 422 naming the field (`inputs[0].shape`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                Category::Data => Err(ApiError::Invalid {
                    field: (path != ".").then_some(path),
                    message: inner.to_string(),
                }),
                _ => Err(ApiError::MalformedJson(inner.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_content_types() {
        assert!(super::is_json("application/json"));
        assert!(super::is_json("application/json; charset=utf-8"));
        assert!(super::is_json("application/vnd.api+json"));
        assert!(!super::is_json("text/plain"));
        assert!(!super::is_json(""));
    }
}

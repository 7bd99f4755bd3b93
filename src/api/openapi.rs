//! The OpenAPI 3.1 description of the whole HTTP API, generated from the route
//! annotations (utoipa): `GET /openapi.json` serves it, `docs/openapi.json` holds
//! a committed copy that a test keeps equal to it, and the conformance suite
//! (schemathesis) checks the live server against it.

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "inferd",
        description = "Model-inference server for ONNX models. Two protocols reach the same models \
            through one pipeline (admission, cache, dynamic batching, prediction log): inferd's own \
            JSON API (`/predict`, `/v1/...`) and the KServe v2 / Open Inference Protocol (`/v2/...`), \
            with Triton's binary tensor extension. When `INFERD_API_KEYS` is set, the routes marked \
            with the `bearer` scheme need `Authorization: Bearer <key>`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "v1", description = "inferd's JSON API: instances in, predictions out"),
        (name = "kserve-v2", description = "KServe v2 / Open Inference Protocol (REST)"),
        (name = "health", description = "Probes, metrics and this document"),
    ),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the keys in INFERD_API_KEYS / INFERD_API_KEYS_FILE",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's skeleton; the routes add their paths and schemas.
pub fn base() -> Document {
    ApiDoc::openapi()
}

/// The complete document, built once.
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(|| super::api_routes().split_for_parts().1)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 description of this API", body = Object)))]
pub async fn openapi_json() -> Json<&'static Document> {
    Json(document())
}

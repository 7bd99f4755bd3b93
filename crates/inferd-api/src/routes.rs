//! The route table: every route with its OpenAPI description, in the order the
//! document lists them. The router (`super::router`) and the document come from
//! these same lists, so `/openapi.json` describes exactly the routes served.

use std::sync::{Arc, OnceLock};

use axum::Json;
use utoipa::openapi::OpenApi as Document;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::state::AppState;
use super::{health, openapi, quality, v1, v2};

pub(super) type Routes = OpenApiRouter<Arc<AppState>>;

/// inferd's JSON API and the probes.
pub(super) fn v1_routes() -> Routes {
    OpenApiRouter::new()
        .routes(routes!(v1::predict_any))
        .routes(routes!(v1::list_models))
        .routes(routes!(v1::get_model))
        .routes(routes!(v1::predict_named))
        .routes(routes!(v1::predict_versioned))
        .routes(routes!(quality::feedback))
        .routes(routes!(quality::get_quality))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
}

/// The API's own description.
pub(super) fn doc_routes() -> Routes {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(reference))
}

/// Every route with its description, in the order the document lists them:
/// `document()` is built from this, so the committed
/// `docs/openapi.json` comes from the same lists as the router.
pub(crate) fn api_routes() -> Routes {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(v1_routes())
        .nest("/v2", v2::routes())
        .merge(doc_routes())
}

/// The complete document, built once.
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(|| api_routes().split_for_parts().1)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 description of this API", body = Object)))]
pub(crate) async fn openapi_json() -> Json<&'static Document> {
    Json(document())
}

/// This API's reference as one self-contained HTML page (no scripts, fonts or
/// styles from elsewhere, so it works on an air-gapped network), rendered from
/// the same document.
#[utoipa::path(get, path = "/docs", tag = "health",
    responses((status = 200, description = "HTML reference of this API",
        content_type = "text/html", body = String)))]
pub(crate) async fn reference() -> axum::response::Html<&'static str> {
    static PAGE: OnceLock<String> = OnceLock::new();
    axum::response::Html(PAGE.get_or_init(|| openapi::render(document())))
}

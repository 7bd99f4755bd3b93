//! The KServe v2 / Open Inference Protocol front door (the REST API of Triton,
//! MLServer and KServe), so their clients, `tritonclient` among them, work
//! against inferd unchanged. Mounted as a router nested under `/v2` with its own
//! error format, so every refusal under `/v2` (unknown route, wrong method,
//! missing key) is `{"error": "..."}`.
//!
//! Parts: `wire` (the documents), `codec` (Triton's binary tensor framing, pure
//! functions), `error` (the protocol's error body and statuses), `infer` (tensors
//! to instances and predictions back to tensors); this file holds the metadata
//! and readiness routes and the router. `repository` is Triton's model
//! repository extension (index, load, unload).

#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))] // exported by `testing`
pub mod codec;
pub(crate) mod error;
pub(crate) mod infer;
pub(crate) mod repository;
pub(crate) mod wire;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) use error::V2;
use error::{ModelRouteErrors, V2Error, V2Failure};
use wire::{Live, ModelMetadata, ModelReady, Ready, ServerMetadata, TensorMetadata};

use crate::state::AppState;
use inferd_core::deployment::Deployment;
use inferd_core::lifecycle::Phase;
use inferd_core::manifest::TensorSpec;
use inferd_core::CoreError;

/// The protocol's routes, relative to `/v2`.
pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(server_metadata))
        .routes(routes!(server_live))
        .routes(routes!(server_ready))
        .routes(routes!(model_metadata))
        .routes(routes!(model_version_metadata))
        .routes(routes!(model_ready))
        .routes(routes!(model_version_ready))
        .routes(routes!(infer::infer))
        .routes(routes!(infer::infer_version))
        .routes(routes!(repository::index))
        .routes(routes!(repository::load))
        .routes(routes!(repository::unload))
}

fn datatype(dtype: &str) -> &'static str {
    match dtype {
        "string" => "BYTES",
        "float32" => "FP32",
        "float64" => "FP64",
        "int64" => "INT64",
        "int32" => "INT32",
        "bool" => "BOOL",
        _ => "UNKNOWN",
    }
}

fn tensors(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|t| TensorMetadata {
            name: t.name.clone(),
            datatype: datatype(&t.dtype).into(),
            shape: t.shape.clone(),
        })
        .collect()
}

/// The current deployment, for the metadata routes (they answer while draining).
pub(crate) fn deployment(st: &AppState) -> Result<Arc<Deployment>, CoreError> {
    st.lifecycle.deployment().ok_or(CoreError::NotReady)
}

pub(crate) fn metadata(
    deployment: &Deployment,
    name: String,
    version: Option<String>,
) -> Result<ModelMetadata, CoreError> {
    let repo = deployment.repository();
    let model = deployment.model(&name, version.as_deref())?;
    let versions = match version {
        Some(v) => vec![v],
        None => repo
            .versions(&model.manifest.name)?
            .values()
            .rev()
            .map(|m| m.manifest.version.clone())
            .collect(),
    };
    let m = &model.manifest;
    Ok(ModelMetadata {
        name: m.name.clone(),
        versions,
        platform: "onnx_onnxv1".into(),
        inputs: tensors(&m.inputs),
        outputs: tensors(&m.outputs),
    })
}

/// Server metadata.
#[utoipa::path(get, path = "/", tag = "kserve-v2", security(("bearer" = [])),
    responses(
        (status = 200, description = "Name, version and protocol extensions", body = ServerMetadata),
        (status = 401, description = "Missing or wrong API key (when INFERD_API_KEYS is set)", body = V2Error),
    ))]
pub(crate) async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "inferd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into(), "model_repository".into()],
    })
}

/// Server liveness.
#[utoipa::path(get, path = "/health/live", tag = "kserve-v2",
    responses((status = 200, description = "The server is alive", body = Live)))]
pub(crate) async fn server_live() -> Json<Live> {
    Json(Live { live: true })
}

/// Server readiness: every model loaded and warmed up, not draining.
#[utoipa::path(get, path = "/health/ready", tag = "kserve-v2",
    responses(
        (status = 200, description = "Ready for inference", body = Ready),
        (status = 503, description = "Starting or draining", body = V2Error),
    ))]
pub(crate) async fn server_ready(
    State(st): State<Arc<AppState>>,
) -> Result<Json<Ready>, V2Failure> {
    st.lifecycle.admit()?;
    Ok(Json(Ready { ready: true }))
}

/// Metadata of a model (its latest version's tensors, every version listed).
#[utoipa::path(get, path = "/models/{name}", tag = "kserve-v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    responses((status = 200, description = "Inputs and outputs with datatype and shape", body = ModelMetadata),
        ModelRouteErrors))]
pub(crate) async fn model_metadata(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, V2Failure> {
    let d = deployment(&st)?;
    Ok(Json(metadata(&d, name, None)?))
}

/// Metadata of one model version.
#[utoipa::path(get, path = "/models/{name}/versions/{version}", tag = "kserve-v2",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier"),
           ("version" = String, Path, description = "Model version", example = "1")),
    responses((status = 200, description = "Inputs and outputs with datatype and shape", body = ModelMetadata),
        ModelRouteErrors))]
pub(crate) async fn model_version_metadata(
    State(st): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, V2Failure> {
    let d = deployment(&st)?;
    Ok(Json(metadata(&d, name, Some(version))?))
}

pub(crate) fn readiness(
    st: &AppState,
    name: String,
    version: Option<String>,
) -> Result<ModelReady, CoreError> {
    let d = deployment(st)?;
    let model = d.model(&name, version.as_deref())?;
    let phase = st.lifecycle.phase();
    if phase == Phase::Draining {
        return Err(CoreError::Draining);
    }
    Ok(ModelReady {
        name: model.manifest.name.clone(),
        ready: phase == Phase::Serving,
    })
}

/// Whether a model can serve inferences now.
#[utoipa::path(get, path = "/models/{name}/ready", tag = "kserve-v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    responses((status = 200, description = "The model is loaded and warmed up", body = ModelReady),
        ModelRouteErrors))]
pub(crate) async fn model_ready(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ModelReady>, V2Failure> {
    Ok(Json(readiness(&st, name, None)?))
}

/// Whether one model version can serve inferences now.
#[utoipa::path(get, path = "/models/{name}/versions/{version}/ready", tag = "kserve-v2",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier"),
           ("version" = String, Path, description = "Model version", example = "1")),
    responses((status = 200, description = "The model is loaded and warmed up", body = ModelReady),
        ModelRouteErrors))]
pub(crate) async fn model_version_ready(
    State(st): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelReady>, V2Failure> {
    Ok(Json(readiness(&st, name, Some(version))?))
}

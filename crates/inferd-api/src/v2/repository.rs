//! Triton's model repository extension: the index, load and unload, in
//! Triton's request and response shapes, so `tritonclient`'s
//! `get_model_repository_index`, `load_model` and `unload_model` work
//! unchanged. The routes translate to `core::control`; the auth layer lets only
//! admin keys through whenever keys are configured (`auth::ADMIN_PREFIX`), and
//! `INFERD_MODEL_CONTROL` decides whether load and unload run at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{V2Error, V2Failure};
use crate::error::ApiError;
use crate::extract::parse;
use crate::state::AppState;
use inferd_core::control::{IndexEntry, ModelControl, Outcome};
use inferd_core::policy::Policy;
use inferd_core::CoreError;

/// `POST /v2/repository/index` body (optional: tritonclient sends none).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct IndexRequest {
    /// Only versions that are ready.
    #[serde(default)]
    pub ready: bool,
}

/// One model version in the index.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IndexItem {
    #[schema(example = "text-classifier")]
    pub name: String,
    #[schema(example = "2")]
    pub version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    #[schema(example = "READY")]
    pub state: String,
    /// Why it is not ready (empty when it is).
    pub reason: String,
}

/// Load body (optional). `parameters.config` is a JSON string: Triton's
/// `version_policy`, with inferd's `default_version` and `canary`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct LoadRequest {
    #[serde(default)]
    #[schema(value_type = Object, example = json!({"config": "{\"version_policy\": {\"specific\": {\"versions\": [1, 2]}}, \"default_version\": 1, \"canary\": {\"version\": 2, \"weight\": 0.1}}"}))]
    pub parameters: BTreeMap<String, Value>,
}

/// Unload body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct UnloadRequest {
    /// Accepted for Triton's clients; inferd models have no dependents.
    #[serde(default)]
    #[schema(value_type = Object)]
    #[allow(dead_code)] // parsed so that a body of the right shape is accepted
    pub parameters: BTreeMap<String, Value>,
}

/// What a load or unload changed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ControlResult {
    #[schema(example = "text-classifier")]
    pub name: String,
    /// Versions that passed their checks and now serve.
    pub loaded: Vec<String>,
    /// Versions taken out of service.
    pub unloaded: Vec<String>,
}

/// The failures of the repository routes.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used
pub(crate) enum RepositoryErrors {
    #[response(
        status = 400,
        description = "Invalid body or config, or a version failed verification, warm-up or its golden gate (the serving versions stay)"
    )]
    Invalid(#[to_schema] V2Error),
    #[response(
        status = 401,
        description = "Missing or wrong admin key (when any key is configured)"
    )]
    Unauthorized(#[to_schema] V2Error),
    #[response(
        status = 403,
        description = "An inference key, or model control off (INFERD_MODEL_CONTROL)"
    )]
    Forbidden(#[to_schema] V2Error),
    #[response(status = 404, description = "No such model directory, or not loaded")]
    NotFound(#[to_schema] V2Error),
    #[response(
        status = 409,
        description = "A load or unload of this model is running"
    )]
    Busy(#[to_schema] V2Error),
    #[response(status = 503, description = "Still starting, or draining")]
    Unavailable(#[to_schema] V2Error),
}

fn body_of<T: Default + serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    max: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(max),
        _ => ApiError::MalformedJson(r.body_text()),
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(&body)
}

pub(crate) fn control(st: &AppState) -> Result<Arc<ModelControl>, CoreError> {
    st.control.get().cloned().ok_or(CoreError::NotReady)
}

pub(crate) fn enabled(st: &AppState) -> Result<(), ApiError> {
    if st.settings.model_control {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "model control is off: set INFERD_MODEL_CONTROL=on, or configure admin keys",
        ))
    }
}

fn result(name: String, o: Outcome) -> Json<ControlResult> {
    let s = |v: Vec<u64>| v.into_iter().map(|v| v.to_string()).collect();
    Json(ControlResult {
        name,
        loaded: s(o.loaded),
        unloaded: s(o.unloaded),
    })
}

/// Every model version in the models directory, with its state.
#[utoipa::path(post, path = "/repository/index", tag = "kserve-v2", security(("bearer" = [])),
    request_body(content = Option<IndexRequest>, description = "Optional filter"),
    responses((status = 200, description = "Every version with READY, LOADING or UNAVAILABLE and the reason", body = [IndexItem]),
        RepositoryErrors))]
pub(crate) async fn index(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<IndexItem>>, V2Failure> {
    let req: IndexRequest = body_of(body, st.settings.max_body_bytes)?;
    let entries = control(&st)?.index().await?;
    Ok(Json(
        entries
            .into_iter()
            .filter(|e| !req.ready || e.state.name() == "READY")
            .map(item)
            .collect(),
    ))
}

pub(crate) fn item(e: IndexEntry) -> IndexItem {
    IndexItem {
        name: e.name,
        version: e.version.to_string(),
        state: e.state.name().into(),
        reason: e.reason,
    }
}

/// Loads a model's versions (verified, warmed up and gated by their golden
/// files beside the serving ones, then swapped in at once), or applies a new
/// version policy. Answers when the new versions serve.
#[utoipa::path(post, path = "/repository/models/{name}/load", tag = "kserve-v2",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    request_body(content = Option<LoadRequest>, description = "Optional config override"),
    responses((status = 200, description = "The versions the policy selects serve", body = ControlResult),
        RepositoryErrors))]
pub(crate) async fn load(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ControlResult>, V2Failure> {
    enabled(&st)?;
    let req: LoadRequest = body_of(body, st.settings.max_body_bytes)?;
    let policy = policy_of(req.parameters)?;
    let outcome = control(&st)?.load(&name, policy).await?;
    Ok(result(name, outcome))
}

/// The version policy a load's parameters carry (`config`), if any.
pub(crate) fn policy_of(parameters: BTreeMap<String, Value>) -> Result<Option<Policy>, ApiError> {
    let mut policy = None;
    for (key, value) in parameters {
        match (key.as_str(), value) {
            ("config", Value::String(text)) => {
                policy = Some(
                    Policy::from_json(&text)
                        .map_err(|m| CoreError::invalid("parameters.config", m))?,
                );
            }
            ("config", _) => {
                return Err(CoreError::invalid(
                    "parameters.config",
                    "must be a string holding a JSON object",
                )
                .into())
            }
            (k, _) if k.starts_with("file:") => {
                return Err(CoreError::invalid(
                    format!("parameters.{k}"),
                    "file overrides are not supported: put the version directory in the models directory",
                )
                .into())
            }
            // Other parameters (Triton's load options) change nothing here.
            _ => {}
        }
    }
    Ok(policy)
}

/// Takes every version of a model out of service; requests already accepted
/// finish on it.
#[utoipa::path(post, path = "/repository/models/{name}/unload", tag = "kserve-v2",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    request_body(content = Option<UnloadRequest>, description = "Optional parameters"),
    responses((status = 200, description = "The model no longer takes requests", body = ControlResult),
        RepositoryErrors))]
pub(crate) async fn unload(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ControlResult>, V2Failure> {
    enabled(&st)?;
    let _: UnloadRequest = body_of(body, st.settings.max_body_bytes)?;
    let outcome = control(&st)?.unload(&name).await?;
    Ok(result(name, outcome))
}

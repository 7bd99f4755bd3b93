//! inferd's own JSON API: `POST /predict` (model named in the body),
//! `POST /v1/models/{name}[/versions/{version}]/predict`, and the model listing.
//!
//! Instances go in as JSON values, predictions come back in the same order with a
//! per-instance `cached` flag. Errors are `{"error": {"code", "message", "field"?}}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::serve::{serve_prediction, Answer, Caller, Prepared};
use super::state::AppState;
use crate::v2::repository::{item, IndexItem};
use inferd_core::deployment::Deployment;
use inferd_core::instances::Instances;
use inferd_core::lifecycle::Phase;
use inferd_core::manifest::{BatchingSection, CacheSection, TensorSpec, TimeSeriesSection};
use inferd_core::pipeline::Predicted;
use inferd_core::repository::Model;
use inferd_core::task::Prediction;
use inferd_core::CoreError;

// The body of the three predict routes. (A doc comment would become the
// schema's description in the OpenAPI document.)
#[allow(missing_docs)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))] // exported by `testing`
pub struct PredictRequest {
    /// The model to run. Required on `/predict`; on the `/v1/models/{name}` routes
    /// it may be left out, and must match the path when given.
    #[serde(default)]
    #[schema(example = "text-classifier")]
    pub model: Option<String>,
    /// A model version; default the latest.
    #[serde(default)]
    pub version: Option<String>,
    /// What to predict, one entry per instance. `text-classifier`: a string
    /// (version 2 and later: an email message, raw RFC 822 source or plain text).
    /// `lstm-forecaster`: 26 rows of 1 number (weekly CO2 in ppm, oldest first;
    /// `null` for a missing reading where the model fills gaps).
    // Each instance is kept as its JSON text until the model's task reads it,
    // so a window goes straight into the batch without a tree of values.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Value>>, nullable = false, min_items = 1, example = json!(["Subject: hi\n\nlunch at noon?"]))]
    pub instances: Option<Vec<Box<RawValue>>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PredictResponse<'a> {
    pub model: &'a str,
    pub version: &'a str,
    /// One per instance, in order.
    #[schema(value_type = Vec<PredictionSchema>)]
    pub predictions: &'a [Prediction],
    /// Per instance: whether the prediction came from the cache.
    pub cached: &'a [bool],
    /// Per instance, how many `null` readings the server filled in (models
    /// whose manifest says `missing = "interpolate"`; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filled: Option<&'a [usize]>,
}

// `inferd_core::task::Prediction` in the API document, under its name: the
// core knows no OpenAPI, so its wire shape is described here.
/// One prediction: a classifier's most probable label with every label's
/// probability, or a forecaster's next value of each target.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = Prediction)]
#[allow(dead_code)] // only its description is used
pub(crate) enum PredictionSchema {
    /// Classifiers: the most probable label, and every label's probability.
    Label {
        label: String,
        scores: std::collections::BTreeMap<String, f32>,
    },
    /// Forecasters: the next value of each target, by target name.
    Forecast {
        forecast: std::collections::BTreeMap<String, f32>,
    },
}

/// The JSON API's answer: the prediction list, or the `ErrorBody` shape.
struct V1;

impl Answer<()> for V1 {
    type Reply = Response;

    fn ok(self, model: &Model, done: &Predicted, _: ()) -> Response {
        Json(PredictResponse {
            model: &model.manifest.name,
            version: &model.manifest.version,
            predictions: &done.predictions,
            cached: &done.cached,
            filled: done.filled.as_deref(),
        })
        .into_response()
    }

    fn err(self, e: ApiError) -> Response {
        e.into_response()
    }
}

/// Resolves the model from the path (or the body) and takes the instances.
fn prepare(
    deployment: &Deployment,
    request_id: &str,
    path_name: Option<String>,
    path_version: Option<String>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Prepared<()> {
    let JsonBody(req) = body?;
    let name = path_name
        .clone()
        .or_else(|| req.model.clone())
        .ok_or_else(|| ApiError::invalid("model", "required: the name of the model to run"))?;
    if let (Some(_), Some(body_model)) = (&path_name, &req.model) {
        if body_model != &name {
            return Err(ApiError::invalid(
                "model",
                format!("body names model `{body_model}` but the path names `{name}`"),
            ));
        }
    }
    let version = path_version.or(req.version);
    let target = deployment.resolve(&name, version.as_deref(), Some(request_id))?;
    let instances = req
        .instances
        .map(|i| (Instances::Raw(i), ()))
        .ok_or_else(|| {
            ApiError::invalid("instances", "required: an array of instances to predict")
        });
    Ok((target, instances))
}

/// Every answer of the three predict routes, documented once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used
pub(crate) enum PredictResponses {
    #[response(
        status = 200,
        description = "Predictions, in the order of the instances"
    )]
    Ok(#[to_schema] PredictResponse<'static>),
    #[response(status = 400, description = "Malformed JSON")]
    MalformedJson(#[to_schema] ErrorBody<'static>),
    #[response(
        status = 401,
        description = "Missing or wrong API key (when INFERD_API_KEYS is set)"
    )]
    Unauthorized(#[to_schema] ErrorBody<'static>),
    #[response(status = 404, description = "No such model or version")]
    NotFound(#[to_schema] ErrorBody<'static>),
    #[response(status = 413, description = "Body over INFERD_MAX_BODY_BYTES")]
    TooLarge(#[to_schema] ErrorBody<'static>),
    #[response(status = 415, description = "Content-Type is not JSON")]
    NotJson(#[to_schema] ErrorBody<'static>),
    #[response(
        status = 422,
        description = "Invalid request: `field` names what is wrong"
    )]
    Invalid(#[to_schema] ErrorBody<'static>),
    #[response(
        status = 429,
        description = "At capacity (`queue_full`, `overloaded`: the model's queue is at its \
            adaptive limit; `memory_budget`): retry after `Retry-After` seconds"
    )]
    QueueFull(#[to_schema] ErrorBody<'static>),
    #[response(status = 503, description = "Starting or draining")]
    Unavailable(#[to_schema] ErrorBody<'static>),
    #[response(
        status = 504,
        description = "Deadline (INFERD_REQUEST_TIMEOUT_MS) passed"
    )]
    Deadline(#[to_schema] ErrorBody<'static>),
}

/// Predict with the model named in the body.
#[utoipa::path(post, path = "/predict", tag = "v1", request_body = PredictRequest,
    security(("bearer" = [])),
    responses(PredictResponses))]
pub(crate) async fn predict_any(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Response {
    serve_prediction(st, caller, |d, id| prepare(d, id, None, None, body), V1).await
}

/// Predict with the latest version of a model.
#[utoipa::path(post, path = "/v1/models/{name}/predict", tag = "v1", request_body = PredictRequest,
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    security(("bearer" = [])),
    responses(PredictResponses))]
pub(crate) async fn predict_named(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Response {
    serve_prediction(
        st,
        caller,
        |d, id| prepare(d, id, Some(name), None, body),
        V1,
    )
    .await
}

/// Predict with one version of a model.
#[utoipa::path(post, path = "/v1/models/{name}/versions/{version}/predict", tag = "v1",
    request_body = PredictRequest,
    params(("name" = String, Path, description = "Model name", example = "text-classifier"),
           ("version" = String, Path, description = "Model version", example = "1")),
    security(("bearer" = [])),
    responses(PredictResponses))]
pub(crate) async fn predict_versioned(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Response {
    serve_prediction(
        st,
        caller,
        |d, id| prepare(d, id, Some(name), Some(version), body),
        V1,
    )
    .await
}

/// One model version as `/v1/models` describes it.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelDescription {
    pub name: String,
    pub version: String,
    /// `ready`, or `loading` before warm-up ends.
    pub status: String,
    /// Whether requests that name no version go here (all but the canary's share).
    pub default: bool,
    /// The share of the requests naming no version that this version takes as
    /// the model's canary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<f64>,
    /// `text-classification` or `time-series-forecast`.
    pub task: String,
    pub description: String,
    /// What one instance must be.
    pub instance: String,
    /// The graph's inputs: name, dtype, shape (-1: any size), meaning.
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<TensorSpec>,
    #[schema(value_type = Vec<Object>)]
    pub outputs: Vec<TensorSpec>,
    #[schema(value_type = Object)]
    pub batching: BatchingSection,
    #[schema(value_type = Object)]
    pub cache: CacheSection,
    /// The graph's format (`onnx` or `torchscript`): which runtime runs it.
    pub format: String,
    /// The sha256 the manifest pins the graph file to.
    pub graph_sha256: String,
    /// Held-out quality figures from training.
    #[schema(value_type = Object)]
    pub metrics: toml::Table,
    /// Class labels (classifiers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_text_bytes: Option<usize>,
    /// Window, features, targets and units (forecasters).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub timeseries: Option<TimeSeriesSection>,
}

fn describe(d: &Deployment, model: &Model, ready: bool) -> ModelDescription {
    let m = &model.manifest;
    let routing = d.routing(&m.name);
    let number = m.version.parse::<u64>().ok();
    let default = match routing {
        Some(r) => number == Some(r.default),
        None => {
            d.repository()
                .get(&m.name, None)
                .ok()
                .map(|x| &x.manifest.version)
                == Some(&m.version)
        }
    };
    ModelDescription {
        name: m.name.clone(),
        version: m.version.clone(),
        status: if ready { "ready" } else { "loading" }.into(),
        default,
        canary_weight: routing
            .and_then(|r| r.canary)
            .filter(|(v, _)| Some(*v) == number)
            .map(|(_, w)| w),
        task: model.task.name().into(),
        description: m.description.clone(),
        instance: model.task.instance_doc(),
        inputs: m.inputs.clone(),
        outputs: m.outputs.clone(),
        batching: m.batching.clone(),
        cache: m.cache.clone(),
        format: m.format.name().into(),
        graph_sha256: m.graph_sha256.clone(),
        metrics: m.metrics.clone(),
        labels: m.text.as_ref().map(|t| t.labels.clone()),
        max_text_bytes: m.text.as_ref().map(|t| t.max_text_bytes),
        timeseries: m.timeseries.clone(),
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ModelList {
    /// Whether warm-up has finished.
    pub ready: bool,
    /// The versions serving.
    pub models: Vec<ModelDescription>,
    /// Every version in the models directory or known to model control, with
    /// READY, LOADING or UNAVAILABLE and the reason (what
    /// `POST /v2/repository/index` answers).
    pub repository: Vec<IndexItem>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ModelVersions {
    pub name: String,
    /// The version a request that names none gets (the policy's default
    /// version, the highest unless set; a canary takes a share, see
    /// `canary_weight`).
    pub latest: Option<String>,
    /// Newest first.
    pub versions: Vec<ModelDescription>,
}

/// Every loaded model version.
#[utoipa::path(get, path = "/v1/models", tag = "v1", security(("bearer" = [])),
    responses(
        (status = 200, description = "The models (empty while loading)", body = ModelList),
        (status = 401, description = "Missing or wrong API key (when INFERD_API_KEYS is set)", body = ErrorBody),
    ))]
pub(crate) async fn list_models(
    State(st): State<Arc<AppState>>,
) -> Result<Json<ModelList>, ApiError> {
    let ready = st.lifecycle.phase() == Phase::Serving;
    let models = st
        .lifecycle
        .deployment()
        .map(|d| {
            d.repository()
                .iter()
                .map(|m| describe(&d, m, ready))
                .collect()
        })
        .unwrap_or_default();
    let repository = match st.control.get() {
        Some(c) => c.index().await?.into_iter().map(item).collect(),
        None => Vec::new(),
    };
    Ok(Json(ModelList {
        ready,
        models,
        repository,
    }))
}

/// The versions of one model.
#[utoipa::path(get, path = "/v1/models/{name}", tag = "v1", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    responses(
        (status = 200, description = "The model's versions, newest first", body = ModelVersions),
        (status = 401, description = "Missing or wrong API key (when INFERD_API_KEYS is set)", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 503, description = "Models still loading", body = ErrorBody),
    ))]
pub(crate) async fn get_model(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ModelVersions>, ApiError> {
    let deployment = st.lifecycle.deployment().ok_or(CoreError::NotReady)?;
    let versions = deployment.repository().versions(&name)?;
    let ready = st.lifecycle.phase() == Phase::Serving;
    let list: Vec<ModelDescription> = versions
        .values()
        .rev()
        .map(|m| describe(&deployment, m, ready))
        .collect();
    Ok(Json(ModelVersions {
        latest: list.iter().find(|v| v.default).map(|v| v.version.clone()),
        name,
        versions: list,
    }))
}

//! The KServe v2 / Open Inference Protocol front door (the REST API of Triton,
//! MLServer and KServe), so their clients, `tritonclient` among them, work
//! against inferd unchanged.
//!
//! Inference requests carry named, typed, shaped tensors instead of instances.
//! This module turns the one input tensor into per-instance JSON values, hands
//! them to the same `serve_prediction` path as `/predict` (admission, cache,
//! batching, log, metrics), and turns the predictions back into the model's
//! output tensors. It also speaks Triton's binary tensor extension, which
//! `tritonclient` uses by default: a JSON header of `Inference-Header-Content-Length`
//! bytes followed by raw little-endian tensor data (`binary_data_size` per
//! input; `binary_data` / `binary_data_output` to get outputs back that way).
//! Errors are `{"error": "<message>"}`, as the protocol says.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{serve_prediction, Answer, ApiError, Caller, Prepared};
use crate::pipeline::Predicted;
use crate::repository::{Model, Repository};
use crate::server::AppState;
use crate::task::{Prediction, Task};

const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

pub fn is_v2_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// The protocol's error document.
#[derive(Serialize, ToSchema)]
pub struct V2Error {
    #[schema(example = "input `text`: expected datatype BYTES, got FP32")]
    pub error: String,
}

/// An `ApiError` in the protocol's shape: `{"error": "..."}`. Invalid input is
/// 400 here (the protocol has no 422); the other statuses and headers
/// (`Retry-After`, `WWW-Authenticate`) are the JSON API's.
pub fn error_response(e: ApiError) -> Response {
    let status = match e.status() {
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            StatusCode::BAD_REQUEST
        }
        s => s,
    };
    let message = match &e {
        ApiError::Invalid {
            field: Some(f),
            message,
        } => format!("{f}: {message}"),
        e => e.to_string(),
    };
    let mut resp = (status, Json(V2Error { error: message })).into_response();
    e.set_headers(resp.headers_mut());
    resp
}

/// An `ApiError` rendered in the protocol's shape, for handlers returning `Result`.
pub struct V2Failure(ApiError);

impl IntoResponse for V2Failure {
    fn into_response(self) -> Response {
        error_response(self.0)
    }
}

impl From<ApiError> for V2Failure {
    fn from(e: ApiError) -> Self {
        V2Failure(e)
    }
}

// ---- server and model metadata ------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    #[schema(example = "inferd")]
    pub name: String,
    pub version: String,
    /// Protocol extensions: `binary_tensor_data` (Triton's binary tensor data).
    pub extensions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Live {
    pub live: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    /// `BYTES`, `FP32`, `INT64`, ...
    pub datatype: String,
    /// -1 marks a dimension of any size (the batch).
    pub shape: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    #[schema(example = "onnx_onnxv1")]
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// The failures of the model metadata and readiness routes.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used
pub enum ModelRouteErrors {
    #[response(
        status = 401,
        description = "Missing or wrong API key (when INFERD_API_KEYS is set)"
    )]
    Unauthorized(#[to_schema] V2Error),
    #[response(status = 404, description = "No such model or version")]
    NotFound(#[to_schema] V2Error),
    #[response(status = 503, description = "Still loading, or draining")]
    Unavailable(#[to_schema] V2Error),
}

/// The failures only the infer routes add to `ModelRouteErrors`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used
pub enum InferErrors {
    #[response(status = 400, description = "Invalid request")]
    Invalid(#[to_schema] V2Error),
    #[response(status = 413, description = "Body over INFERD_MAX_BODY_BYTES")]
    TooLarge(#[to_schema] V2Error),
    #[response(
        status = 429,
        description = "Queue full: retry after `Retry-After` seconds"
    )]
    QueueFull(#[to_schema] V2Error),
    #[response(
        status = 504,
        description = "Deadline (INFERD_REQUEST_TIMEOUT_MS) passed"
    )]
    Deadline(#[to_schema] V2Error),
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

fn tensors(specs: &[crate::repository::TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|t| TensorMetadata {
            name: t.name.clone(),
            datatype: datatype(&t.dtype).into(),
            shape: t.shape.clone(),
        })
        .collect()
}

fn repo(st: &AppState) -> Result<&Arc<Repository>, ApiError> {
    st.repository().ok_or(ApiError::NotReady)
}

fn metadata(
    repo: &Repository,
    name: String,
    version: Option<String>,
) -> Result<ModelMetadata, ApiError> {
    let model = super::v1::resolve(repo, name, version.clone())?;
    let versions = match version {
        Some(v) => vec![v],
        None => repo
            .models
            .get(&model.manifest.name)
            .map(|vs| {
                vs.values()
                    .rev()
                    .map(|m| m.manifest.version.clone())
                    .collect()
            })
            .unwrap_or_default(),
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
#[utoipa::path(get, path = "/v2", tag = "kserve-v2", security(("bearer" = [])),
    responses(
        (status = 200, description = "Name, version and protocol extensions", body = ServerMetadata),
        (status = 401, description = "Missing or wrong API key (when INFERD_API_KEYS is set)", body = V2Error),
    ))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "inferd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into()],
    })
}

/// Server liveness.
#[utoipa::path(get, path = "/v2/health/live", tag = "kserve-v2",
    responses((status = 200, description = "The server is alive", body = Live)))]
pub async fn server_live() -> Json<Live> {
    Json(Live { live: true })
}

/// Server readiness: every model loaded and warmed up, not draining.
#[utoipa::path(get, path = "/v2/health/ready", tag = "kserve-v2",
    responses(
        (status = 200, description = "Ready for inference", body = Ready),
        (status = 503, description = "Starting or draining", body = V2Error),
    ))]
pub async fn server_ready(State(st): State<Arc<AppState>>) -> Result<Json<Ready>, V2Failure> {
    st.readiness()?;
    Ok(Json(Ready { ready: true }))
}

/// Metadata of a model (its latest version's tensors, every version listed).
#[utoipa::path(get, path = "/v2/models/{name}", tag = "kserve-v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    responses((status = 200, description = "Inputs and outputs with datatype and shape", body = ModelMetadata),
        ModelRouteErrors))]
pub async fn model_metadata(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, V2Failure> {
    Ok(Json(metadata(repo(&st)?, name, None)?))
}

/// Metadata of one model version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "kserve-v2",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier"),
           ("version" = String, Path, description = "Model version", example = "1")),
    responses((status = 200, description = "Inputs and outputs with datatype and shape", body = ModelMetadata),
        ModelRouteErrors))]
pub async fn model_version_metadata(
    State(st): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, V2Failure> {
    Ok(Json(metadata(repo(&st)?, name, Some(version))?))
}

fn readiness(st: &AppState, name: String, version: Option<String>) -> Result<ModelReady, ApiError> {
    let model = super::v1::resolve(repo(st)?, name, version)?;
    if st.draining.load(Ordering::Acquire) {
        return Err(ApiError::Draining);
    }
    Ok(ModelReady {
        name: model.manifest.name.clone(),
        ready: st.ready.load(Ordering::Acquire),
    })
}

/// Whether a model can serve inferences now.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "kserve-v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    responses((status = 200, description = "The model is loaded and warmed up", body = ModelReady),
        ModelRouteErrors))]
pub async fn model_ready(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<ModelReady>, V2Failure> {
    Ok(Json(readiness(&st, name, None)?))
}

/// Whether one model version can serve inferences now.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "kserve-v2",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier"),
           ("version" = String, Path, description = "Model version", example = "1")),
    responses((status = 200, description = "The model is loaded and warmed up", body = ModelReady),
        ModelRouteErrors))]
pub async fn model_version_ready(
    State(st): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelReady>, V2Failure> {
    Ok(Json(readiness(&st, name, Some(version))?))
}

// ---- inference -----------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// `binary_data_output: true` asks for every output in binary form.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Exactly one tensor, named as the model's input.
    pub inputs: Vec<InferInput>,
    /// Which outputs to return (default: all), and in which form.
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InferInput {
    #[schema(example = "text")]
    pub name: String,
    /// The tensor's shape; its first dimension is the number of instances.
    pub shape: Vec<u64>,
    /// `BYTES` for text; `FP32`, `FP64`, `INT32` or `INT64` for numbers.
    #[schema(example = "BYTES")]
    pub datatype: String,
    /// `binary_data_size`: the tensor's data follows the JSON header, in binary.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Row-major elements, flat or nested. Absent when sent in binary.
    #[serde(default)]
    pub data: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    /// `binary_data: true` returns this output in binary.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseOutput>,
}

#[derive(Serialize, ToSchema)]
pub struct ResponseOutput {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<u64>,
    /// `binary_data_size` when the data follows the JSON header in binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<OutputParameters>,
    /// Row-major elements, flat. Absent when sent in binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
}

#[derive(Serialize, ToSchema)]
pub struct OutputParameters {
    pub binary_data_size: usize,
}

#[derive(Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TensorData {
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
}

impl TensorData {
    fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// What the answer needs from the request: its id and the outputs asked for,
/// each with whether it goes back in binary.
struct Plan {
    id: Option<String>,
    outputs: Vec<(String, bool)>,
}

fn flag(params: &Option<Map<String, Value>>, key: &str) -> Result<bool, ApiError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(
            format!("parameters.{key}"),
            "must be true or false",
        )),
    }
}

/// Splits a binary-extension body into the JSON header and the tensor bytes.
fn split_body(headers: &HeaderMap, body: &Bytes) -> Result<(Bytes, Bytes), ApiError> {
    let Some(v) = headers.get(&HEADER_LENGTH) else {
        return Ok((body.clone(), Bytes::new()));
    };
    let n: usize = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::invalid("Inference-Header-Content-Length", "must be a byte count")
        })?;
    if n > body.len() {
        return Err(ApiError::invalid(
            "Inference-Header-Content-Length",
            format!(
                "says {n} bytes of JSON header, but the body has {}",
                body.len()
            ),
        ));
    }
    Ok((body.slice(..n), body.slice(n..)))
}

fn element_size(datatype: &str) -> Option<usize> {
    match datatype {
        "FP32" | "INT32" => Some(4),
        "FP64" | "INT64" => Some(8),
        _ => None,
    }
}

/// The tensor's elements as JSON values, from `data` or from its binary bytes.
fn elements(
    input: &InferInput,
    data: Option<Vec<Value>>,
    binary: Option<&[u8]>,
    count: usize,
) -> Result<Vec<Value>, ApiError> {
    let field = format!("input `{}`", input.name);
    if let Some(raw) = binary {
        return if input.datatype == "BYTES" {
            let mut out = Vec::with_capacity(count);
            let mut rest = raw;
            while !rest.is_empty() {
                let len = rest
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .filter(|&l| rest.len() >= 4 + l)
                    .ok_or_else(|| ApiError::invalid(&field, "binary BYTES data is truncated"))?;
                let s = std::str::from_utf8(&rest[4..4 + len]).map_err(|_| {
                    ApiError::invalid(&field, format!("element {} is not UTF-8 text", out.len()))
                })?;
                out.push(Value::String(s.to_string()));
                rest = &rest[4 + len..];
            }
            Ok(out)
        } else {
            let size = element_size(&input.datatype).unwrap_or(4);
            if raw.len() % size != 0 {
                return Err(ApiError::invalid(
                    &field,
                    format!(
                        "{} bytes of binary data is not a whole number of {} elements",
                        raw.len(),
                        input.datatype
                    ),
                ));
            }
            raw.chunks_exact(size)
                .enumerate()
                .map(|(i, b)| {
                    let x = match input.datatype.as_str() {
                        "FP32" => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                        "INT32" => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                        "FP64" => f64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
                        _ => i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64,
                    };
                    serde_json::Number::from_f64(x)
                        .map(Value::Number)
                        .ok_or_else(|| {
                            ApiError::invalid(&field, format!("element {i} is not a finite number"))
                        })
                })
                .collect()
        };
    }
    let data = data.ok_or_else(|| {
        ApiError::invalid(
            &field,
            "has neither `data` nor a `binary_data_size` parameter",
        )
    })?;
    let mut flat = Vec::with_capacity(count);
    // Moves the elements (text can be large): no copy on the request path.
    fn walk(v: Value, out: &mut Vec<Value>, limit: usize) -> bool {
        match v {
            Value::Array(items) => items.into_iter().all(|x| walk(x, out, limit)),
            other => {
                out.push(other);
                out.len() <= limit
            }
        }
    }
    if !data.into_iter().all(|v| walk(v, &mut flat, count)) {
        return Err(ApiError::invalid(
            &field,
            format!("has more elements than its shape's {count}"),
        ));
    }
    Ok(flat)
}

/// The request's one input tensor as instances for `Task::decode`.
fn instances(
    model: &Model,
    inputs: Vec<InferInput>,
    mut tail: Bytes,
    max_instances: usize,
) -> Result<Vec<Value>, ApiError> {
    let spec = &model.manifest.inputs[0];
    let got = inputs.len();
    let Ok([mut input]) = <[InferInput; 1]>::try_from(inputs) else {
        return Err(ApiError::invalid(
            "inputs",
            format!(
                "model `{}` takes exactly one input, `{}`; got {}",
                model.manifest.name, spec.name, got
            ),
        ));
    };
    let field = format!("input `{}`", input.name);
    if input.name != spec.name {
        return Err(ApiError::invalid(
            "inputs[0].name",
            format!(
                "model `{}` has no input `{}`; its input is `{}`",
                model.manifest.name, input.name, spec.name
            ),
        ));
    }
    let n = *input
        .shape
        .first()
        .ok_or_else(|| ApiError::invalid(&field, "shape is empty"))? as usize;
    if n > max_instances {
        return Err(ApiError::invalid(
            &field,
            format!(
                "at most {max_instances} instances per request (INFERD_MAX_INSTANCES), got {n}"
            ),
        ));
    }
    // The shape each task accepts, and the datatypes.
    let (row_shape, types): (Vec<u64>, &[&str]) = match &model.task {
        Task::TextClassification { .. } => (vec![], &["BYTES"]),
        Task::Forecast {
            window, features, ..
        } => (
            vec![*window as u64, features.len() as u64],
            &["FP32", "FP64", "INT32", "INT64"],
        ),
    };
    if !types.contains(&input.datatype.as_str()) {
        return Err(ApiError::invalid(
            &field,
            format!(
                "expected datatype {}, got {}",
                types.join(" or "),
                input.datatype
            ),
        ));
    }
    let rest = &input.shape[1..];
    let shape_ok = rest == row_shape.as_slice() || (row_shape.is_empty() && rest == [1]);
    if !shape_ok {
        let mut want = vec!["N".to_string()];
        want.extend(row_shape.iter().map(|d| d.to_string()));
        return Err(ApiError::invalid(
            &field,
            format!(
                "expected shape [{}], got {:?}",
                want.join(", "),
                input.shape
            ),
        ));
    }
    let per_row: usize = row_shape.iter().product::<u64>().max(1) as usize;
    let count = n * per_row;
    let binary = match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(size) => {
            let size = size.as_u64().ok_or_else(|| {
                ApiError::invalid(&field, "parameters.binary_data_size must be a byte count")
            })? as usize;
            if size > tail.len() {
                return Err(ApiError::invalid(
                    &field,
                    format!(
                        "binary_data_size is {size} but only {} bytes follow the header",
                        tail.len()
                    ),
                ));
            }
            Some(tail.split_to(size))
        }
    };
    if !tail.is_empty() {
        return Err(ApiError::invalid(
            "body",
            format!(
                "{} bytes after the JSON header belong to no input",
                tail.len()
            ),
        ));
    }
    let data = input.data.take();
    let flat = elements(&input, data, binary.as_deref(), count)?;
    if flat.len() != count {
        return Err(ApiError::invalid(
            &field,
            format!(
                "shape {:?} needs {count} elements, got {}",
                input.shape,
                flat.len()
            ),
        ));
    }
    Ok(match &model.task {
        Task::TextClassification { .. } => flat,
        Task::Forecast {
            window, features, ..
        } => {
            let f = features.len();
            flat.chunks(window * f)
                .map(|inst| {
                    Value::Array(
                        inst.chunks(f)
                            .map(|row| Value::Array(row.to_vec()))
                            .collect(),
                    )
                })
                .collect()
        }
    })
}

/// Validates the requested outputs against the model's.
fn plan(model: &Model, req: &InferRequest) -> Result<Plan, ApiError> {
    let all_binary = flag(&req.parameters, "binary_data_output")?;
    let outputs = match &req.outputs {
        None => model
            .manifest
            .outputs
            .iter()
            .map(|o| (o.name.clone(), all_binary))
            .collect(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, o)| {
                if !model.manifest.outputs.iter().any(|m| m.name == o.name) {
                    let names: Vec<&str> = model
                        .manifest
                        .outputs
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect();
                    return Err(ApiError::invalid(
                        format!("outputs[{i}].name"),
                        format!(
                            "model `{}` has no output `{}`; it has {}",
                            model.manifest.name,
                            o.name,
                            names.join(", ")
                        ),
                    ));
                }
                let binary = match o.parameters.as_ref().and_then(|p| p.get("binary_data")) {
                    None => all_binary,
                    Some(_) => flag(&o.parameters, "binary_data")?,
                };
                Ok((o.name.clone(), binary))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Plan {
        id: req.id.clone(),
        outputs,
    })
}

/// One output tensor of the model, rebuilt from the predictions.
fn output(model: &Model, name: &str, preds: &[Prediction]) -> (String, Vec<u64>, TensorData) {
    let n = preds.len() as u64;
    match &model.task {
        Task::TextClassification { labels, .. } => {
            let is_scores = model
                .manifest
                .text
                .as_ref()
                .is_some_and(|t| t.scores_output == name);
            let mut idx = Vec::with_capacity(preds.len());
            let mut probs = Vec::with_capacity(preds.len() * labels.len());
            for p in preds {
                if let Prediction::Label { label, scores } = p {
                    idx.push(labels.iter().position(|l| l == label).unwrap_or(0) as i64);
                    probs.extend(labels.iter().map(|l| scores.get(l).copied().unwrap_or(0.0)));
                }
            }
            if is_scores {
                (
                    "FP32".into(),
                    vec![n, labels.len() as u64],
                    TensorData::Fp32(probs),
                )
            } else {
                ("INT64".into(), vec![n], TensorData::Int64(idx))
            }
        }
        Task::Forecast { targets, .. } => {
            let mut values = Vec::with_capacity(preds.len() * targets.len());
            for p in preds {
                if let Prediction::Forecast { forecast } = p {
                    values.extend(
                        targets
                            .iter()
                            .map(|t| forecast.get(t).copied().unwrap_or(f32::NAN)),
                    );
                }
            }
            (
                "FP32".into(),
                vec![n, targets.len() as u64],
                TensorData::Fp32(values),
            )
        }
    }
}

/// Raw bytes: a binary-extension body (JSON header, then tensor data).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct BinaryBody(pub Vec<u8>);

struct V2;

impl Answer<Plan> for V2 {
    fn ok(self, model: &Model, done: &Predicted, plan: Plan) -> Response {
        let mut blobs: Vec<u8> = Vec::new();
        let outputs = plan
            .outputs
            .iter()
            .map(|(name, binary)| {
                let (datatype, shape, data) = output(model, name, &done.predictions);
                if *binary {
                    let bytes = data.to_le_bytes();
                    let size = bytes.len();
                    blobs.extend(bytes);
                    ResponseOutput {
                        name: name.clone(),
                        datatype,
                        shape,
                        parameters: Some(OutputParameters {
                            binary_data_size: size,
                        }),
                        data: None,
                    }
                } else {
                    ResponseOutput {
                        name: name.clone(),
                        datatype,
                        shape,
                        parameters: None,
                        data: Some(data),
                    }
                }
            })
            .collect();
        let body = InferResponse {
            model_name: model.manifest.name.clone(),
            model_version: model.manifest.version.clone(),
            id: plan.id,
            outputs,
        };
        let cached = done
            .cached
            .iter()
            .map(|c| if *c { "1" } else { "0" })
            .collect::<Vec<_>>()
            .join(",");
        let mut resp = if plan.outputs.iter().any(|(_, b)| *b) {
            let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
            let header_len = bytes.len();
            bytes.extend(blobs);
            let mut r = (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                bytes,
            )
                .into_response();
            r.headers_mut()
                .insert(HEADER_LENGTH, HeaderValue::from(header_len));
            r
        } else {
            Json(body).into_response()
        };
        // Per instance, whether the cache answered (the JSON API's `cached`).
        if let Ok(v) = HeaderValue::from_str(&cached) {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-inferd-cached"), v);
        }
        resp
    }

    fn err(self, e: ApiError) -> Response {
        error_response(e)
    }
}

fn prepare(
    repo: &Repository,
    name: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    max_body: usize,
    max_instances: usize,
) -> Prepared<Plan> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(max_body)
        } else {
            ApiError::MalformedJson(r.body_text())
        }
    })?;
    let (json, tail) = split_body(headers, &body)?;
    let req: InferRequest = super::extract::parse(&json)?;
    let model = super::v1::resolve(repo, name, version)?;
    let rest = plan(&model, &req).and_then(|plan| {
        instances(&model, req.inputs, tail, max_instances).map(|inst| (inst, plan))
    });
    Ok((model, rest))
}

/// Run an inference (latest version).
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "kserve-v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    request_body(content(
        (InferRequest = "application/json"),
        (BinaryBody = "application/octet-stream"),
    ), description = "JSON, or with `Inference-Header-Content-Length`, a JSON header followed by binary tensor data"),
    responses(
        (status = 200, description = "Output tensors (binary ones after the JSON header of `Inference-Header-Content-Length` bytes)",
            content((InferResponse = "application/json"), (BinaryBody = "application/octet-stream"))),
        ModelRouteErrors,
        InferErrors,
    ))]
pub async fn infer(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(st, caller, name, None, headers, body).await
}

/// Run an inference on one model version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "kserve-v2",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier"),
           ("version" = String, Path, description = "Model version", example = "1")),
    request_body(content(
        (InferRequest = "application/json"),
        (BinaryBody = "application/octet-stream"),
    ), description = "JSON, or with `Inference-Header-Content-Length`, a JSON header followed by binary tensor data"),
    responses(
        (status = 200, description = "Output tensors (binary ones after the JSON header of `Inference-Header-Content-Length` bytes)",
            content((InferResponse = "application/json"), (BinaryBody = "application/octet-stream"))),
        ModelRouteErrors,
        InferErrors,
    ))]
pub async fn infer_version(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(st, caller, name, Some(version), headers, body).await
}

async fn run_infer(
    st: Arc<AppState>,
    caller: Caller,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (max_body, max_n) = (st.config.max_body_bytes, st.config.max_instances);
    serve_prediction(
        st,
        caller,
        |repo| prepare(repo, name, version, &headers, body, max_body, max_n),
        V2,
    )
    .await
}

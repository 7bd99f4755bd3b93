//! Inference over KServe v2: the request's one input tensor becomes per-instance
//! JSON values for the shared prediction path, and the predictions become the
//! model's output tensors again, in JSON or in binary (Triton's extension, whose
//! framing is `codec`'s).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

use super::codec;
use super::error::{error_response, InferErrors, ModelRouteErrors};
use super::wire::{
    BinaryBody, InferInput, InferRequest, InferResponse, OutputParameters, ResponseOutput,
    TensorData,
};
use crate::error::ApiError;
use crate::extract::{parse, RawBody};
use crate::serve::{serve_prediction, Answer, Caller, Prepared};
use crate::state::AppState;
use inferd_core::deployment::Deployment;
use inferd_core::pipeline::Predicted;
use inferd_core::repository::Model;
use inferd_core::task::{Prediction, Task};

const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// What the answer needs from the request: its id and the outputs asked for,
/// each with whether it goes back in binary.
pub(crate) struct Plan {
    pub(crate) id: Option<String>,
    pub(crate) outputs: Vec<(String, bool)>,
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

/// The request's one input tensor as instances for `Task::decode`: the
/// input checked against the model's (`the_input`, `element_count`), its
/// values taken from JSON or from the binary tail (`binary_part`, `codec`),
/// and cut into the task's instances (`split_instances`).
pub(crate) fn instances(
    model: &Model,
    inputs: Vec<InferInput>,
    tail: Bytes,
    max_instances: usize,
) -> Result<Vec<Value>, ApiError> {
    let mut input = the_input(model, inputs)?;
    let field = format!("input `{}`", input.name);
    let count = element_count(model, &input, &field, max_instances)?;
    let binary = binary_part(&input, tail, &field)?;
    let decoded = match (binary, input.data.take()) {
        (Some(raw), _) => codec::decode(&input.datatype, &raw, count),
        (None, Some(data)) => codec::flatten(data, count),
        (None, None) => Err("has neither `data` nor a `binary_data_size` parameter".into()),
    };
    let flat = decoded.map_err(|m| ApiError::invalid(&field, m))?;
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
    Ok(split_instances(&model.task, flat))
}

/// The request's only input, named as the model's.
fn the_input(model: &Model, inputs: Vec<InferInput>) -> Result<InferInput, ApiError> {
    let spec = &model.manifest.inputs[0];
    let got = inputs.len();
    let Ok([input]) = <[InferInput; 1]>::try_from(inputs) else {
        return Err(ApiError::invalid(
            "inputs",
            format!(
                "model `{}` takes exactly one input, `{}`; got {}",
                model.manifest.name, spec.name, got
            ),
        ));
    };
    if input.name != spec.name {
        return Err(ApiError::invalid(
            "inputs[0].name",
            format!(
                "model `{}` has no input `{}`; its input is `{}`",
                model.manifest.name, input.name, spec.name
            ),
        ));
    }
    Ok(input)
}

/// How many elements the input holds, once its instance count, datatype and
/// shape are checked against the task.
fn element_count(
    model: &Model,
    input: &InferInput,
    field: &str,
    max_instances: usize,
) -> Result<usize, ApiError> {
    let n = *input
        .shape
        .first()
        .ok_or_else(|| ApiError::invalid(field, "shape is empty"))? as usize;
    if n > max_instances {
        return Err(ApiError::invalid(
            field,
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
            field,
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
            field,
            format!(
                "expected shape [{}], got {:?}",
                want.join(", "),
                input.shape
            ),
        ));
    }
    let per_row: usize = row_shape.iter().product::<u64>().max(1) as usize;
    Ok(n * per_row)
}

/// The input's bytes in the binary tail, when its parameters say it has
/// some; every byte of the tail must belong to it.
fn binary_part(
    input: &InferInput,
    mut tail: Bytes,
    field: &str,
) -> Result<Option<Bytes>, ApiError> {
    let binary = match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(size) => {
            let size = size.as_u64().ok_or_else(|| {
                ApiError::invalid(field, "parameters.binary_data_size must be a byte count")
            })? as usize;
            if size > tail.len() {
                return Err(ApiError::invalid(
                    field,
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
    Ok(binary)
}

/// A flat list of values as the task's instances: one per text, or windows
/// of rows.
fn split_instances(task: &Task, flat: Vec<Value>) -> Vec<Value> {
    match task {
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
    }
}

/// Validates the requested outputs against the model's.
pub(crate) fn plan(model: &Model, req: &InferRequest) -> Result<Plan, ApiError> {
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
pub(crate) fn output(
    model: &Model,
    name: &str,
    preds: &[Prediction],
) -> (String, Vec<u64>, TensorData) {
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

/// The protocol's answer: output tensors, in JSON or binary.
struct V2Answer;

impl Answer<Plan> for V2Answer {
    type Reply = Response;

    fn ok(self, model: &Model, done: &Predicted, plan: Plan) -> Response {
        let mut blobs: Vec<u8> = Vec::new();
        let outputs = plan
            .outputs
            .iter()
            .map(|(name, binary)| {
                let (datatype, shape, data) = output(model, name, &done.predictions);
                if *binary {
                    let bytes = codec::encode(&data);
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
        // Per instance, whether the cache answered (the JSON API's `cached`),
        // and how many readings were filled (its `filled`).
        if let Ok(v) = HeaderValue::from_str(&cached) {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-inferd-cached"), v);
        }
        if let Some(filled) = &done.filled {
            let list: Vec<String> = filled.iter().map(usize::to_string).collect();
            if let Ok(v) = HeaderValue::from_str(&list.join(",")) {
                resp.headers_mut()
                    .insert(HeaderName::from_static("x-inferd-filled"), v);
            }
        }
        resp
    }

    fn err(self, e: ApiError) -> Response {
        error_response(e)
    }
}

fn prepare(
    deployment: &Deployment,
    request_id: &str,
    name: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
    max_instances: usize,
) -> Prepared<Plan> {
    let body = body?;
    let (json, tail) = codec::split_body(headers.get(&HEADER_LENGTH).map(|v| v.as_bytes()), body)
        .map_err(|m| ApiError::invalid(codec::HEADER_LENGTH_NAME, m))?;
    let req: InferRequest = parse(&json)?;
    let target = deployment.resolve(&name, version.as_deref(), Some(request_id))?;
    let model = &target.model;
    let rest = plan(model, &req).and_then(|plan| {
        instances(model, req.inputs, tail, max_instances).map(|inst| (inst.into(), plan))
    });
    Ok((target, rest))
}

/// Run an inference (latest version).
#[utoipa::path(post, path = "/models/{name}/infer", tag = "kserve-v2", security(("bearer" = [])),
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
pub(crate) async fn infer(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    run_infer(st, caller, name, None, headers, body).await
}

/// Run an inference on one model version.
#[utoipa::path(post, path = "/models/{name}/versions/{version}/infer", tag = "kserve-v2",
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
pub(crate) async fn infer_version(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    run_infer(st, caller, name, Some(version), headers, body).await
}

async fn run_infer(
    st: Arc<AppState>,
    caller: Caller,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Response {
    let max_n = st.settings.max_instances;
    serve_prediction(
        st,
        caller,
        |d, id| prepare(d, id, name, version, &headers, body, max_n),
        V2Answer,
    )
    .await
}

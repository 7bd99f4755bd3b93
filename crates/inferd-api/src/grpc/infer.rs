//! `ModelInfer`: the protobuf request becomes the KServe v2 REST door's
//! request (the same document, with raw tensors where the binary extension
//! would carry them), so both doors share one validation (`v2::infer::plan`
//! and `instances`) and one prediction path (`serve_prediction`); the
//! predictions become output tensors again, raw when the inputs came raw (as
//! Triton answers its clients), typed otherwise.

use axum::body::Bytes;
use serde_json::{Map, Value};
use tonic::metadata::MetadataValue;
use tonic::{Response, Status};

use super::pb;
use super::pb::infer_parameter::ParameterChoice;
use super::status::{http_status, status};
use crate::error::ApiError;
use crate::serve::{Answer, Prepared, Reply};
use crate::v2::codec;
use crate::v2::infer::{instances, output, plan, Plan};
use crate::v2::wire::{InferInput, InferRequest, RequestedOutput, TensorData};
use inferd_core::deployment::Deployment;
use inferd_core::pipeline::{Predicted, Timings};
use inferd_core::repository::Model;

/// An `InferParameter` as the JSON value the REST door would have seen.
fn parameter(p: &pb::InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(*b),
        Some(ParameterChoice::Int64Param(i)) => Value::from(*i),
        Some(ParameterChoice::StringParam(s)) => Value::String(s.clone()),
        Some(ParameterChoice::DoubleParam(d)) => Value::from(*d),
        Some(ParameterChoice::Uint64Param(u)) => Value::from(*u),
        None => Value::Null,
    }
}

fn parameters(
    map: &std::collections::HashMap<String, pb::InferParameter>,
) -> Option<Map<String, Value>> {
    (!map.is_empty()).then(|| map.iter().map(|(k, v)| (k.clone(), parameter(v))).collect())
}

/// Typed contents as the JSON elements of the REST door's `data`. Only the
/// field the datatype names is read; the REST door's checks then apply.
fn contents(i: usize, datatype: &str, c: pb::InferTensorContents) -> Result<Vec<Value>, ApiError> {
    let field = |name: &str| format!("inputs[{i}].contents.{name}");
    Ok(match datatype {
        "FP32" => c
            .fp32_contents
            .into_iter()
            .map(|x| Value::from(x as f64))
            .collect(),
        "FP64" => c.fp64_contents.into_iter().map(Value::from).collect(),
        "INT32" | "INT16" | "INT8" => c.int_contents.into_iter().map(Value::from).collect(),
        "INT64" => c.int64_contents.into_iter().map(Value::from).collect(),
        "UINT32" | "UINT16" | "UINT8" => c.uint_contents.into_iter().map(Value::from).collect(),
        "UINT64" => c.uint64_contents.into_iter().map(Value::from).collect(),
        "BOOL" => c.bool_contents.into_iter().map(Value::Bool).collect(),
        "BYTES" => c
            .bytes_contents
            .into_iter()
            .enumerate()
            .map(|(j, b)| {
                String::from_utf8(b).map(Value::String).map_err(|_| {
                    ApiError::invalid(
                        format!("{}[{j}]", field("bytes_contents")),
                        "not UTF-8 text",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        // The REST door names the unsupported datatype.
        _ => Vec::new(),
    })
}

/// The protobuf request as the REST door's request and its binary tail.
pub(super) fn to_rest(req: pb::ModelInferRequest) -> Result<(InferRequest, Bytes, bool), ApiError> {
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(ApiError::invalid(
            "raw_input_contents",
            format!(
                "{} entries for {} inputs: one per input, in order",
                req.raw_input_contents.len(),
                req.inputs.len()
            ),
        ));
    }
    let mut tail = Vec::new();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, t) in req.inputs.into_iter().enumerate() {
        let shape = t
            .shape
            .iter()
            .map(|d| u64::try_from(*d))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| ApiError::invalid(format!("inputs[{i}].shape"), "negative dimension"))?;
        let mut params = parameters(&t.parameters).unwrap_or_default();
        let data = if raw {
            let bytes = &req.raw_input_contents[i];
            params.insert("binary_data_size".into(), Value::from(bytes.len()));
            tail.extend_from_slice(bytes);
            if t.contents.is_some() {
                return Err(ApiError::invalid(
                    format!("inputs[{i}].contents"),
                    "both contents and raw_input_contents: send one",
                ));
            }
            None
        } else {
            let c = t.contents.unwrap_or_default();
            Some(contents(i, &t.datatype, c)?)
        };
        inputs.push(InferInput {
            name: t.name,
            shape,
            datatype: t.datatype,
            parameters: (!params.is_empty()).then_some(params),
            data,
        });
    }
    let outputs = (!req.outputs.is_empty()).then(|| {
        req.outputs
            .into_iter()
            .map(|o| RequestedOutput {
                name: o.name,
                parameters: None,
            })
            .collect()
    });
    let rest = InferRequest {
        id: (!req.id.is_empty()).then_some(req.id),
        parameters: parameters(&req.parameters),
        inputs,
        outputs,
    };
    Ok((rest, Bytes::from(tail), raw))
}

/// What `serve_prediction` calls once the model is resolved.
pub(super) fn prepare(
    deployment: &Deployment,
    request_id: &str,
    req: pb::ModelInferRequest,
    max_instances: usize,
) -> Prepared<(Plan, bool)> {
    let version = (!req.model_version.is_empty()).then(|| req.model_version.clone());
    let name = req.model_name.clone();
    let converted = to_rest(req);
    let target = deployment.resolve(&name, version.as_deref(), Some(request_id))?;
    let model = &target.model;
    let rest = converted.and_then(|(req, tail, raw)| {
        let plan = plan(model, &req)?;
        let inst = instances(model, req.inputs, tail, max_instances)?;
        Ok((inst.into(), (plan, raw)))
    });
    Ok((target, rest))
}

/// A gRPC reply and the HTTP status it stands for.
pub(super) struct GrpcReply {
    pub(super) status: u16,
    pub(super) result: Result<Response<pb::ModelInferResponse>, Status>,
}

impl Reply for GrpcReply {
    fn status(&self) -> u16 {
        self.status
    }

    fn add_timings(&mut self, t: &Timings) {
        let md = self.metadata_mut();
        let ms = |d: std::time::Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
        if let Ok(v) = MetadataValue::try_from(ms(t.queue)) {
            md.insert("x-queue-time", v);
        }
        if let Ok(v) = MetadataValue::try_from(ms(t.inference)) {
            md.insert("x-inference-time", v);
        }
    }

    fn add_trace_id(&mut self, trace_id: &str) {
        if let Ok(v) = MetadataValue::try_from(trace_id) {
            self.metadata_mut().insert("x-trace-id", v);
        }
    }
}

impl GrpcReply {
    /// The answer's metadata, whether it is a response or a status.
    fn metadata_mut(&mut self) -> &mut tonic::metadata::MetadataMap {
        match &mut self.result {
            Ok(r) => r.metadata_mut(),
            Err(s) => s.metadata_mut(),
        }
    }
}

pub(super) struct GrpcAnswer;

impl Answer<(Plan, bool)> for GrpcAnswer {
    type Reply = GrpcReply;

    fn ok(self, model: &Model, done: &Predicted, (plan, raw): (Plan, bool)) -> GrpcReply {
        let mut raw_output_contents = Vec::new();
        let outputs = plan
            .outputs
            .iter()
            .map(|(name, _)| {
                let (datatype, shape, data) = output(model, name, &done.predictions);
                let contents = if raw {
                    raw_output_contents.push(codec::encode(&data));
                    None
                } else {
                    Some(match data {
                        TensorData::Fp32(v) => pb::InferTensorContents {
                            fp32_contents: v,
                            ..Default::default()
                        },
                        TensorData::Int64(v) => pb::InferTensorContents {
                            int64_contents: v,
                            ..Default::default()
                        },
                    })
                };
                pb::model_infer_response::InferOutputTensor {
                    name: name.clone(),
                    datatype,
                    shape: shape.into_iter().map(|d| d as i64).collect(),
                    parameters: Default::default(),
                    contents,
                }
            })
            .collect();
        let mut resp = Response::new(pb::ModelInferResponse {
            model_name: model.manifest.name.clone(),
            model_version: model.manifest.version.clone(),
            id: plan.id.unwrap_or_default(),
            parameters: Default::default(),
            outputs,
            raw_output_contents,
        });
        // Per instance, whether the cache answered, as the REST doors say it.
        let cached: Vec<&str> = done
            .cached
            .iter()
            .map(|c| if *c { "1" } else { "0" })
            .collect();
        if let Ok(v) = MetadataValue::try_from(cached.join(",")) {
            resp.metadata_mut().insert("x-inferd-cached", v);
        }
        GrpcReply {
            status: 200,
            result: Ok(resp),
        }
    }

    fn err(self, e: ApiError) -> GrpcReply {
        GrpcReply {
            status: http_status(&e),
            result: Err(status(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(datatype: &str, shape: Vec<i64>) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents: None,
        }
    }

    #[test]
    fn typed_and_raw_inputs_become_the_rest_request() {
        let mut t = tensor("BYTES", vec![2]);
        t.contents = Some(pb::InferTensorContents {
            bytes_contents: vec![b"hello".to_vec(), b"world".to_vec()],
            ..Default::default()
        });
        let req = pb::ModelInferRequest {
            model_name: "m".into(),
            id: "r1".into(),
            inputs: vec![t],
            ..Default::default()
        };
        let (rest, tail, raw) = to_rest(req).unwrap();
        assert!(!raw && tail.is_empty());
        assert_eq!(rest.id.as_deref(), Some("r1"));
        assert_eq!(
            rest.inputs[0].data.as_deref(),
            Some(&[Value::from("hello"), Value::from("world")][..])
        );

        let req = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![tensor("FP32", vec![1, 2, 1])],
            raw_input_contents: vec![[1.5f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat()],
            ..Default::default()
        };
        let (rest, tail, raw) = to_rest(req).unwrap();
        assert!(raw);
        assert_eq!(tail.len(), 8);
        assert_eq!(rest.inputs[0].shape, vec![1, 2, 1]);
        assert_eq!(
            rest.inputs[0]
                .parameters
                .as_ref()
                .and_then(|p| p.get("binary_data_size")),
            Some(&Value::from(8))
        );
    }

    #[test]
    fn malformed_tensors_are_invalid_arguments() {
        let req = pb::ModelInferRequest {
            inputs: vec![tensor("FP32", vec![-1, 26, 1])],
            ..Default::default()
        };
        assert_eq!(to_rest(req).unwrap_err().code(), "invalid_input");
        let req = pb::ModelInferRequest {
            inputs: vec![tensor("FP32", vec![1]), tensor("FP32", vec![1])],
            raw_input_contents: vec![vec![0; 4]],
            ..Default::default()
        };
        assert_eq!(to_rest(req).unwrap_err().code(), "invalid_input");
        let mut t = tensor("BYTES", vec![1]);
        t.contents = Some(pb::InferTensorContents {
            bytes_contents: vec![vec![0xff, 0xfe]],
            ..Default::default()
        });
        let req = pb::ModelInferRequest {
            inputs: vec![t],
            ..Default::default()
        };
        assert_eq!(to_rest(req).unwrap_err().code(), "invalid_input");
    }
}

//! `--protocol grpc`: KServe v2 over gRPC (`ModelInfer`), the requests built
//! from the same v2 JSON tensors as `--protocol v2` and sent raw
//! (`raw_input_contents`), as tritonclient sends them.

use std::time::Duration;

use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use crate::protocol::{InputSpec, Outcome};

/// The generated client and messages.
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_client::GrpcInferenceServiceClient;

/// HTTP/2 connections the calls are spread over: one multiplexes every call,
/// and a few keep one connection's ordering from becoming the bottleneck.
const CHANNELS: usize = 4;

pub struct GrpcTarget {
    clients: Vec<GrpcInferenceServiceClient<Channel>>,
    requests: Vec<pb::ModelInferRequest>,
}

/// Connects `CHANNELS` channels to `url` (`http://host:port`).
pub async fn connect(url: &str) -> anyhow::Result<Vec<GrpcInferenceServiceClient<Channel>>> {
    let mut clients = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| anyhow::anyhow!("--url {url}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("gRPC connect to {url}: {e}"))?;
        clients.push(GrpcInferenceServiceClient::new(channel));
    }
    Ok(clients)
}

/// `ModelMetadata`: the model's first input.
pub async fn input_spec(
    client: &mut GrpcInferenceServiceClient<Channel>,
    model: &str,
    version: Option<&str>,
) -> anyhow::Result<InputSpec> {
    let m = client
        .model_metadata(pb::ModelMetadataRequest {
            name: model.into(),
            version: version.unwrap_or_default().into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("ModelMetadata {model}: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let input = m
        .inputs
        .first()
        .ok_or_else(|| anyhow::anyhow!("ModelMetadata {model}: no inputs"))?;
    Ok(InputSpec {
        name: input.name.clone(),
        datatype: input.datatype.clone(),
        shape: input.shape.clone(),
    })
}

/// Row-major leaves of nested arrays.
fn leaves<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| leaves(x, out)),
        other => out.push(other),
    }
}

/// One tensor's elements in the raw little-endian layout (BYTES: a 4-byte
/// length before each string). A `null` reading is a NaN, which the server
/// reads as a gap.
fn raw(datatype: &str, data: &Value) -> Result<Vec<u8>, String> {
    let mut items = Vec::new();
    leaves(data, &mut items);
    let mut out = Vec::new();
    for v in items {
        match datatype {
            "BYTES" => {
                let s = v.as_str().ok_or("BYTES data must be strings")?;
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            "FP32" => out.extend_from_slice(&(v.as_f64().unwrap_or(f64::NAN) as f32).to_le_bytes()),
            "FP64" => out.extend_from_slice(&v.as_f64().unwrap_or(f64::NAN).to_le_bytes()),
            "INT32" => out.extend_from_slice(
                &(v.as_i64().ok_or("INT32 data must be integers")? as i32).to_le_bytes(),
            ),
            "INT64" => out.extend_from_slice(
                &v.as_i64()
                    .ok_or("INT64 data must be integers")?
                    .to_le_bytes(),
            ),
            d => return Err(format!("datatype {d} is not sent over gRPC by this tool")),
        }
    }
    Ok(out)
}

/// A v2 JSON request (`{"inputs": [...], "outputs"?, "id"?}`) as a `ModelInferRequest`.
pub fn request(
    model: &str,
    version: Option<&str>,
    body: &Value,
) -> Result<pb::ModelInferRequest, String> {
    let inputs = body["inputs"].as_array().ok_or("no `inputs` array")?;
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut raws = Vec::with_capacity(inputs.len());
    for (i, t) in inputs.iter().enumerate() {
        let at = |what: &str| format!("inputs[{i}]: {what}");
        let datatype = t["datatype"].as_str().ok_or_else(|| at("no datatype"))?;
        let shape = t["shape"]
            .as_array()
            .ok_or_else(|| at("no shape"))?
            .iter()
            .map(|d| d.as_i64().ok_or_else(|| at("a non-integer dimension")))
            .collect::<Result<Vec<_>, _>>()?;
        raws.push(raw(datatype, &t["data"]).map_err(|e| at(&e))?);
        tensors.push(pb::model_infer_request::InferInputTensor {
            name: t["name"].as_str().ok_or_else(|| at("no name"))?.into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents: None,
        });
    }
    let outputs = body["outputs"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|x| x["name"].as_str())
                .map(|name| pb::model_infer_request::InferRequestedOutputTensor {
                    name: name.into(),
                    parameters: Default::default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.unwrap_or_default().into(),
        id: body["id"].as_str().unwrap_or_default().into(),
        parameters: Default::default(),
        inputs: tensors,
        outputs,
        raw_input_contents: raws,
    })
}

impl GrpcTarget {
    pub fn new(
        clients: Vec<GrpcInferenceServiceClient<Channel>>,
        requests: Vec<pb::ModelInferRequest>,
    ) -> Self {
        GrpcTarget { clients, requests }
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// One `ModelInfer`: `200` when OK, else the gRPC code's name
    /// (`ResourceExhausted`, `DeadlineExceeded`...), so that reports and
    /// targets read as for HTTP.
    pub async fn send(&self, i: u64) -> Outcome {
        let mut client = self.clients[(i % self.clients.len() as u64) as usize].clone();
        let req = self.requests[(i % self.requests.len() as u64) as usize].clone();
        match client.model_infer(req).await {
            Ok(r) => Outcome {
                status: "200".into(),
                queue_us: crate::protocol::queue_us(
                    r.metadata()
                        .get("x-queue-time")
                        .and_then(|v| v.to_str().ok()),
                ),
            },
            Err(s) => Outcome {
                status: format!("{:?}", s.code()),
                queue_us: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v2_tensors_become_raw_contents() {
        let body = json!({"id": "r", "inputs": [
            {"name": "window", "datatype": "FP32", "shape": [1, 2, 1], "data": [[1.5], [null]]}]});
        let r = request("lstm", Some("1"), &body).expect("request");
        assert_eq!(
            (
                r.model_name.as_str(),
                r.model_version.as_str(),
                r.id.as_str()
            ),
            ("lstm", "1", "r")
        );
        assert_eq!(r.inputs[0].shape, vec![1, 2, 1]);
        let raw = &r.raw_input_contents[0];
        assert_eq!(f32::from_le_bytes(raw[0..4].try_into().unwrap()), 1.5);
        assert!(f32::from_le_bytes(raw[4..8].try_into().unwrap()).is_nan());
        let texts = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["ab", "c"]}]});
        let r = request("t", None, &texts).expect("request");
        assert_eq!(
            r.raw_input_contents[0],
            b"\x02\x00\x00\x00ab\x01\x00\x00\x00c".to_vec()
        );
        assert!(request(
            "t",
            None,
            &json!({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}]})
        )
        .is_err());
    }
}

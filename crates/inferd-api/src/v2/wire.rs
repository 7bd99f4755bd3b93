//! The protocol's documents, as serde types with their OpenAPI schemas: server
//! and model metadata, the inference request and response. No logic.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub(crate) struct ServerMetadata {
    #[schema(example = "inferd")]
    pub name: String,
    pub version: String,
    /// Protocol extensions: `binary_tensor_data` (Triton's binary tensor data).
    pub extensions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Live {
    pub live: bool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Ready {
    pub ready: bool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ModelReady {
    pub name: String,
    pub ready: bool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TensorMetadata {
    pub name: String,
    /// `BYTES`, `FP32`, `INT64`, ...
    pub datatype: String,
    /// -1 marks a dimension of any size (the batch).
    pub shape: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    #[schema(example = "onnx_onnxv1")]
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

// The body of the v2 infer routes. (A doc comment would become the schema's
// description in the OpenAPI document.)
#[allow(missing_docs)]
#[derive(Debug, Deserialize, ToSchema)]
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))] // exported by `testing`
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
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))] // exported by `testing`
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
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))] // exported by `testing`
pub struct RequestedOutput {
    pub name: String,
    /// `binary_data: true` returns this output in binary.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseOutput>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ResponseOutput {
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
pub(crate) struct OutputParameters {
    pub binary_data_size: usize,
}

// An output tensor's values. (A doc comment would become the schema's
// description in the OpenAPI document.)
#[allow(missing_docs)]
#[derive(Clone, Serialize, ToSchema)]
#[serde(untagged)]
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))] // exported by `testing`
pub enum TensorData {
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
}

/// Raw bytes: a binary-extension body (JSON header, then tensor data).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // only its description is used
pub(crate) struct BinaryBody(pub Vec<u8>);

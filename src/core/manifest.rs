//! `model.toml`, the manifest of one model version: what the graph takes and
//! returns, what the task needs to decode and encode, and the version's own
//! batching and cache settings. The repository checks it against the graph
//! before the version may serve.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    #[serde(default)]
    pub meaning: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TextSection {
    pub labels: Vec<String>,
    /// The largest input accepted, in bytes, before any preprocessing.
    pub max_text_bytes: usize,
    pub scores_output: String,
    /// What the server does to an input before the graph sees it.
    #[serde(default)]
    pub preprocess: TextPreprocess,
    /// With a preprocessing step: the cleaned text is cut to this many
    /// characters, as in training.
    #[serde(default)]
    pub truncate_chars: Option<usize>,
}

/// A text model's preprocessing, part of the model version's contract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TextPreprocess {
    /// The text goes to the graph as sent.
    #[default]
    None,
    /// An email message, raw RFC 822 source or plain text: MIME parts decoded,
    /// HTML stripped, whitespace collapsed (`preprocess::email`).
    Email,
}

/// What a forecaster does with missing readings (`null`) in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// A window with a gap is invalid input.
    #[default]
    Refuse,
    /// Gaps are filled by linear interpolation, as training filled them
    /// (`preprocess::series`), up to `max_missing` per window.
    Interpolate,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TimeSeriesSection {
    pub window: usize,
    pub features: Vec<String>,
    pub feature_units: Vec<String>,
    pub targets: Vec<String>,
    pub target_units: Vec<String>,
    pub scaling: String,
    #[serde(default)]
    pub missing: Missing,
    /// With `missing = "interpolate"`: the most readings one window may lack.
    #[serde(default)]
    pub max_missing: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BatchingSection {
    pub max_batch_size: usize,
    pub max_batch_delay_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CacheSection {
    pub enabled: bool,
}

/// Which runtime a version's graph is for; it names the graph file too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `model.onnx`, run by ONNX Runtime.
    #[default]
    Onnx,
    /// `model.pt`, a TorchScript module saved by `torch.jit.save`, run by
    /// libtorch (the `torch` feature).
    Torchscript,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Torchscript => "torchscript",
        }
    }

    /// The graph file inside the version directory.
    pub fn graph_file(self) -> &'static str {
        match self {
            Format::Onnx => "model.onnx",
            Format::Torchscript => "model.pt",
        }
    }
}

/// `model.toml`. Unknown keys are allowed so that manifests can carry
/// documentation (data source, metrics) the server does not act on.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub task: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub format: Format,
    /// The sha256 of the graph file, pinned: a version serves only the
    /// bytes it was verified with. `onnx_sha256` is the older spelling.
    #[serde(alias = "onnx_sha256")]
    pub graph_sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub text: Option<TextSection>,
    pub timeseries: Option<TimeSeriesSection>,
    pub batching: BatchingSection,
    pub cache: CacheSection,
    #[serde(default)]
    pub metrics: toml::Table,
}

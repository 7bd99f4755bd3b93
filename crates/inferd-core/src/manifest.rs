//! `model.toml`, the manifest of one model version: what the graph takes and
//! returns, what the task needs to decode and encode, and the version's own
//! batching and cache settings. The repository checks it against the graph
//! before the version may serve.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
/// One graph input or output as the manifest declares it.
pub struct TensorSpec {
    /// The graph's name for it.
    pub name: String,
    /// Element type: `string`, `float32` or `int64`.
    pub dtype: String,
    /// Dimensions, `-1` for a dynamic one (the batch).
    pub shape: Vec<i64>,
    #[serde(default)]
    /// What it holds, for people and the model listing.
    pub meaning: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
/// `[text]`: what a text classifier takes and answers.
pub struct TextSection {
    /// The classes, in the order of the scores output's columns.
    pub labels: Vec<String>,
    /// The largest input accepted, in bytes, before any preprocessing.
    pub max_text_bytes: usize,
    /// The output holding one probability per label.
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
/// `[timeseries]`: what a forecaster's windows hold.
pub struct TimeSeriesSection {
    /// Time steps per window.
    pub window: usize,
    /// One name per column of a window's rows.
    pub features: Vec<String>,
    /// The unit of each feature.
    pub feature_units: Vec<String>,
    /// What the output predicts, one name per column.
    pub targets: Vec<String>,
    /// The unit of each target.
    pub target_units: Vec<String>,
    /// How the graph scales its input (documentation; the graph does it).
    pub scaling: String,
    #[serde(default)]
    /// What a `null` reading means.
    pub missing: Missing,
    /// With `missing = "interpolate"`: the most readings one window may lack.
    #[serde(default)]
    pub max_missing: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
/// `[batching]`: the version's dynamic batching.
pub struct BatchingSection {
    /// Most instances in one backend call.
    pub max_batch_size: usize,
    /// How long a batch may wait for more requests once a slot is free.
    pub max_batch_delay_ms: u64,
    /// The longest a request may expect to wait in this version's queue
    /// before it is refused (`governor`); absent: the server's
    /// `INFERD_QUEUE_TARGET_MS`, else two full batches' measured time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_target_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
/// `[cache]`: whether the version's predictions are cached.
pub struct CacheSection {
    /// Off for models whose output must be computed every time.
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
    /// The manifest's spelling.
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
    /// The model's name (its directory).
    pub name: String,
    /// The version (its numbered directory).
    pub version: String,
    /// `text-classification` or `time-series-forecast`.
    pub task: String,
    #[serde(default)]
    /// One line for people.
    pub description: String,
    #[serde(default)]
    /// The graph's runtime.
    pub format: Format,
    /// The sha256 of the graph file, pinned: a version serves only the
    /// bytes it was verified with. `onnx_sha256` is the older spelling.
    #[serde(alias = "onnx_sha256")]
    pub graph_sha256: String,
    /// The graph's inputs.
    pub inputs: Vec<TensorSpec>,
    /// The graph's outputs.
    pub outputs: Vec<TensorSpec>,
    /// For text classifiers.
    pub text: Option<TextSection>,
    /// For forecasters.
    pub timeseries: Option<TimeSeriesSection>,
    /// Dynamic batching.
    pub batching: BatchingSection,
    /// The result cache.
    pub cache: CacheSection,
    #[serde(default)]
    /// The version's measured quality (test metrics), shown in the listing.
    pub metrics: toml::Table,
}

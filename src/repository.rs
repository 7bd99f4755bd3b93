//! The model repository: finds `models/<name>/<version>/`, reads each manifest,
//! verifies the graph's hash and its real inputs and outputs against the manifest,
//! and loads a backend for it. Any mismatch stops start-up with a message naming
//! the file and what differs: a server that starts is a server whose models are
//! what their manifests say.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runtime::{Backend, OrtBackend, SessionOptions, TensorInfo};
use crate::task::Task;

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
    pub max_text_bytes: usize,
    pub scores_output: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TimeSeriesSection {
    pub window: usize,
    pub features: Vec<String>,
    pub feature_units: Vec<String>,
    pub targets: Vec<String>,
    pub target_units: Vec<String>,
    pub scaling: String,
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

/// `model.toml`. Unknown keys are allowed so that manifests can carry
/// documentation (data source, metrics) the server does not act on.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub task: String,
    #[serde(default)]
    pub description: String,
    pub onnx_sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub text: Option<TextSection>,
    pub timeseries: Option<TimeSeriesSection>,
    pub batching: BatchingSection,
    pub cache: CacheSection,
    #[serde(default)]
    pub metrics: toml::Table,
}

/// A loaded, verified model version.
pub struct Model {
    pub manifest: Manifest,
    pub task: Task,
    pub backend: Arc<dyn Backend>,
    pub dir: PathBuf,
}

/// Every model, by name, then by version number.
pub struct Repository {
    pub models: BTreeMap<String, BTreeMap<u64, Arc<Model>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LoadError {
    pub path: PathBuf,
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> LoadError {
    LoadError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let rd = fs::read_dir(dir).map_err(|e| err(dir, format!("cannot read directory: {e}")))?;
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn sha256_hex(path: &Path) -> Result<String, LoadError> {
    let bytes = fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Compares the manifest's declared tensors with the graph's.
fn check_io(
    file: &Path,
    kind: &str,
    declared: &[TensorSpec],
    actual: &[TensorInfo],
) -> Result<(), LoadError> {
    let dn: Vec<&str> = declared.iter().map(|t| t.name.as_str()).collect();
    let an: Vec<&str> = actual.iter().map(|t| t.name.as_str()).collect();
    if dn != an {
        return Err(err(
            file,
            format!("manifest {kind} {dn:?} do not match the graph's {an:?}"),
        ));
    }
    for (d, a) in declared.iter().zip(actual) {
        if d.dtype != a.dtype.name() {
            return Err(err(
                file,
                format!(
                    "{kind} `{}`: manifest says dtype {}, the graph has {}",
                    d.name,
                    d.dtype,
                    a.dtype.name()
                ),
            ));
        }
        let dims_match = d.shape.len() == a.shape.len()
            && d.shape
                .iter()
                .zip(&a.shape)
                .all(|(x, y)| x == y || (*x == -1 && *y < 0));
        if !dims_match {
            return Err(err(
                file,
                format!(
                    "{kind} `{}`: manifest says shape {:?}, the graph has {:?}",
                    d.name, d.shape, a.shape
                ),
            ));
        }
    }
    Ok(())
}

fn load_version(dir: &Path, opts: &SessionOptions) -> Result<Model, LoadError> {
    let manifest_path = dir.join("model.toml");
    let onnx_path = dir.join("model.onnx");
    let text = fs::read_to_string(&manifest_path)
        .map_err(|e| err(&manifest_path, format!("cannot read: {e}")))?;
    let manifest: Manifest =
        toml::from_str(&text).map_err(|e| err(&manifest_path, format!("invalid manifest: {e}")))?;
    let dir_name = dir
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let dir_version = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if manifest.name != dir_name || manifest.version != dir_version {
        return Err(err(
            &manifest_path,
            format!(
                "manifest names {}/{}, but it lives in {dir_name}/{dir_version}",
                manifest.name, manifest.version
            ),
        ));
    }
    if !onnx_path.is_file() {
        return Err(err(&onnx_path, "missing"));
    }
    let digest = sha256_hex(&onnx_path)?;
    if !digest.eq_ignore_ascii_case(&manifest.onnx_sha256) {
        return Err(err(
            &onnx_path,
            format!(
                "sha256 is {digest}, but model.toml says {}",
                manifest.onnx_sha256
            ),
        ));
    }
    let task = Task::from_manifest(&manifest).map_err(|m| err(&manifest_path, m))?;
    let backend = OrtBackend::load(&onnx_path, opts, task.output_name()).map_err(|m| {
        err(
            &onnx_path,
            format!("cannot load the graph (corrupt or not ONNX?): {m}"),
        )
    })?;
    check_io(&onnx_path, "inputs", &manifest.inputs, backend.inputs())?;
    check_io(&onnx_path, "outputs", &manifest.outputs, backend.outputs())?;
    task.check_graph(backend.inputs(), backend.outputs())
        .map_err(|m| err(&onnx_path, m))?;
    Ok(Model {
        manifest,
        task,
        backend: Arc::new(backend),
        dir: dir.to_path_buf(),
    })
}

impl Repository {
    /// Loads every model version under `root`. Blocking (file I/O, graph loading).
    pub fn load(root: &Path, opts: &SessionOptions) -> Result<Self, LoadError> {
        let mut models = BTreeMap::new();
        for model_dir in sorted_dirs(root)? {
            let name = model_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let mut versions = BTreeMap::new();
            for vdir in sorted_dirs(&model_dir)? {
                let v = vdir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let Ok(num) = v.parse::<u64>() else {
                    return Err(err(
                        &vdir,
                        "version directories must be named by a number (1, 2, ...)",
                    ));
                };
                versions.insert(num, Arc::new(load_version(&vdir, opts)?));
            }
            if versions.is_empty() {
                return Err(err(
                    &model_dir,
                    "no version directories (expected <model>/1/model.toml)",
                ));
            }
            models.insert(name, versions);
        }
        if models.is_empty() {
            return Err(err(
                root,
                "no models found (expected <model>/<version>/model.toml)",
            ));
        }
        Ok(Repository { models })
    }

    /// A version by name, or the highest version when `version` is `None`.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<&Arc<Model>, Lookup> {
        let versions = self.models.get(name).ok_or(Lookup::NoModel)?;
        match version {
            None => versions.values().next_back().ok_or(Lookup::NoModel),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|n| versions.get(&n))
                .ok_or(Lookup::NoVersion),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values().flat_map(|v| v.values())
    }
}

pub enum Lookup {
    NoModel,
    NoVersion,
}

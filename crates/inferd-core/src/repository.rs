//! The model repository: finds `models/<name>/<version>/`, reads each manifest,
//! verifies the graph's hash and its real inputs and outputs against the manifest,
//! and has the `Loader` it is given build a backend for it (the repository never
//! names a runtime, so tests load models onto the scripted backend). Any mismatch stops start-up with a message naming
//! the file and what differs: a server that starts is a server whose models are
//! what their manifests say.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::backend::{Backend, GraphSpec, LoadFailure, Loader, TensorInfo};
use super::error::CoreError;
use super::manifest::{Manifest, TensorSpec};
use super::memory::TrimOnDrop;
use super::quality::drift::Reference;
use super::task::Task;

/// A loaded, verified model version.
pub struct Model {
    /// The manifest, checked against the graph.
    pub manifest: Manifest,
    /// How instances and predictions look.
    pub task: Task,
    /// The loaded graph.
    pub backend: Arc<dyn Backend>,
    /// The version directory.
    pub dir: PathBuf,
    /// The training data's profile (`reference.json`), when the version has
    /// one: what its live traffic is judged against for drift.
    pub reference: Option<Arc<Reference>>,
    /// Last, so it drops after the backend (see `core::memory`).
    pub(crate) _release: TrimOnDrop,
}

/// Every model, by name, then by version number.
pub struct Repository {
    /// By name, then by version number.
    pub models: BTreeMap<String, BTreeMap<u64, Arc<Model>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
/// Why a version could not be loaded, naming the file to blame.
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
    /// The version is well-formed, but this build has no runtime for its
    /// format: it is reported unavailable, never a reason to stop start-up.
    pub unsupported: bool,
}

fn err(path: &Path, message: impl Into<String>) -> LoadError {
    LoadError {
        path: path.to_path_buf(),
        message: message.into(),
        unsupported: false,
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

/// Loads and verifies one version directory: manifest, sha256 pin, graph
/// against manifest, task against graph.
pub fn load_version(dir: &Path, loader: &dyn Loader) -> Result<Model, LoadError> {
    let manifest_path = dir.join("model.toml");
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
    let graph_path = dir.join(manifest.format.graph_file());
    if !graph_path.is_file() {
        return Err(err(
            &graph_path,
            format!(
                "missing (the graph of a `{}` version)",
                manifest.format.name()
            ),
        ));
    }
    let digest = sha256_hex(&graph_path)?;
    if !digest.eq_ignore_ascii_case(&manifest.graph_sha256) {
        return Err(err(
            &graph_path,
            format!(
                "sha256 is {digest}, but model.toml says {}",
                manifest.graph_sha256
            ),
        ));
    }
    let task = Task::from_manifest(&manifest).map_err(|m| err(&manifest_path, m))?;
    let spec = GraphSpec {
        format: manifest.format,
        path: &graph_path,
        inputs: &manifest.inputs,
        outputs: &manifest.outputs,
        output: task.output_name(),
    };
    let backend = loader.load(&spec).map_err(|f| match f {
        LoadFailure::Unsupported(m) => LoadError {
            unsupported: true,
            ..err(&graph_path, m)
        },
        LoadFailure::Failed(m) => err(&graph_path, format!("cannot load the graph: {m}")),
    })?;
    check_io(&graph_path, "inputs", &manifest.inputs, backend.inputs())?;
    check_io(&graph_path, "outputs", &manifest.outputs, backend.outputs())?;
    task.check_graph(backend.inputs(), backend.outputs())
        .map_err(|m| err(&graph_path, m))?;
    let reference = Reference::load(dir, &task)
        .map_err(|m| err(&dir.join("reference.json"), m))?
        .map(Arc::new);
    Ok(Model {
        manifest,
        task,
        backend,
        dir: dir.to_path_buf(),
        reference,
        _release: TrimOnDrop,
    })
}

impl Repository {
    /// Loads every model version under `root`. Blocking (file I/O, graph
    /// loading). A version whose format the loader cannot run is skipped
    /// with a warning, as at a server's start-up.
    pub fn load(root: &Path, loader: &dyn Loader) -> Result<Self, LoadError> {
        let mut models = BTreeMap::new();
        for model_dir in sorted_dirs(root)? {
            let name = model_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let mut versions = BTreeMap::new();
            let mut skipped = false;
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
                match load_version(&vdir, loader) {
                    Ok(m) => {
                        versions.insert(num, Arc::new(m));
                    }
                    Err(e) if e.unsupported => {
                        tracing::warn!(version = %vdir.display(), reason = %e.message, "skipped");
                        skipped = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            if versions.is_empty() && skipped {
                continue;
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

    /// A repository of models built elsewhere (tests, embedders).
    pub fn from_models(models: impl IntoIterator<Item = Model>) -> Self {
        let mut map: BTreeMap<String, BTreeMap<u64, Arc<Model>>> = BTreeMap::new();
        for m in models {
            let v = m.manifest.version.parse::<u64>().unwrap_or(0);
            map.entry(m.manifest.name.clone())
                .or_default()
                .insert(v, Arc::new(m));
        }
        Repository { models: map }
    }

    /// A version by name, or the highest version when `version` is `None`.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<&Arc<Model>, CoreError> {
        let versions = self
            .models
            .get(name)
            .ok_or_else(|| CoreError::ModelNotFound(name.to_string()))?;
        let found = match version {
            None => versions.values().next_back(),
            Some(v) => v.parse::<u64>().ok().and_then(|n| versions.get(&n)),
        };
        found.ok_or_else(|| match version {
            None => CoreError::ModelNotFound(name.to_string()),
            Some(v) => CoreError::VersionNotFound(name.to_string(), v.to_string()),
        })
    }

    /// A version by number.
    pub fn get_number(&self, name: &str, version: u64) -> Result<&Arc<Model>, CoreError> {
        self.models
            .get(name)
            .ok_or_else(|| CoreError::ModelNotFound(name.to_string()))?
            .get(&version)
            .ok_or_else(|| CoreError::VersionNotFound(name.to_string(), version.to_string()))
    }

    /// The versions of one model, oldest first.
    pub fn versions(&self, name: &str) -> Result<&BTreeMap<u64, Arc<Model>>, CoreError> {
        self.models
            .get(name)
            .ok_or_else(|| CoreError::ModelNotFound(name.to_string()))
    }

    /// Every loaded version.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values().flat_map(|v| v.values())
    }
}

impl Model {
    /// Runs the task's warm-up input `runs` times, so that the first real
    /// requests do not pay for lazy allocations. Blocking.
    pub fn warm_up(&self, runs: usize) -> Result<(), LoadError> {
        let input = self.task.warmup_input();
        for _ in 0..runs {
            self.backend
                .infer(&input)
                .map_err(|e| err(&self.dir, format!("warm-up inference failed: {e}")))?;
        }
        Ok(())
    }
}

/// Verification on the scripted backend: the checks that stop a bad model
/// version from serving, without ONNX Runtime.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::{forecaster_manifest, FixedLoader, TestBackend};

    /// `root/m/1/{model.toml, model.onnx}` with a correct hash, then `edit`.
    fn repo_dir(edit: impl FnOnce(&mut Manifest)) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m/1");
        fs::create_dir_all(&dir).unwrap();
        let graph = b"not a real graph: the scripted backend ignores it";
        fs::write(dir.join("model.onnx"), graph).unwrap();
        let mut manifest = forecaster_manifest("m", 3, 4);
        manifest.graph_sha256 = hex::encode(Sha256::digest(graph));
        edit(&mut manifest);
        fs::write(dir.join("model.toml"), toml::to_string(&manifest).unwrap()).unwrap();
        root
    }

    fn load(root: &Path) -> Result<Repository, LoadError> {
        Repository::load(root, &FixedLoader(TestBackend::forecaster(3, 1, 1)))
    }

    fn refusal(root: &Path) -> LoadError {
        match load(root) {
            Ok(_) => panic!("{} loaded, but must be refused", root.display()),
            Err(e) => e,
        }
    }

    #[test]
    fn a_matching_version_loads_and_resolves() {
        let root = repo_dir(|_| {});
        let repo = load(root.path()).unwrap();
        assert_eq!(repo.get("m", None).unwrap().manifest.version, "1");
        assert_eq!(
            repo.get("m", Some("2")).err(),
            Some(CoreError::VersionNotFound("m".into(), "2".into()))
        );
        assert_eq!(
            repo.get("x", None).err(),
            Some(CoreError::ModelNotFound("x".into()))
        );
    }

    #[test]
    fn a_wrong_hash_is_refused_naming_the_file() {
        let root = repo_dir(|m| m.graph_sha256 = "00".repeat(32));
        let e = refusal(root.path());
        assert!(e.path.ends_with("m/1/model.onnx"), "{e}");
        assert!(e.message.contains("sha256"), "{e}");
    }

    #[test]
    fn a_manifest_that_disagrees_with_the_graph_is_refused() {
        // The backend's graph takes windows of 3; the manifest claims 5.
        let root = repo_dir(|m| m.inputs[0].shape = vec![-1, 5, 1]);
        let e = refusal(root.path());
        assert!(e.message.contains("shape"), "{e}");
        let root = repo_dir(|m| m.outputs[0].name = "other".into());
        assert!(refusal(root.path()).message.contains("outputs"));
    }

    #[test]
    fn a_version_in_the_wrong_directory_is_refused() {
        let root = repo_dir(|m| m.version = "2".into());
        let e = refusal(root.path());
        assert!(e.message.contains("lives in m/1"), "{e}");
    }
}

//! The models directory as model control reads it: which version directories
//! are complete, a fingerprint that tells when one changed, and the blocking
//! work of readying one (verify, warm up, golden gate) on a thread of its own.
//!
//! A version directory counts once it holds `model.toml`. Operators write the
//! manifest last (or build the directory under a hidden or non-numeric name,
//! such as `.3.tmp`, and rename it into place), so a directory still being
//! copied is never picked up half-written. If a graph is still being written
//! when its manifest appears anyway, the sha256 pin refuses it, and the
//! fingerprint (names, sizes and modification times of every file) changing
//! when the copy completes makes polling try again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::backend::Loader;
use crate::golden::{self, GateReport};
use crate::policy::Policy;
use crate::repository::{load_version, Model};

pub(crate) const MANIFEST: &str = "model.toml";
pub(crate) const POLICY: &str = "policy.toml";

/// What a version directory held when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<(String, u64, Option<SystemTime>)>);

#[derive(Debug, Clone)]
pub(crate) struct VersionDir {
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
}

fn visible(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.')
}

/// Whether `name` may name a model directory: one plain, visible component
/// (a name from a URL never walks out of the models directory).
pub(crate) fn valid_model_name(name: &str) -> bool {
    visible(name) && !name.contains(['/', '\\', '\0']) && name != ".."
}

/// The model directories under `root`.
pub(crate) fn model_names(root: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for e in fs::read_dir(root)? {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            if valid_model_name(n) && e.path().is_dir() {
                names.insert(n.to_string());
            }
        }
    }
    Ok(names)
}

fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    let mut files = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        if meta.is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            files.push((name, meta.len(), meta.modified().ok()));
        }
    }
    files.sort();
    Ok(Fingerprint(files))
}

/// The complete version directories of one model (numbered, holding a
/// manifest), or `None` when the model directory does not exist.
pub(crate) fn versions(model_dir: &Path) -> std::io::Result<Option<BTreeMap<u64, VersionDir>>> {
    let rd = match fs::read_dir(model_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = BTreeMap::new();
    for e in rd {
        let path = e?.path();
        let Some(v) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if path.is_dir() && path.join(MANIFEST).is_file() {
            let fingerprint = fingerprint(&path)?;
            out.insert(v, VersionDir { path, fingerprint });
        }
    }
    Ok(Some(out))
}

/// Numbered directories of one model that have no manifest (yet).
pub(crate) fn incomplete(model_dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(model_dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.parse::<u64>().is_ok())
                && !p.join(MANIFEST).is_file()
        })
        .collect();
    out.sort();
    out
}

/// `<model>/policy.toml`, when there is one.
pub(crate) fn read_policy(model_dir: &Path) -> Result<Option<Policy>, String> {
    let path = model_dir.join(POLICY);
    match fs::read_to_string(&path) {
        Ok(text) => Policy::from_toml(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// The step a version failed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The version's graph format needs a runtime this build does not have
    /// (`format = "torchscript"` without the `torch` feature).
    Unsupported,
    /// Reading the manifest, the sha256 pin, loading the graph, comparing
    /// the manifest with the graph.
    Verify,
    Warmup,
    /// Reproducing `golden.json`.
    Golden,
}

impl Stage {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stage::Unsupported => "unsupported",
            Stage::Verify => "verify",
            Stage::Warmup => "warmup",
            Stage::Golden => "golden",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} failed: {}: {message}", stage.name(), path.display())]
pub(crate) struct Failure {
    pub stage: Stage,
    /// The file (or directory) to blame.
    pub path: PathBuf,
    pub message: String,
}

impl Failure {
    fn at(stage: Stage, path: &Path, message: &str) -> Self {
        Failure {
            stage,
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Verifies, loads, warms up and gates one version. Blocking. With
/// `background`, the thread lowers its own priority once the graph's sessions
/// exist (threads a session starts inherit the priority of the thread that
/// built it, so they are built first): warm-up and the golden cases then yield
/// the CPU to serving.
pub(crate) fn prepare(
    dir: &Path,
    loader: &dyn Loader,
    warmup_runs: usize,
    background: bool,
) -> Result<(Model, Option<GateReport>), Failure> {
    let model = load_version(dir, loader).map_err(|e| {
        let stage = if e.unsupported {
            Stage::Unsupported
        } else {
            Stage::Verify
        };
        Failure::at(stage, &e.path, &e.message)
    })?;
    if background {
        lower_thread_priority();
    }
    model
        .warm_up(warmup_runs)
        .map_err(|e| Failure::at(Stage::Warmup, &e.path, &e.message))?;
    let report =
        golden::check(&model).map_err(|e| Failure::at(Stage::Golden, &e.path, &e.message))?;
    Ok((model, report))
}

/// `prepare` on a thread of its own (never a runtime worker, never the shared
/// blocking pool, whose threads must keep their priority).
pub(crate) async fn prepare_in_background(
    dir: PathBuf,
    loader: Arc<dyn Loader>,
    warmup_runs: usize,
) -> Result<(Model, Option<GateReport>), Failure> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("inferd-model-load".into())
        .spawn({
            let dir = dir.clone();
            move || {
                let _ = tx.send(prepare(&dir, loader.as_ref(), warmup_runs, true));
                // The graph bytes, the golden cases and the warm-up's buffers
                // are freed by now, in this thread's arena.
                crate::memory::trim();
            }
        });
    if let Err(e) = spawned {
        return Err(Failure::at(
            Stage::Verify,
            &dir,
            &format!("cannot start a loader thread: {e}"),
        ));
    }
    rx.await.unwrap_or_else(|_| {
        Err(Failure::at(
            Stage::Verify,
            &dir,
            "the loader thread panicked",
        ))
    })
}

/// How far below normal a loading thread runs (the nice value it adds).
const LOADER_NICE: i32 = 10;

fn lower_thread_priority() {
    crate::slots::nice_current_thread(LOADER_NICE);
}

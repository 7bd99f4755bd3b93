//! Model control on the scripted backend, with real directories: loads beside
//! the serving version, refusals that leave it serving, policies, unloads with
//! requests holding the old version, serialization, polling and the canary.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::*;
use crate::admission::Admission;
use crate::backend::testing::{forecaster_manifest, FixedLoader, TestBackend};
use crate::deployment::Target;
use crate::pipeline::Limits;

const WINDOW: usize = 2;

/// Writes `root/name/version/` with a graph, a manifest pinning it and a
/// golden file whose expectations are `expect(a, b)` for a window [a, b]
/// (the scripted forecaster answers a + b).
fn write_version(root: &Path, name: &str, version: u64, expect: impl Fn(f64, f64) -> f64) {
    let dir = root.join(name).join(version.to_string());
    fs::create_dir_all(&dir).unwrap();
    let graph = format!("scripted graph {name} {version}");
    fs::write(dir.join("model.onnx"), &graph).unwrap();
    let cases: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            let (a, b) = (i as f64, 1.0);
            serde_json::json!({"source": format!("case {i}"), "input": [[a], [b]],
                "expected": {"forecast": {"y": expect(a, b)}}})
        })
        .collect();
    fs::write(
        dir.join("golden.json"),
        serde_json::json!({"tolerance": 1e-6, "cases": cases}).to_string(),
    )
    .unwrap();
    let mut m = forecaster_manifest(name, WINDOW, 8);
    m.version = version.to_string();
    m.graph_sha256 = hex::encode(Sha256::digest(graph.as_bytes()));
    // The manifest last, as operators are told to.
    fs::write(dir.join(disk::MANIFEST), toml::to_string(&m).unwrap()).unwrap();
}

fn good(root: &Path, name: &str, version: u64) {
    write_version(root, name, version, |a, b| a + b);
}

struct Fixture {
    _root: tempfile::TempDir,
    root: PathBuf,
    control: Arc<ModelControl>,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    backend: Arc<TestBackend>,
}

/// A serving control over `root` with `prepare(root)` on disk.
fn start(prepare: impl FnOnce(&Path)) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    prepare(&root);
    let metrics = Arc::new(Metrics::default());
    let limits = Limits {
        max_instances: 8,
        timeout_ms: 2000,
        queue: Default::default(),
    };
    let pipeline = Arc::new(Pipeline::new(
        Admission::new(2, 64, metrics.clone()),
        None,
        metrics.clone(),
        limits,
    ));
    let lifecycle = Arc::new(Lifecycle::new(metrics.clone()));
    let backend = TestBackend::forecaster(WINDOW, 1, 1);
    let control = Arc::new(ModelControl::new(
        Settings {
            root: root.clone(),
            warmup_runs: 1,
            max_batch_size: None,
            max_batch_delay_ms: None,
        },
        Arc::new(FixedLoader(backend.clone())),
        pipeline,
        lifecycle.clone(),
        metrics.clone(),
    ));
    let (repo, routing) = control.load_initial().expect("start-up loads");
    assert_eq!(control.deploy_initial(repo, routing), Phase::Serving);
    Fixture {
        _root: tmp,
        root,
        control,
        lifecycle,
        metrics,
        backend,
    }
}

impl Fixture {
    /// A request's hold on the model's default version, as a request in
    /// flight keeps it.
    fn hold(&self, name: &str) -> Target {
        self.lifecycle
            .admit()
            .unwrap()
            .resolve(name, None, None)
            .unwrap()
    }

    fn default_version(&self, name: &str) -> Result<String, CoreError> {
        let d = self.lifecycle.admit()?;
        let t = d.resolve(name, None, None)?;
        Ok(t.model.manifest.version.clone())
    }

    async fn state(&self, name: &str, version: u64) -> (State, String) {
        let index = self.control.index().await.unwrap();
        let e = index
            .into_iter()
            .find(|e| e.name == name && e.version == version)
            .expect("listed");
        (e.state, e.reason)
    }

    fn serving(&self, name: &str) -> Vec<u64> {
        let d = self.lifecycle.admit().unwrap();
        let versions = d.repository().versions(name).unwrap();
        versions.keys().copied().collect()
    }

    fn gauge(&self, name: &str, version: &str, state: &str) -> i64 {
        self.metrics
            .model_state
            .with_label_values(&[name, version, state])
            .get()
    }
}

fn specific(versions: &[u64]) -> Policy {
    Policy::from_json(
        &serde_json::json!({"version_policy": {"specific": {"versions": versions}}}).to_string(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_new_version_loads_beside_the_serving_one_and_takes_over() {
    let f = start(|r| good(r, "m", 1));
    let held = f.hold("m");
    good(&f.root, "m", 2);
    let out = f.control.load("m", None).await.unwrap();
    assert_eq!((out.loaded, out.swapped), (vec![2], true));
    assert_eq!(f.default_version("m").unwrap(), "2");
    assert_eq!(
        held.model.manifest.version, "1",
        "a resolved request keeps its version"
    );
    assert_eq!(f.state("m", 2).await, (State::Ready, String::new()));
    assert_eq!(f.gauge("m", "2", "READY"), 1);
    assert_eq!(f.gauge("m", "2", "LOADING"), 0);
    // Nothing changed on disk: a second load swaps nothing.
    let again = f.control.load("m", None).await.unwrap();
    assert_eq!((again.loaded.len(), again.swapped), (0, false));
}

#[tokio::test]
async fn corrupt_mismatched_and_golden_missing_versions_are_refused_and_v1_serves_on() {
    let f = start(|r| good(r, "m", 1));
    // 2: the graph is not the one the manifest pins.
    good(&f.root, "m", 2);
    fs::write(f.root.join("m/2/model.onnx"), "corrupted bytes").unwrap();
    let e = f
        .control
        .load("m", Some(specific(&[1, 2])))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CoreError::LoadFailed(m) if m.contains("sha256")),
        "{e}"
    );
    assert_eq!(f.default_version("m").unwrap(), "1");
    let (state, reason) = f.state("m", 2).await;
    assert_eq!(state, State::Unavailable);
    assert!(
        reason.starts_with("verify failed") && reason.contains("sha256"),
        "{reason}"
    );

    // 3: a manifest that disagrees with the graph (window 5, graph takes 2).
    good(&f.root, "m", 3);
    let path = f.root.join("m/3/model.toml");
    let mut m: crate::manifest::Manifest =
        toml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    m.inputs[0].shape = vec![-1, 5, 1];
    fs::write(&path, toml::to_string(&m).unwrap()).unwrap();
    let e = f
        .control
        .load("m", Some(specific(&[1, 3])))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("shape"), "{e}");

    // 4: outputs that miss the golden file.
    write_version(&f.root, "m", 4, |a, b| a + b + 0.5);
    let e = f
        .control
        .load("m", Some(specific(&[1, 4])))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("golden") && e.to_string().contains("tolerance"),
        "{e}"
    );

    assert_eq!(f.default_version("m").unwrap(), "1");
    let gate = |v: &str, stage: &str| {
        f.metrics
            .model_gate_failures
            .with_label_values(&["m", v, stage])
            .get()
    };
    assert_eq!(
        (
            gate("2", "verify"),
            gate("3", "verify"),
            gate("4", "golden")
        ),
        (1, 1, 1)
    );
    // The scripted backend still answers: traffic was never interrupted.
    let d = f.lifecycle.admit().unwrap();
    assert_eq!(d.repository().versions("m").unwrap().len(), 1);
}

#[tokio::test]
async fn a_policy_retires_versions_and_unload_takes_the_model_out() {
    let f = start(|r| {
        good(r, "m", 1);
        good(r, "m", 2);
    });
    assert_eq!(f.default_version("m").unwrap(), "2");
    let held = f.hold("m");
    let out = f.control.load("m", Some(specific(&[1]))).await.unwrap();
    assert_eq!(out.unloaded, vec![2]);
    assert_eq!(f.default_version("m").unwrap(), "1");
    let d = f.lifecycle.admit().unwrap();
    assert_eq!(
        d.resolve("m", Some("2"), None).err(),
        Some(CoreError::VersionNotFound("m".into(), "2".into()))
    );
    let (state, reason) = f.state("m", 2).await;
    assert_eq!(state, State::Unavailable);
    assert!(reason.contains("unloaded"), "{reason}");
    // The request that resolved version 2 before the swap still runs on it.
    let input = crate::backend::InputBatch::Windows {
        data: vec![1.0, 2.0],
        batch: 1,
        steps: WINDOW,
        features: 1,
    };
    assert!(held.model.backend.infer(&input).is_ok());
    assert_eq!(held.model.manifest.version, "2");

    f.control.unload("m").await.unwrap();
    assert_eq!(
        f.default_version("m").err(),
        Some(CoreError::ModelNotFound("m".into()))
    );
    assert_eq!(
        f.control.unload("m").await.err(),
        Some(CoreError::ModelNotFound("m".into()))
    );
    // The remembered policy still applies on the next load.
    f.control.load("m", None).await.unwrap();
    assert_eq!(f.default_version("m").unwrap(), "1");
    assert_eq!(
        f.control.load("../m", None).await.err(),
        Some(CoreError::ModelNotFound("../m".into()))
    );
}

#[tokio::test]
async fn loads_and_unloads_of_one_model_never_overlap() {
    let f = start(|r| good(r, "m", 1));
    good(&f.root, "m", 2);
    // Warm-up of version 2 blocks inside the backend until the gate opens.
    f.backend.close_gate();
    let loading = {
        let c = f.control.clone();
        tokio::spawn(async move { c.load("m", None).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while f.backend.running() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the load never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(f.state("m", 2).await.0, State::Loading);
    assert_eq!(f.gauge("m", "2", "LOADING"), 1);
    assert_eq!(
        f.control.unload("m").await.err(),
        Some(CoreError::ModelBusy("m".into()))
    );
    assert_eq!(
        f.control.load("m", None).await.err(),
        Some(CoreError::ModelBusy("m".into()))
    );
    assert_eq!(
        f.default_version("m").unwrap(),
        "1",
        "still serving meanwhile"
    );
    f.backend.open_gate();
    assert_eq!(loading.await.unwrap().unwrap().loaded, vec![2]);
    f.control.unload("m").await.unwrap();
}

#[tokio::test]
async fn polling_loads_complete_versions_ignores_half_written_ones_and_retires_removed_ones() {
    let f = start(|r| good(r, "m", 1));
    // Half-written: the graph is there, the manifest (written last) is not.
    let half = f.root.join("m/2");
    fs::create_dir_all(&half).unwrap();
    fs::write(half.join("model.onnx"), "partial").unwrap();
    // Staged under a hidden name, to be renamed into place.
    good(&f.root, "m", 9);
    fs::rename(f.root.join("m/9"), f.root.join("m/.3.tmp")).unwrap();
    f.control.poll_once().await;
    assert_eq!(f.default_version("m").unwrap(), "1");
    let index = f.control.index().await.unwrap();
    assert!(index.iter().all(|e| e.version == 1), "{index:?}");

    fs::remove_dir_all(&half).unwrap();
    good(&f.root, "m", 2);
    f.control.poll_once().await;
    assert_eq!(f.default_version("m").unwrap(), "2");

    // A refused version is not retried every poll, only once its files change.
    write_version(&f.root, "m", 4, |a, b| a * b);
    f.control.poll_once().await;
    f.control.poll_once().await;
    let failed = f
        .metrics
        .model_loads
        .with_label_values(&["m", "4", "failed"])
        .get();
    assert_eq!(failed, 1);
    assert_eq!(f.default_version("m").unwrap(), "2");

    fs::remove_dir_all(f.root.join("m/4")).unwrap();
    fs::remove_dir_all(f.root.join("m/2")).unwrap();
    f.control.poll_once().await;
    assert_eq!(f.default_version("m").unwrap(), "1");
    // A whole model appears, and one disappears.
    good(&f.root, "n", 1);
    f.control.poll_once().await;
    assert_eq!(f.default_version("n").unwrap(), "1");
    fs::remove_dir_all(f.root.join("n")).unwrap();
    f.control.poll_once().await;
    assert_eq!(
        f.default_version("n").err(),
        Some(CoreError::ModelNotFound("n".into()))
    );
    // An operator's unload holds against polling.
    f.control.unload("m").await.unwrap();
    f.control.poll_once().await;
    assert!(f.default_version("m").is_err());
}

#[tokio::test]
async fn a_canary_takes_its_share_by_request_id() {
    let f = start(|r| {
        good(r, "m", 1);
        good(r, "m", 2);
    });
    let policy = Policy::from_json(
        r#"{"version_policy": {"all": {}}, "default_version": 1,
            "canary": {"version": 2, "weight": 0.1}}"#,
    )
    .unwrap();
    f.control.load("m", Some(policy)).await.unwrap();
    let d = f.lifecycle.admit().unwrap();
    let pick = |id: &str| {
        d.resolve("m", None, Some(id))
            .unwrap()
            .model
            .manifest
            .version
            .clone()
    };
    let n = 10_000;
    let on_canary = (0..n)
        .filter(|i| pick(&uuid::Uuid::from_u128(*i as u128 * 7919).to_string()) == "2")
        .count();
    let share = on_canary as f64 / n as f64;
    assert!((0.085..=0.115).contains(&share), "canary share {share}");
    for i in 0..200 {
        let id = format!("retry-{i}");
        assert_eq!(pick(&id), pick(&id));
    }
    // A canary that is not serving is refused, and routing stays as it was.
    let bad = Policy::from_json(r#"{"canary": {"version": 7, "weight": 0.5}}"#).unwrap();
    let e = f.control.load("m", Some(bad)).await.unwrap_err();
    assert!(e.to_string().contains("canary"), "{e}");
    assert_eq!(
        f.lifecycle.admit().unwrap().routing("m").unwrap().canary,
        Some((2, 0.1))
    );
}

#[tokio::test]
async fn a_refused_version_pushes_no_serving_version_out() {
    let f = start(|r| {
        good(r, "m", 1);
        good(r, "m", 2);
    });
    let latest_two =
        Policy::from_json(r#"{"version_policy": {"latest": {"num_versions": 2}}}"#).unwrap();
    f.control.load("m", Some(latest_two)).await.unwrap();
    // 3 would displace 1 under `latest 2`, but it misses its golden file.
    write_version(&f.root, "m", 3, |a, b| a - b);
    let e = f.control.load("m", None).await.unwrap_err();
    assert!(e.to_string().contains("golden"), "{e}");
    assert_eq!(f.serving("m"), vec![1, 2]);
    assert_eq!(f.state("m", 1).await.0, State::Ready);
    assert_eq!(f.default_version("m").unwrap(), "2");
    // Nor on the polls that follow, which leave the unchanged bad version out.
    f.control.poll_once().await;
    assert_eq!(f.serving("m"), vec![1, 2]);
}

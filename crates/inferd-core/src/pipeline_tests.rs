//! The pipeline on the scripted backend: splitting, order, single-flight and
//! the instance limit, with no ONNX Runtime and no HTTP.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::*;
use crate::backend::testing::{forecaster_model, TestBackend};

struct Rig {
    backend: Arc<TestBackend>,
    pipeline: Arc<Pipeline>,
    target: Target,
    metrics: Arc<Metrics>,
    _deployment: Deployment,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.backend.open_gate();
    }
}

fn rig(max_batch_size: usize, cached: bool) -> Rig {
    let backend = TestBackend::forecaster(2, 1, 1);
    let metrics = Arc::new(Metrics::default());
    let cache = cached.then(|| {
        Arc::new(Cache::memory(
            1 << 20,
            Duration::from_secs(60),
            metrics.clone(),
        ))
    });
    let limits = Limits {
        max_instances: 8,
        timeout_ms: 1000,
        queue: Default::default(),
    };
    let pipeline = Arc::new(Pipeline::new(
        Admission::new(1, 64, metrics.clone()),
        cache,
        metrics.clone(),
        limits,
    ));
    let model = forecaster_model("m", 2, max_batch_size, backend.clone());
    let deployment = pipeline.deploy(Repository::from_models([model]), None, None);
    let target = deployment.resolve("m", None, None).expect("deployed");
    Rig {
        backend,
        pipeline,
        target,
        metrics,
        _deployment: deployment,
    }
}

type Handle = tokio::task::JoinHandle<Result<Predicted, CoreError>>;

fn windows(values: &[f32]) -> InputBatch {
    InputBatch::Windows {
        data: values.iter().flat_map(|v| [*v, 0.0]).collect(),
        batch: values.len(),
        steps: 2,
        features: 1,
    }
}

fn forecast(p: &Prediction) -> f32 {
    match p {
        Prediction::Forecast { forecast } => forecast["y"],
        other => panic!("not a forecast: {other:?}"),
    }
}

impl Rig {
    async fn predict(&self, values: &[f32]) -> Result<Predicted, CoreError> {
        predict(&self.pipeline, &self.target, values).await
    }

    fn spawn(&self, values: &[f32]) -> Handle {
        let (p, t, v) = (self.pipeline.clone(), self.target.clone(), values.to_vec());
        tokio::spawn(async move { predict(&p, &t, &v).await })
    }

    async fn until(&self, what: &str, cond: impl Fn(&Rig) -> bool) {
        let t = Instant::now();
        while !cond(self) {
            assert!(t.elapsed() < Duration::from_secs(5), "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A leader for `v` parked inside the model, and `followers` more requests
    /// for `v` that have missed the cache and joined its flight.
    async fn flight(&self, v: f32, followers: usize) -> (Handle, Vec<Handle>) {
        self.backend.close_gate();
        let leader = self.spawn(&[v]);
        self.until("the leader runs", |r| r.backend.running() == 1)
            .await;
        let misses = self.misses();
        let rest: Vec<_> = (0..followers).map(|_| self.spawn(&[v])).collect();
        // Each follower joins the flight right after its miss, with no await in
        // between; the pause covers the gap between the count and the join.
        self.until("the followers missed", |r| {
            r.misses() == misses + followers as u64
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        (leader, rest)
    }

    fn misses(&self) -> u64 {
        self.metrics
            .cache_requests
            .with_label_values(&["miss"])
            .get()
    }
}

async fn predict(p: &Pipeline, t: &Target, values: &[f32]) -> Result<Predicted, CoreError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut timings = Timings::default();
    p.predict(
        t,
        windows(values),
        deadline,
        false,
        TraceRef::default(),
        &mut timings,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_split_into_bounded_batches_and_keep_their_order() {
    let r = rig(2, false);
    let values = [5.0, 1.0, 4.0, 2.0, 3.0];
    let done = r.predict(&values).await.unwrap();
    let got: Vec<f32> = done.predictions.iter().map(forecast).collect();
    assert_eq!(got, values);
    assert_eq!(done.cached, vec![false; 5]);
    let batches = r.backend.batches();
    assert!(batches.iter().all(|b| b.len() <= 2), "{batches:?}");
    assert_eq!(batches.concat(), values);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_misses_run_the_model_once() {
    let r = rig(8, true);
    let (leader, followers) = r.flight(7.0, 2).await;
    r.backend.open_gate();
    let lead = leader.await.unwrap().unwrap();
    assert_eq!(forecast(&lead.predictions[0]), 7.0);
    for f in followers {
        let f = f.await.unwrap().unwrap();
        assert_eq!(f.predictions, lead.predictions);
        assert_eq!(f.cached, vec![false], "a shared result is not a cache hit");
    }
    assert_eq!(r.backend.batches(), vec![vec![7.0]], "the model ran once");
    assert_eq!(r.metrics.cache_coalesced.get(), 2);
    // Now it is cached: no model run, a hit.
    let again = r.predict(&[7.0]).await.unwrap();
    assert_eq!(again.cached, vec![true]);
    assert_eq!(r.backend.batches().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_leader_leaves_runs_the_instance_itself() {
    let r = rig(8, true);
    let (leader, mut followers) = r.flight(3.0, 1).await;
    let follower = followers.remove(0);
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    r.backend.open_gate();
    let f = follower.await.unwrap().unwrap();
    assert_eq!(forecast(&f.predictions[0]), 3.0);
    assert_eq!(r.metrics.cache_coalesced.get(), 0);
    // The abandoned batch still ran (it was inside the model); the follower's own run
    // came after it.
    assert_eq!(r.backend.batches(), vec![vec![3.0], vec![3.0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_failure_reaches_its_followers_and_is_not_cached() {
    let r = rig(8, true);
    r.backend.fail_next(1);
    let (leader, mut followers) = r.flight(9.0, 1).await;
    let follower = followers.remove(0);
    r.backend.open_gate();
    assert!(matches!(leader.await.unwrap(), Err(CoreError::Backend(_))));
    assert!(matches!(
        follower.await.unwrap(),
        Err(CoreError::Backend(_))
    ));
    assert_eq!(r.backend.batches().len(), 1);
    let retry = r.predict(&[9.0]).await.unwrap();
    assert_eq!(retry.cached, vec![false]);
    assert_eq!(forecast(&retry.predictions[0]), 9.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_cached_requests_run_only_the_misses() {
    let r = rig(8, true);
    r.predict(&[1.0, 2.0]).await.unwrap();
    let done = r.predict(&[2.0, 3.0, 1.0]).await.unwrap();
    let got: Vec<f32> = done.predictions.iter().map(forecast).collect();
    assert_eq!(got, vec![2.0, 3.0, 1.0]);
    assert_eq!(done.cached, vec![true, false, true]);
    assert_eq!(r.backend.batches(), vec![vec![1.0, 2.0], vec![3.0]]);
}

#[tokio::test]
async fn the_instance_limit_and_validation_come_before_the_model() {
    let r = rig(8, false);
    let json = |v: Vec<serde_json::Value>| Instances::Json(v);
    // The JSON API's form: each instance's text.
    let raw = |s: &str| Instances::Raw(serde_json::from_str(s).unwrap());
    let err = r.pipeline.decode(&r.target, &json(vec![])).unwrap_err();
    assert!(
        matches!(err, CoreError::Invalid { ref field, .. } if field.as_deref() == Some("instances"))
    );
    let nine = vec![json!([[1.0], [2.0]]); 9];
    let err = r.pipeline.decode(&r.target, &json(nine)).unwrap_err();
    assert!(err.to_string().contains("at most 8 instances"), "{err}");
    for bad in [
        json(vec![json!([[1.0], ["x"]])]),
        raw(r#"[[[1.0], ["x"]]]"#),
    ] {
        let err = r.pipeline.decode(&r.target, &bad).unwrap_err();
        assert!(
            matches!(err, CoreError::Invalid { ref field, .. } if field.as_deref() == Some("instances[0][1][0]")),
            "{err}"
        );
    }
    for good in [json(vec![json!([[1.0], [2.0]])]), raw("[[[1.0], [2.0]]]")] {
        assert!(r.pipeline.decode(&r.target, &good).is_ok());
    }
    assert!(r.backend.batches().is_empty());
}

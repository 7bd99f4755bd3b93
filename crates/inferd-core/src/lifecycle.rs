//! The server's lifecycle as one value that front doors ask "may I serve, and
//! with which deployment?", instead of reading separate ready and draining flags
//! and a loaded-once repository.
//!
//! Phases go `Starting` -> `Serving` -> `Draining`, and never back: a drain that
//! begins while models are still loading wins, and the deployment that arrives
//! afterwards is kept (for the listings) but never admits work. The current
//! deployment sits behind an `ArcSwap`: the request path reads it without a lock,
//! and a later deployment replaces it atomically while requests that already
//! hold the old one finish on it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::deployment::Deployment;
use super::error::CoreError;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Where the server is in its life.
pub enum Phase {
    /// Models are loading or warming up.
    Starting,
    /// Every model is loaded and warmed up.
    Serving,
    /// Shutdown began: no new work.
    Draining,
}

impl Phase {
    /// The readiness probes' word for it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "ready",
            Phase::Draining => "draining",
        }
    }
}

struct State {
    phase: Phase,
    deployment: Option<Arc<Deployment>>,
}

/// The phase and the serving deployment, read without a lock.
pub struct Lifecycle {
    state: ArcSwap<State>,
    /// Serialises the writers (start, replace, drain); readers never take it.
    write: std::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl Lifecycle {
    /// A starting server with no deployment.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.ready.set(0);
        Lifecycle {
            state: ArcSwap::from_pointee(State {
                phase: Phase::Starting,
                deployment: None,
            }),
            write: std::sync::Mutex::new(()),
            metrics,
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.state.load().phase
    }

    /// The deployment to serve a new request with, or why there is none.
    pub fn admit(&self) -> Result<Arc<Deployment>, CoreError> {
        let s = self.state.load();
        match (s.phase, &s.deployment) {
            (Phase::Serving, Some(d)) => Ok(d.clone()),
            (Phase::Draining, _) => Err(CoreError::Draining),
            _ => Err(CoreError::NotReady),
        }
    }

    /// The current deployment whatever the phase (model listings answer while
    /// draining too), or `None` before the first one.
    pub fn deployment(&self) -> Option<Arc<Deployment>> {
        self.state.load().deployment.clone()
    }

    /// Installs a deployment. The first one makes a starting server ready;
    /// later ones replace the current deployment while serving. Returns the
    /// phase afterwards (`Draining` if shutdown began first).
    pub fn deploy(&self, deployment: Deployment) -> Phase {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let phase = match self.state.load().phase {
            Phase::Draining => Phase::Draining,
            _ => Phase::Serving,
        };
        self.state.store(Arc::new(State {
            phase,
            deployment: Some(Arc::new(deployment)),
        }));
        self.metrics.ready.set(i64::from(phase == Phase::Serving));
        phase
    }

    /// Replaces the serving deployment with one built from it. The writers'
    /// lock is held while `next` builds it, so two swaps of different models
    /// never lose each other's change. Refused before the first deployment
    /// and once draining began.
    pub fn update(&self, next: impl FnOnce(&Deployment) -> Deployment) -> Result<(), CoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.state.load();
        let current = match (s.phase, &s.deployment) {
            (Phase::Serving, Some(d)) => d.clone(),
            (Phase::Draining, _) => return Err(CoreError::Draining),
            _ => return Err(CoreError::NotReady),
        };
        self.state.store(Arc::new(State {
            phase: Phase::Serving,
            deployment: Some(Arc::new(next(&current))),
        }));
        Ok(())
    }

    /// Stops admitting work, for good.
    pub fn drain(&self) {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let deployment = self.state.load().deployment.clone();
        self.state.store(Arc::new(State {
            phase: Phase::Draining,
            deployment,
        }));
        self.metrics.ready.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Admission;
    use crate::backend::testing::{forecaster_model, TestBackend};
    use crate::pipeline::{Limits, Pipeline};
    use crate::repository::Repository;

    fn deployment(p: &Pipeline, version_name: &str) -> Deployment {
        let m = forecaster_model(version_name, 2, 4, TestBackend::forecaster(2, 1, 1));
        p.deploy(Repository::from_models([m]), None, None)
    }

    fn pipeline(metrics: &Arc<Metrics>) -> Pipeline {
        let limits = Limits {
            max_instances: 8,
            timeout_ms: 1000,
            queue: Default::default(),
        };
        Pipeline::new(
            Admission::new(1, 8, metrics.clone()),
            None,
            metrics.clone(),
            limits,
        )
    }

    #[tokio::test]
    async fn phases_gate_admission_and_the_ready_gauge() {
        let metrics = Arc::new(Metrics::default());
        let p = pipeline(&metrics);
        let l = Lifecycle::new(metrics.clone());
        assert_eq!(l.admit().err(), Some(CoreError::NotReady));
        assert!(l.deployment().is_none());
        assert_eq!(l.deploy(deployment(&p, "a")), Phase::Serving);
        assert_eq!(metrics.ready.get(), 1);
        assert!(l.admit().unwrap().resolve("a", None, None).is_ok());
        l.drain();
        assert_eq!(l.admit().err(), Some(CoreError::Draining));
        assert_eq!(metrics.ready.get(), 0);
        assert!(l.deployment().is_some(), "listings still see the models");
    }

    #[tokio::test]
    async fn a_drain_during_loading_wins() {
        let metrics = Arc::new(Metrics::default());
        let p = pipeline(&metrics);
        let l = Lifecycle::new(metrics.clone());
        l.drain();
        assert_eq!(l.deploy(deployment(&p, "a")), Phase::Draining);
        assert_eq!(l.admit().err(), Some(CoreError::Draining));
        assert_eq!(metrics.ready.get(), 0);
    }

    #[tokio::test]
    async fn a_replaced_deployment_serves_the_requests_that_hold_it() {
        let metrics = Arc::new(Metrics::default());
        let p = pipeline(&metrics);
        let l = Lifecycle::new(metrics.clone());
        l.deploy(deployment(&p, "old"));
        let held = l.admit().unwrap();
        l.deploy(deployment(&p, "new"));
        assert!(held.resolve("old", None, None).is_ok());
        let now = l.admit().unwrap();
        assert!(now.resolve("new", None, None).is_ok());
        assert_eq!(
            now.resolve("old", None, None).err(),
            Some(CoreError::ModelNotFound("old".into()))
        );
    }
}

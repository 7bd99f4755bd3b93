//! A deployment: a loaded repository with a running batcher for each of its
//! model versions. It is the unit the lifecycle hands out and, later, replaces
//! while serving: a request resolves its model to a `Target` once, and keeps
//! using that version's batcher even if a newer deployment takes over meanwhile.
//! A batcher stops when the last `Target` holding it is dropped, so an old
//! version is freed after its last request.

use std::collections::HashMap;
use std::sync::Arc;

use super::batcher::Batcher;
use super::error::CoreError;
use super::policy::Routing;
use super::repository::{Model, Repository};

/// The models that serve, with a running batcher for each version.
pub struct Deployment {
    repo: Repository,
    /// By name, then version: looked up with the model's own strings, so
    /// resolving a request allocates nothing.
    batchers: HashMap<String, HashMap<String, Batcher>>,
    /// Where requests that name no version go, per model; a model without an
    /// entry answers with its highest version.
    routing: HashMap<String, Routing>,
}

/// One model version a request runs on, with the batcher that runs it.
#[derive(Clone)]
pub struct Target {
    /// The version.
    pub model: Arc<Model>,
    batcher: Batcher,
}

impl Target {
    pub(crate) fn batcher(&self) -> &Batcher {
        &self.batcher
    }

    /// Counts the request as on its way to this version's queue while it
    /// decodes, or refuses it now if the queue is full (`Batcher::enter`).
    pub fn enter(&self) -> Result<super::batcher::Entering, CoreError> {
        self.batcher.enter()
    }
}

impl Deployment {
    pub(crate) fn new(
        repo: Repository,
        batchers: HashMap<String, HashMap<String, Batcher>>,
        routing: HashMap<String, Routing>,
    ) -> Self {
        Deployment {
            repo,
            batchers,
            routing,
        }
    }

    /// The loaded models.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// How requests that name no version are routed for `name`.
    pub fn routing(&self, name: &str) -> Option<&Routing> {
        self.routing.get(name)
    }

    /// A version's batcher, for a later deployment that keeps the version.
    pub(crate) fn batcher_of(&self, model: &Arc<Model>) -> Option<&Batcher> {
        let (name, version) = (&model.manifest.name, &model.manifest.version);
        let mine = self.repo.get(name, Some(version)).ok()?;
        if !Arc::ptr_eq(mine, model) {
            return None;
        }
        self.batchers.get(name)?.get(version)
    }

    /// The version to run: `version`, or when `None` the model's default (or
    /// its canary, chosen by `request_id`; see `policy::Routing::pick`).
    pub fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<Target, CoreError> {
        let model = match (version, self.routing.get(name)) {
            (None, Some(r)) => self.repo.get_number(name, r.pick(name, request_id))?,
            _ => self.repo.get(name, version)?,
        };
        self.target(model)
    }

    /// `version`, or the model's default version (never the canary).
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<&Arc<Model>, CoreError> {
        match (version, self.routing.get(name)) {
            (None, Some(r)) => self.repo.get_number(name, r.default),
            _ => self.repo.get(name, version),
        }
    }

    /// The refusal that a request for `name` (`None`: the only model, when
    /// exactly one serves) and `version` gets now, if its queue refuses new
    /// work. Advisory, for front doors that refuse before reading a body: a
    /// request let through is still checked when it joins the queue. A canary
    /// split is not applied here; the default version's queue answers.
    pub fn refusal(&self, name: Option<&str>, version: Option<&str>) -> Option<CoreError> {
        let name = match name {
            Some(n) => n,
            None if self.batchers.len() == 1 => self.batchers.keys().next()?.as_str(),
            None => return None,
        };
        let model = self.model(name, version).ok()?;
        self.batchers
            .get(name)?
            .get(&model.manifest.version)?
            .refusal()
    }

    /// The fullest queue's fill against its limit (`Batcher::fill`): the
    /// part of the load signal that says work waits.
    pub fn queue_fill(&self) -> f64 {
        self.batchers
            .values()
            .flat_map(|v| v.values())
            .map(Batcher::fill)
            .fold(0.0, f64::max)
    }

    fn target(&self, model: &Arc<Model>) -> Result<Target, CoreError> {
        let batcher = self
            .batchers
            .get(&model.manifest.name)
            .and_then(|v| v.get(&model.manifest.version))
            .ok_or(CoreError::Internal("a deployed model has no batcher"))?;
        Ok(Target {
            model: model.clone(),
            batcher: batcher.clone(),
        })
    }
}

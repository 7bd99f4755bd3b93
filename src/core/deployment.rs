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
use super::repository::{Model, Repository};

pub struct Deployment {
    repo: Repository,
    /// By name, then version: looked up with the model's own strings, so
    /// resolving a request allocates nothing.
    batchers: HashMap<String, HashMap<String, Batcher>>,
}

/// One model version a request runs on, with the batcher that runs it.
#[derive(Clone)]
pub struct Target {
    pub model: Arc<Model>,
    batcher: Batcher,
}

impl Target {
    pub(crate) fn batcher(&self) -> &Batcher {
        &self.batcher
    }
}

impl Deployment {
    pub(crate) fn new(
        repo: Repository,
        batchers: HashMap<String, HashMap<String, Batcher>>,
    ) -> Self {
        Deployment { repo, batchers }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// The version to run: `version`, or the latest when `None`.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<Target, CoreError> {
        let model = self.repo.get(name, version)?;
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

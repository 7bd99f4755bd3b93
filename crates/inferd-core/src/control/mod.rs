//! Model control: loading, verifying, swapping and unloading model versions
//! while the server serves.
//!
//! A load readies every version its policy selects beside the ones serving:
//! the sha256 pin and the manifest-against-graph check, warm-up, then the
//! golden gate, on a low-priority thread of its own, one version at a time
//! across the server. Only then does one atomic swap of the deployment put
//! them into service (`Lifecycle::update`); requests already accepted finish
//! on the version they resolved, and a retired version's sessions are freed
//! with its last request. A version that fails any step never serves, and the
//! versions serving stay; the reason is kept for the index, counted in
//! `inferd_model_gate_failures_total` and logged.
//!
//! Loads and unloads of one model never overlap: a second call while one runs
//! is refused at once with `CoreError::ModelBusy`. Work runs in a task of its
//! own, so a caller that hangs up does not leave a model half-swapped.
//!
//! What triggers it is the front doors' business (the repository API) and the
//! optional poller here, which compares the models directory with what serves.

pub(crate) mod disk;
mod observe;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use self::disk::Fingerprint;
use super::backend::Loader;
use super::deployment::Deployment;
use super::error::CoreError;
use super::lifecycle::{Lifecycle, Phase};
use super::pipeline::Pipeline;
use super::policy::{Policy, Routing};
use super::repository::{LoadError, Model, Repository};
use crate::metrics::Metrics;

/// A version's state, as Triton's repository index names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Serving.
    Ready,
    /// Being verified, warmed up and gated.
    Loading,
    /// Not serving: refused, unloaded, or never loaded.
    Unavailable,
}

impl State {
    /// Every state, for the state gauge's series.
    pub const ALL: [State; 3] = [State::Ready, State::Loading, State::Unavailable];

    /// Triton's spelling.
    pub fn name(self) -> &'static str {
        match self {
            State::Ready => "READY",
            State::Loading => "LOADING",
            State::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One line of the repository index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The model.
    pub name: String,
    /// The version.
    pub version: u64,
    /// Its state.
    pub state: State,
    /// Why it is not ready (empty when it is).
    pub reason: String,
}

/// What a load changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Versions readied and swapped in.
    pub loaded: Vec<u64>,
    /// Versions taken out of service.
    pub unloaded: Vec<u64>,
    /// Whether a new deployment was swapped in.
    pub swapped: bool,
}

/// What `plan` decided for one model.
enum Planned {
    /// Its directory is gone while versions serve (polling): retire them.
    Retire,
    /// Load and retire what `Plan` says.
    Load(Plan),
}

/// A load's plan: the model's directory and policy against what serves.
struct Plan {
    on_disk: BTreeMap<u64, disk::VersionDir>,
    current: BTreeMap<u64, Arc<Model>>,
    policy: Policy,
    /// The call gave the policy (a load call's policy is remembered).
    given: bool,
    wanted: BTreeSet<u64>,
    to_load: Vec<u64>,
}

/// What readying produced: the versions to serve, those newly loaded (with
/// their files' fingerprint) and why others were refused.
struct Readied {
    keep: BTreeMap<u64, Arc<Model>>,
    loaded: Vec<(u64, Fingerprint)>,
    failures: Vec<String>,
}

/// Who asked: polling skips what an operator unloaded, and does not retry a
/// version that failed until its files change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An operator, through the repository API.
    Api,
    /// The poller.
    Poll,
}

#[derive(Debug, Clone)]
/// Where the models are and how versions are readied.
pub struct Settings {
    /// The models directory.
    pub root: PathBuf,
    /// Warm-up inferences per version (before the golden gate).
    pub warmup_runs: usize,
    /// Overrides every manifest's `[batching].max_batch_size`.
    pub max_batch_size: Option<usize>,
    /// Overrides every manifest's `[batching].max_batch_delay_ms`.
    pub max_batch_delay_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Status {
    state: State,
    reason: String,
    /// The files the state is about: a change makes polling look again.
    fingerprint: Option<Fingerprint>,
}

#[derive(Debug, Default)]
struct Entry {
    /// From the last load call's `config`; wins over `policy.toml`.
    policy: Option<Policy>,
    /// Unloaded by an operator: polling leaves the model alone until a load.
    unloaded: bool,
    versions: BTreeMap<u64, Status>,
}

/// Loads, gates, swaps and unloads model versions while the server serves.
pub struct ModelControl {
    settings: Settings,
    loader: Arc<dyn Loader>,
    pipeline: Arc<Pipeline>,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    table: Mutex<BTreeMap<String, Entry>>,
    busy: Mutex<HashSet<String>>,
    /// One version readies at a time, across models: loading competes with
    /// serving for the CPU.
    loading: tokio::sync::Semaphore,
    /// Told when a version is unloaded.
    quality: Option<Arc<crate::quality::Quality>>,
}

/// Holds a model's "operation running" mark; clears it when dropped, however
/// the operation ends.
struct Busy<'a> {
    set: &'a Mutex<HashSet<String>>,
    name: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.name);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T, CoreError>> {
    let task = tokio::task::spawn_blocking(f);
    async move {
        task.await
            .map_err(|_| CoreError::Internal("a models directory scan failed"))
    }
}

impl ModelControl {
    /// Model control over `settings.root`, building backends with `loader` and
    /// deploying through `pipeline` into `lifecycle`.
    pub fn new(
        settings: Settings,
        loader: Arc<dyn Loader>,
        pipeline: Arc<Pipeline>,
        lifecycle: Arc<Lifecycle>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ModelControl {
            settings,
            loader,
            pipeline,
            lifecycle,
            metrics,
            table: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(HashSet::new()),
            loading: tokio::sync::Semaphore::new(1),
            quality: None,
        }
    }

    /// Has unloaded versions forgotten by the quality loop (`Quality::forget`).
    pub fn with_quality(mut self, quality: Arc<crate::quality::Quality>) -> Self {
        self.quality = Some(quality);
        self
    }

    /// Loads every model's selected versions for start-up. Blocking, and
    /// strict: any version that fails stops start-up, naming the file. The
    /// one exception is a version whose format this build cannot run: it is
    /// reported unavailable with the reason (index, metrics, log), and a
    /// model left with nothing to serve is not served.
    pub fn load_initial(&self) -> Result<(Repository, HashMap<String, Routing>), LoadError> {
        let root = &self.settings.root;
        let at = |path: PathBuf, message: String| LoadError {
            path,
            message,
            unsupported: false,
        };
        let names =
            disk::model_names(root).map_err(|e| at(root.clone(), format!("cannot read: {e}")))?;
        let mut models = BTreeMap::new();
        let mut routing = HashMap::new();
        for name in names {
            let model_dir = root.join(&name);
            let policy = disk::read_policy(&model_dir)
                .map_err(|m| at(model_dir.clone(), m))?
                .unwrap_or_default();
            // At start-up nothing should be half-copied: a numbered directory
            // without its manifest is an error here, not a version to wait for.
            if let Some(dir) = disk::incomplete(&model_dir).into_iter().next() {
                return Err(at(
                    dir.join(disk::MANIFEST),
                    "missing (a version directory needs its manifest, written last)".into(),
                ));
            }
            let on_disk = disk::versions(&model_dir)
                .map_err(|e| at(model_dir.clone(), format!("cannot read: {e}")))?
                .unwrap_or_default();
            let wanted = policy.select(&on_disk.keys().copied().collect());
            let mut versions = BTreeMap::new();
            let mut unsupported = false;
            for v in wanted {
                let dir = &on_disk[&v];
                let prepared = disk::prepare(
                    &dir.path,
                    self.loader.as_ref(),
                    self.settings.warmup_runs,
                    false,
                );
                let (model, report) = match prepared {
                    Ok(ok) => ok,
                    Err(f) if f.stage == disk::Stage::Unsupported => {
                        self.refused(&name, v, &f, dir.fingerprint.clone(), false);
                        unsupported = true;
                        continue;
                    }
                    Err(f) => {
                        return Err(at(
                            f.path,
                            format!("{} failed: {}", f.stage.name(), f.message),
                        ))
                    }
                };
                log_ready(&model, report.as_ref());
                self.set_status(&name, v, State::Ready, "", Some(dir.fingerprint.clone()));
                versions.insert(v, Arc::new(model));
            }
            if versions.is_empty() && unsupported {
                continue;
            }
            if versions.is_empty() {
                return Err(at(
                    model_dir,
                    "no version to serve (expected <model>/<version>/model.toml, selected by policy.toml)".into(),
                ));
            }
            let keys = versions.keys().copied().collect();
            routing.insert(
                name.clone(),
                policy.routing(&keys).map_err(|m| at(model_dir, m))?,
            );
            models.insert(name, versions);
        }
        if models.is_empty() {
            return Err(at(
                root.clone(),
                "no models found (expected <model>/<version>/model.toml)".into(),
            ));
        }
        Ok((Repository { models }, routing))
    }

    /// The first deployment, from `load_initial`'s result. Needs the runtime.
    pub fn deploy_initial(&self, repo: Repository, routing: HashMap<String, Routing>) -> Phase {
        for m in repo.iter() {
            self.set_info(m, true);
        }
        let d = self.pipeline.redeploy(
            None,
            repo,
            routing,
            self.settings.max_batch_size,
            self.settings.max_batch_delay_ms,
        );
        self.lifecycle.deploy(d)
    }

    /// Brings model `name` in line with its policy (`policy`, else the last
    /// load call's, else `policy.toml`, else every version with the highest
    /// as default): readies what is missing or changed on disk, retires what
    /// the policy no longer selects, and swaps once.
    pub async fn load(
        self: &Arc<Self>,
        name: &str,
        policy: Option<Policy>,
    ) -> Result<Outcome, CoreError> {
        let (this, name) = (self.clone(), name.to_string());
        // A task of its own: the work finishes even if the caller goes away.
        tokio::spawn(async move { this.apply(&name, policy, Trigger::Api).await })
            .await
            .map_err(|_| CoreError::Internal("a model load task failed"))?
    }

    /// Takes every version of `name` out of service. Requests already
    /// accepted finish; new ones get `ModelNotFound`.
    pub async fn unload(self: &Arc<Self>, name: &str) -> Result<Outcome, CoreError> {
        let (this, name) = (self.clone(), name.to_string());
        tokio::spawn(async move { this.retire(&name, Trigger::Api, "unloaded").await })
            .await
            .map_err(|_| CoreError::Internal("a model unload task failed"))?
    }

    fn claim(&self, name: &str) -> Result<Busy<'_>, CoreError> {
        if !disk::valid_model_name(name) {
            return Err(CoreError::ModelNotFound(name.to_string()));
        }
        if !lock(&self.busy).insert(name.to_string()) {
            return Err(CoreError::ModelBusy(name.to_string()));
        }
        Ok(Busy {
            set: &self.busy,
            name: name.to_string(),
        })
    }

    fn serving(&self, name: &str) -> BTreeMap<u64, Arc<Model>> {
        self.lifecycle
            .deployment()
            .and_then(|d| d.repository().versions(name).ok().cloned())
            .unwrap_or_default()
    }

    /// Brings `name` in line with its policy in three steps: `plan` (what
    /// disk holds, what the policy selects, what needs readying), `ready`
    /// (verify, warm up and gate each, one at a time) and `commit` (one swap,
    /// then the states, metrics and the log).
    async fn apply(
        &self,
        name: &str,
        policy: Option<Policy>,
        trigger: Trigger,
    ) -> Result<Outcome, CoreError> {
        let busy = self.claim(name)?;
        let started = Instant::now();
        let plan = match self.plan(name, policy, trigger).await? {
            Planned::Load(plan) => plan,
            Planned::Retire => {
                drop(busy);
                return self
                    .retire(name, trigger, "its directory was removed")
                    .await;
            }
        };
        let readied = self.ready(name, &plan).await;
        self.commit(name, plan, readied, trigger, started)
    }

    /// Reads the model's directory and policy and decides what to load.
    async fn plan(
        &self,
        name: &str,
        policy: Option<Policy>,
        trigger: Trigger,
    ) -> Result<Planned, CoreError> {
        let model_dir = self.settings.root.join(name);
        let scan_dir = model_dir.clone();
        let (on_disk, file_policy) =
            blocking(move || (disk::versions(&scan_dir), disk::read_policy(&scan_dir))).await?;
        let on_disk = on_disk.map_err(|e| {
            CoreError::LoadFailed(format!("{}: cannot read: {e}", model_dir.display()))
        })?;
        let current = self.serving(name);
        let Some(on_disk) = on_disk else {
            if trigger == Trigger::Poll && !current.is_empty() {
                return Ok(Planned::Retire);
            }
            return Err(CoreError::ModelNotFound(name.to_string()));
        };
        let given = policy.is_some();
        let remembered = lock(&self.table).get(name).and_then(|e| e.policy.clone());
        let policy = match (policy, remembered) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => file_policy
                .map_err(CoreError::LoadFailed)?
                .unwrap_or_default(),
        };
        let wanted = policy.select(&self.candidates(name, &on_disk, trigger));
        if wanted.is_empty() && trigger == Trigger::Api {
            return Err(CoreError::LoadFailed(format!(
                "{name}: no version directory the policy selects (a version needs <version>/{})",
                disk::MANIFEST
            )));
        }
        let to_load = self.to_load(name, &on_disk, &current, &wanted, trigger);
        Ok(Planned::Load(Plan {
            on_disk,
            current,
            policy,
            given,
            wanted,
            to_load,
        }))
    }

    /// The versions the policy may choose from. Polling leaves out versions
    /// that failed and have not changed since, so that `latest` picks among
    /// versions that can serve.
    fn candidates(
        &self,
        name: &str,
        on_disk: &BTreeMap<u64, disk::VersionDir>,
        trigger: Trigger,
    ) -> BTreeSet<u64> {
        let table = lock(&self.table);
        let known = table.get(name);
        on_disk
            .iter()
            .filter(|(v, dir)| {
                trigger == Trigger::Api
                    || !known.and_then(|e| e.versions.get(v)).is_some_and(|s| {
                        s.state == State::Unavailable
                            && s.fingerprint.as_ref() == Some(&dir.fingerprint)
                    })
            })
            .map(|(v, _)| *v)
            .collect()
    }

    /// What needs readying: new versions, and served ones whose files changed.
    /// Polling does not retry files that already failed.
    fn to_load(
        &self,
        name: &str,
        on_disk: &BTreeMap<u64, disk::VersionDir>,
        current: &BTreeMap<u64, Arc<Model>>,
        wanted: &BTreeSet<u64>,
        trigger: Trigger,
    ) -> Vec<u64> {
        let table = lock(&self.table);
        let known = table.get(name);
        wanted
            .iter()
            .copied()
            .filter(|v| {
                let fp = &on_disk[v].fingerprint;
                let status = known.and_then(|e| e.versions.get(v));
                let same_files = status.and_then(|s| s.fingerprint.as_ref()) == Some(fp);
                let failed = status.is_some_and(|s| s.state == State::Unavailable);
                if current.contains_key(v) {
                    !same_files
                } else {
                    !(trigger == Trigger::Poll && failed && same_files)
                }
            })
            .collect()
    }

    /// Readies each version of `plan.to_load`, one at a time across the
    /// server, beside the versions that keep serving.
    async fn ready(&self, name: &str, plan: &Plan) -> Readied {
        for v in &plan.to_load {
            self.set_status(name, *v, State::Loading, "loading", None);
        }
        let mut keep: BTreeMap<u64, Arc<Model>> = plan
            .current
            .iter()
            .filter(|(v, _)| plan.wanted.contains(v))
            .map(|(v, m)| (*v, m.clone()))
            .collect();
        let mut loaded = Vec::new();
        let mut failures = Vec::new();
        for v in &plan.to_load {
            let dir = &plan.on_disk[v];
            let result = {
                let _one_at_a_time = self.loading.acquire().await;
                disk::prepare_in_background(
                    dir.path.clone(),
                    self.loader.clone(),
                    self.settings.warmup_runs,
                )
                .await
            };
            match result {
                Ok((model, report)) => {
                    log_ready(&model, report.as_ref());
                    self.count_load(name, *v, "ok");
                    keep.insert(*v, Arc::new(model));
                    loaded.push((*v, dir.fingerprint.clone()));
                }
                Err(f) => {
                    let serving = plan.current.contains_key(v);
                    self.refused(name, *v, &f, dir.fingerprint.clone(), serving);
                    failures.push(format!("{name} version {v}: {f}"));
                }
            }
        }
        // A refused version retires nothing: under `latest`, a bad new version
        // would otherwise push out a good old one and serve nothing in its place.
        if !failures.is_empty() {
            for (v, m) in &plan.current {
                keep.entry(*v).or_insert_with(|| m.clone());
            }
        }
        Readied {
            keep,
            loaded,
            failures,
        }
    }

    /// Swaps the readied versions in (and the retired ones out) at once, then
    /// records the outcome.
    fn commit(
        &self,
        name: &str,
        plan: Plan,
        readied: Readied,
        trigger: Trigger,
        started: Instant,
    ) -> Result<Outcome, CoreError> {
        let Readied {
            keep,
            loaded,
            mut failures,
        } = readied;
        let serving: BTreeSet<u64> = keep.keys().copied().collect();
        let routing = if serving.is_empty() {
            None
        } else {
            match plan.policy.routing(&serving) {
                Ok(r) => Some(r),
                Err(m) => {
                    for (v, fp) in &loaded {
                        let why = format!("not served: {m}");
                        self.set_status(name, *v, State::Unavailable, &why, Some(fp.clone()));
                    }
                    failures.push(format!("{name}: {m}"));
                    return Err(CoreError::LoadFailed(failures.join("; ")));
                }
            }
        };
        let unloaded: Vec<u64> = plan
            .current
            .keys()
            .filter(|v| !serving.contains(v))
            .copied()
            .collect();
        let old_routing = self
            .lifecycle
            .deployment()
            .and_then(|d| d.routing(name).cloned());
        let swapped = !loaded.is_empty() || !unloaded.is_empty() || routing != old_routing;
        if swapped {
            let serving = routing.clone().map(|r| (keep.clone(), r));
            self.swap(name, serving, started)?;
        }
        for (v, fp) in &loaded {
            self.set_status(name, *v, State::Ready, "", Some(fp.clone()));
            self.set_info(&keep[v], true);
        }
        for v in &unloaded {
            self.set_info(&plan.current[v], false);
            self.metrics.model_unloads.with_label_values(&[name]).inc();
            let why = "unloaded: not selected by the version policy";
            self.set_status(name, *v, State::Unavailable, why, None);
        }
        {
            let mut table = lock(&self.table);
            let e = table.entry(name.to_string()).or_default();
            e.unloaded = false;
            // A load call's policy is remembered; polling re-reads the file.
            if trigger == Trigger::Api && plan.given {
                e.policy = Some(plan.policy);
            }
        }
        if swapped {
            tracing::info!(
                model = name,
                loaded = ?loaded.iter().map(|(v, _)| v).collect::<Vec<_>>(),
                unloaded = ?unloaded,
                default = routing.as_ref().map(|r| r.default),
                canary = ?routing.as_ref().and_then(|r| r.canary),
                swap_ms = started.elapsed().as_millis() as u64,
                "model swapped"
            );
        }
        if !failures.is_empty() {
            return Err(CoreError::LoadFailed(failures.join("; ")));
        }
        Ok(Outcome {
            loaded: loaded.into_iter().map(|(v, _)| v).collect(),
            unloaded,
            swapped,
        })
    }

    /// Swaps in a deployment where `name` serves `serving` (its versions and
    /// routing), or not at all, and times the swap from `started`.
    fn swap(
        &self,
        name: &str,
        serving: Option<(BTreeMap<u64, Arc<Model>>, Routing)>,
        started: Instant,
    ) -> Result<(), CoreError> {
        let settings = &self.settings;
        self.lifecycle.update(|d| {
            let (mut repo, mut routes) = without(d, name);
            if let Some((versions, routing)) = serving {
                repo.models.insert(name.to_string(), versions);
                routes.insert(name.to_string(), routing);
            }
            self.pipeline.redeploy(
                Some(d),
                repo,
                routes,
                settings.max_batch_size,
                settings.max_batch_delay_ms,
            )
        })?;
        self.metrics
            .model_swap_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Takes every version of `name` out of service.
    async fn retire(&self, name: &str, trigger: Trigger, why: &str) -> Result<Outcome, CoreError> {
        let _busy = self.claim(name)?;
        let started = Instant::now();
        let current = self.serving(name);
        if current.is_empty() {
            return Err(CoreError::ModelNotFound(name.to_string()));
        }
        self.swap(name, None, started)?;
        for (v, m) in &current {
            self.set_info(m, false);
            self.metrics.model_unloads.with_label_values(&[name]).inc();
            self.set_status(name, *v, State::Unavailable, why, None);
        }
        lock(&self.table)
            .entry(name.to_string())
            .or_default()
            .unloaded = trigger == Trigger::Api;
        tracing::info!(model = name, versions = ?current.keys().collect::<Vec<_>>(), why, "model unloaded");
        Ok(Outcome {
            loaded: Vec::new(),
            unloaded: current.keys().copied().collect(),
            swapped: true,
        })
    }
}

/// `d`'s models and routing without `name`.
fn without(d: &Deployment, name: &str) -> (Repository, HashMap<String, Routing>) {
    let mut models = d.repository().models.clone();
    models.remove(name);
    let routes = models
        .keys()
        .filter_map(|n| d.routing(n).map(|r| (n.clone(), r.clone())))
        .collect();
    (Repository { models }, routes)
}

fn log_ready(model: &Model, report: Option<&super::golden::GateReport>) {
    let (name, version) = (&model.manifest.name, &model.manifest.version);
    match report {
        Some(r) => tracing::info!(
            model = %name, version = %version, cases = r.cases, max_diff = r.max_diff,
            tolerance = r.tolerance, "golden gate passed"
        ),
        None => tracing::warn!(
            model = %name, version = %version,
            "no golden.json: the version serves without a golden gate"
        ),
    }
    tracing::info!(model = %name, version = %version, task = model.task.name(), "model loaded and warmed up");
}

#[cfg(test)]
mod tests;

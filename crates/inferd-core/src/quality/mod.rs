//! How right the models are on live traffic: labels fed back for served
//! predictions, scored per model, version and arm (primary, canary, shadow)
//! over a window of the last labels; shadow versions compared with the
//! primary on the same requests; and drift of the traffic against each
//! version's training data (`drift`).
//!
//! Labels arrive late (hours after the answer) and by request id, so every
//! served instance is remembered in a bounded index (`(request id, instance)`
//! to what each version predicted) until a label joins it or it ages out.
//! The index is this process's: behind a load balancer a label must reach the
//! worker that answered, or be joined in the prediction log's database, which
//! keeps both sides (see the book's quality chapter).

pub mod drift;
mod index;
mod score;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::InputBatch;
use crate::repository::Model;
use crate::task::{Prediction, Task};
use drift::{DriftRule, DriftState, DriftWindow, Reference, Values};

/// A request's instances' features, inline for a request of one instance.
pub type Features = smallvec::SmallVec<[Values; 1]>;
use score::{Comparison, Outcome, Scores, Truth};
pub use score::{Interval, QualityMetrics};

/// Which route a prediction took to its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// The default version, or the one the request named.
    Primary,
    /// The canary's share of unversioned requests.
    Canary,
    /// A copy run on the shadow version, off the request path.
    Shadow,
}

impl Arm {
    /// The metric label and the log's `role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Primary => "primary",
            Arm::Canary => "canary",
            Arm::Shadow => "shadow",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    const ALL: [Arm; 3] = [Arm::Primary, Arm::Canary, Arm::Shadow];
}

/// The bounds of what is remembered and judged.
#[derive(Debug, Clone)]
pub struct QualitySettings {
    /// Served instances remembered for labels to join (0: no index, no
    /// feedback, no online quality).
    pub index_capacity: u64,
    /// How long a served instance waits for its label.
    pub index_ttl: Duration,
    /// Labels per version and arm that the windowed figures cover.
    pub window: usize,
    /// How drift is judged.
    pub drift: DriftRule,
}

impl Default for QualitySettings {
    fn default() -> Self {
        QualitySettings {
            index_capacity: 100_000,
            index_ttl: Duration::from_secs(24 * 3600),
            window: 1000,
            drift: DriftRule::default(),
        }
    }
}

/// A label or value fed back for one served instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Feedback<'a> {
    /// A classifier's true label.
    Label(&'a str),
    /// A forecaster's true value: a number (one target) or target to number.
    Value(&'a serde_json::Value),
}

/// What a label did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fed {
    /// The instance's first label.
    Accepted,
    /// The same label again: counted once.
    Unchanged,
    /// A different label: it replaces the old one.
    Replaced,
}

impl Fed {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fed::Accepted => "accepted",
            Fed::Unchanged => "unchanged",
            Fed::Replaced => "replaced",
        }
    }
}

/// Why a label was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    /// No served instance under that id (never served here, expired, or
    /// evicted from a full index).
    #[error("no prediction with request id {request_id:?} and instance {instance} is known here (unknown, older than {ttl_s} s, or evicted)")]
    Unknown {
        /// The id.
        request_id: String,
        /// The instance.
        instance: u32,
        /// How long instances are remembered.
        ttl_s: u64,
    },
    /// A label for a forecaster, a value for a classifier, or a label the
    /// model does not have.
    #[error("{0}")]
    Invalid(String),
    /// The index is off.
    #[error("label feedback is off (INFERD_QUALITY_INDEX=0)")]
    Off,
}

impl FeedbackError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            FeedbackError::Unknown { .. } => "unknown",
            FeedbackError::Invalid(_) => "invalid",
            FeedbackError::Off => "off",
        }
    }
}

/// A label that joined a served instance: what the log records.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// What the label did.
    pub fed: Fed,
    /// The model.
    pub model: String,
    /// Each version that served the instance, with its arm.
    pub versions: Vec<(String, Arm)>,
}

/// One served instance waiting for its label.
struct Entry {
    /// Unique in this process: the windows find a replaced label by it.
    serial: u64,
    runs: smallvec::SmallVec<[Run; 1]>,
    truth: Option<Truth>,
}

struct Run {
    book: Arc<VersionBook>,
    arm: Arm,
    outcome: Outcome,
    latency: Duration,
}

/// One model version's figures, shared by every arm it serves in.
pub struct VersionBook {
    model: String,
    version: String,
    kind: Kind,
    reference: Option<Arc<Reference>>,
    state: Mutex<BookState>,
    /// Per arm, this version's series, looked up once rather than by label
    /// hashing on every prediction.
    served: [prometheus::IntCounter; 3],
    coverage: [prometheus::Gauge; 3],
}

#[derive(Debug, Clone)]
enum Kind {
    Labels(Vec<String>),
    Targets(Vec<String>),
}

struct BookState {
    arms: [Scores; 3],
    served: [u64; 3],
    drift: Option<DriftWindow>,
    pushes: u64,
    last: Option<DriftState>,
    /// The version was unloaded and its series removed: nothing exports
    /// them again, whoever still holds the book.
    retired: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Labels, shadows and drift for every model this process serves.
pub struct Quality {
    settings: QualitySettings,
    index: Option<index::Index<Entry>>,
    books: RwLock<HashMap<String, HashMap<String, Arc<VersionBook>>>>,
    comparisons: Mutex<HashMap<(String, String, String), Comparison>>,
    /// Versions unloaded and not loaded since: a book asked for one (by a
    /// request that resolved it before the unload) is made retired.
    forgotten: Mutex<HashSet<(String, String)>>,
    /// Held for writing while a version is forgotten, for reading by the
    /// exports made outside a book's lock (shadow comparisons and runs), so
    /// that none of them lands after its series were removed.
    export_gate: RwLock<()>,
    metrics: Arc<QualityMetrics>,
    /// Unique per served instance in this process: the window's key for a
    /// label's replacement.
    serial: std::sync::atomic::AtomicU64,
}

impl Quality {
    /// A quality registry under `settings`, counting into `metrics`.
    pub fn new(settings: QualitySettings, metrics: Arc<QualityMetrics>) -> Self {
        let index = (settings.index_capacity > 0)
            .then(|| index::Index::new(settings.index_capacity, settings.index_ttl));
        Quality {
            settings,
            index,
            books: RwLock::new(HashMap::new()),
            comparisons: Mutex::new(HashMap::new()),
            forgotten: Mutex::new(HashSet::new()),
            export_gate: RwLock::new(()),
            metrics,
            serial: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether served instances are remembered for labels.
    pub fn feedback_on(&self) -> bool {
        self.index.is_some()
    }

    /// Whether anything is recorded at all: with feedback and drift both
    /// off, the request path does no quality work.
    pub fn active(&self) -> bool {
        self.index.is_some() || self.settings.drift.window > 0
    }

    /// What the loop exports.
    pub fn metrics(&self) -> &QualityMetrics {
        &self.metrics
    }

    /// The settings.
    pub fn settings(&self) -> &QualitySettings {
        &self.settings
    }

    /// Forgets an unloaded version: its book, its shadow comparisons and
    /// every series it exported, so that an alert on its drift or accuracy
    /// stops with it. Requests still in flight on the version record into a
    /// retired book, which exports nothing, until the version is loaded
    /// again (`remember`).
    pub fn forget(&self, name: &str, version: &str) {
        let _gate = self.export_gate.write().unwrap_or_else(|p| p.into_inner());
        lock(&self.forgotten).insert((name.to_string(), version.to_string()));
        let book = {
            let mut books = self.books.write().unwrap_or_else(|p| p.into_inner());
            books.get_mut(name).and_then(|v| v.remove(version))
        };
        // A book's own exports happen under its lock: one before this
        // finished before it, and its series go below; none comes after.
        if let Some(b) = book {
            lock(&b.state).retired = true;
        }
        lock(&self.comparisons)
            .retain(|(m, p, s), _| !(m == name && (p == version || s == version)));
        self.metrics.forget(name, version);
    }

    /// A version (re)loaded: its next book starts afresh and exports.
    pub fn remember(&self, name: &str, version: &str) {
        lock(&self.forgotten).remove(&(name.to_string(), version.to_string()));
    }

    /// Counts a shadow run of `primary` (model, version) on `shadow`, unless
    /// either version was forgotten.
    pub fn count_shadow(&self, model: &str, primary: &str, shadow: &str, outcome: &str) {
        let _gate = self.export_gate.read().unwrap_or_else(|p| p.into_inner());
        {
            let f = lock(&self.forgotten);
            let gone = |v: &str| f.contains(&(model.to_string(), v.to_string()));
            if gone(primary) || gone(shadow) {
                return;
            }
        }
        self.metrics
            .shadow_runs
            .with_label_values(&[model, primary, shadow, outcome])
            .inc();
    }

    /// The version's book, made on first use.
    pub fn book(&self, model: &Model) -> Arc<VersionBook> {
        let (name, version) = (&model.manifest.name, &model.manifest.version);
        if let Some(b) = self
            .books
            .read()
            .ok()
            .and_then(|m| m.get(name).and_then(|v| v.get(version)).cloned())
        {
            return b;
        }
        let mut books = self.books.write().unwrap_or_else(|p| p.into_inner());
        if lock(&self.forgotten).contains(&(name.clone(), version.clone())) {
            // Unloaded while this request was on its way: a book of its
            // own that exports nothing, not kept.
            return Arc::new(VersionBook::new(model, &self.settings, &self.metrics, true));
        }
        books
            .entry(name.clone())
            .or_default()
            .entry(version.clone())
            .or_insert_with(|| {
                let book = VersionBook::new(model, &self.settings, &self.metrics, false);
                self.metrics
                    .drift_profile
                    .with_label_values(&[name, version])
                    .set(i64::from(book.reference.is_some()));
                if let Some(a) = model
                    .manifest
                    .metrics
                    .get("stratified_accuracy")
                    .and_then(|v| v.as_float())
                {
                    self.metrics
                        .card_accuracy
                        .with_label_values(&[name, version])
                        .set(a);
                }
                Arc::new(book)
            })
            .clone()
    }

    /// Instance features before the batch goes to the model; `None` for a
    /// version without a profile.
    pub fn features(&self, book: &VersionBook, batch: &InputBatch) -> Option<Features> {
        let r = book.reference.as_ref()?;
        Some((0..batch.len()).map(|i| r.inputs(batch, i)).collect())
    }

    /// Records a request's predictions: for the labels to come, for the
    /// served counts (coverage) and for drift.
    pub fn record(
        &self,
        book: &Arc<VersionBook>,
        arm: Arm,
        request_id: &str,
        predictions: &[Prediction],
        features: Option<Features>,
        latency: Duration,
    ) {
        let now = Instant::now();
        {
            let mut st = book.state.lock().unwrap_or_else(|p| p.into_inner());
            st.served[arm.index()] += predictions.len() as u64;
            // Set here too, not only when a label comes: a version nobody
            // labels must show its coverage falling for the alert to see it.
            let served = st.served[arm.index()];
            book.coverage[arm.index()]
                .set(st.arms[arm.index()].labelled_total() as f64 / served.max(1) as f64);
            if let (Some(r), Some(features)) = (&book.reference, features) {
                for (mut values, p) in features.into_iter().zip(predictions) {
                    r.predictions(&mut values, p);
                    st.push(r, &values, now, &book.model, &book.version, &self.metrics);
                }
            }
        }
        book.served[arm.index()].inc_by(predictions.len() as u64);
        let Some(index) = &self.index else { return };
        if request_id.is_empty() {
            return;
        }
        for (i, p) in predictions.iter().enumerate() {
            let run = Run {
                book: book.clone(),
                arm,
                outcome: Outcome::of(&book.kind, p),
                latency,
            };
            let i = i as u32;
            if arm == Arm::Shadow {
                // The primary's entry is there unless it aged out meanwhile.
                index.with(request_id, i, now, |e| {
                    self.compare(&e.runs, &run);
                    if let Some(t) = e.truth.clone() {
                        run.book.score(&run, None, &t, e.serial, &self.metrics);
                        self.pair(&e.runs, &run, &t);
                    }
                    e.runs.push(run);
                });
                continue;
            }
            let entry = Entry {
                serial: self.serial(),
                runs: smallvec::smallvec![run],
                truth: None,
            };
            index.insert(request_id, i, entry, now);
        }
    }

    fn serial(&self) -> u64 {
        self.serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Joins a label to the served instance `(request_id, instance)` and
    /// scores every version that served it.
    pub fn feedback(
        &self,
        request_id: &str,
        instance: u32,
        label: Feedback<'_>,
    ) -> Result<Joined, FeedbackError> {
        let index = self.index.as_ref().ok_or(FeedbackError::Off)?;
        let unknown = || FeedbackError::Unknown {
            request_id: request_id.to_string(),
            instance,
            ttl_s: self.settings.index_ttl.as_secs(),
        };
        index
            .with(request_id, instance, Instant::now(), |e| {
                self.join(e, label)
            })
            .ok_or_else(unknown)?
    }

    fn join(&self, e: &mut Entry, label: Feedback<'_>) -> Result<Joined, FeedbackError> {
        let first = e.runs.first().ok_or(FeedbackError::Invalid(
            "the served instance has no run".into(),
        ))?;
        let truth = Truth::parse(&first.book.kind, label).map_err(FeedbackError::Invalid)?;
        let fed = match &e.truth {
            None => Fed::Accepted,
            Some(t) if *t == truth => Fed::Unchanged,
            Some(_) => Fed::Replaced,
        };
        let joined = Joined {
            fed,
            model: first.book.model.clone(),
            versions: e
                .runs
                .iter()
                .map(|r| (r.book.version.clone(), r.arm))
                .collect(),
        };
        if fed != Fed::Unchanged {
            for run in &e.runs {
                run.book
                    .score(run, e.truth.as_ref(), &truth, e.serial, &self.metrics);
            }
            if let Some((primary, shadows)) = e.runs.split_first() {
                for s in shadows {
                    self.pair_replace(primary, s, e.truth.as_ref(), &truth);
                }
            }
            e.truth = Some(truth);
        }
        Ok(joined)
    }

    /// Runs `f` on the comparison of `shadow` with `primary`, made on first use.
    fn comparison<R>(
        &self,
        primary: &Run,
        shadow: &Run,
        f: impl FnOnce(&mut Comparison) -> R,
    ) -> R {
        let key = (
            primary.book.model.clone(),
            primary.book.version.clone(),
            shadow.book.version.clone(),
        );
        let mut c = self.comparisons.lock().unwrap_or_else(|p| p.into_inner());
        f(c.entry(key)
            .or_insert_with(|| Comparison::new(self.settings.window)))
    }

    fn compare(&self, runs: &[Run], shadow: &Run) {
        let Some(primary) = runs.first() else { return };
        let _gate = self.export_gate.read().unwrap_or_else(|p| p.into_inner());
        if primary.book.retired() || shadow.book.retired() {
            return;
        }
        let agreement = self.comparison(primary, shadow, |c| {
            c.outputs(
                &primary.outcome,
                &shadow.outcome,
                primary.latency,
                shadow.latency,
            );
            c.agreement()
        });
        self.metrics
            .shadow_agreement
            .with_label_values(&[
                &primary.book.model,
                &primary.book.version,
                &shadow.book.version,
            ])
            .set(agreement.map_or(f64::NAN, |a| a.value));
    }

    fn pair(&self, runs: &[Run], shadow: &Run, truth: &Truth) {
        if let Some(primary) = runs.first() {
            self.pair_replace(primary, shadow, None, truth);
        }
    }

    fn pair_replace(&self, primary: &Run, shadow: &Run, old: Option<&Truth>, truth: &Truth) {
        let _gate = self.export_gate.read().unwrap_or_else(|p| p.into_inner());
        if primary.book.retired() || shadow.book.retired() {
            return;
        }
        self.comparison(primary, shadow, |c| {
            if let Some(old) = old {
                c.unlabel(&primary.outcome, &shadow.outcome, old);
            }
            c.label(&primary.outcome, &shadow.outcome, truth);
        });
    }

    /// Everything known about `model`'s quality; `None` when it never served.
    pub fn report(&self, model: &str) -> Option<QualityReport> {
        let books: Vec<Arc<VersionBook>> = {
            let b = self.books.read().ok()?;
            let mut v: Vec<_> = b.get(model)?.values().cloned().collect();
            v.sort_by(|a, b| version_order(&a.version, &b.version));
            v
        };
        let now = Instant::now();
        let mut versions = Vec::new();
        let mut drift = Vec::new();
        for book in &books {
            let mut st = book.state.lock().unwrap_or_else(|p| p.into_inner());
            for arm in Arm::ALL {
                let served = st.served[arm.index()];
                if served == 0 && st.arms[arm.index()].labelled_total() == 0 {
                    continue;
                }
                versions.push(st.arms[arm.index()].report(&book.version, arm, served, &book.kind));
            }
            drift.push(DriftReport {
                version: book.version.clone(),
                profile: book.reference.as_ref().map(|r| r.profile.source.clone()),
                state: match (&book.reference, &mut st.drift) {
                    (Some(r), Some(w)) => {
                        w.expire(now);
                        Some(w.judge(r))
                    }
                    _ => None,
                },
            });
        }
        let comparisons = self
            .comparisons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((m, _, _), _)| m == model)
            .map(|((_, p, s), c)| c.report(p, s))
            .collect();
        Some(QualityReport {
            model: model.to_string(),
            window: self.settings.window,
            versions,
            comparisons,
            drift,
        })
    }
}

fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

impl VersionBook {
    fn retired(&self) -> bool {
        lock(&self.state).retired
    }

    /// A retired book's series are taken and removed at once: its records
    /// count into handles no registry shows.
    fn new(
        model: &Model,
        settings: &QualitySettings,
        metrics: &QualityMetrics,
        retired: bool,
    ) -> Self {
        let (name, version) = (&model.manifest.name, &model.manifest.version);
        let series = |arm: Arm| [name.as_str(), version.as_str(), arm.as_str()];
        let kind = match &model.task {
            Task::TextClassification { labels, .. } => Kind::Labels(labels.clone()),
            Task::Forecast { targets, .. } => Kind::Targets(targets.clone()),
        };
        // A drift window of 0 turns drift off.
        let reference = model
            .reference
            .clone()
            .filter(|_| settings.drift.window > 0);
        let arms = [0, 1, 2].map(|_| Scores::new(&kind, settings.window));
        let served = Arm::ALL.map(|a| metrics.served.with_label_values(&series(a)));
        let coverage = Arm::ALL.map(|a| metrics.coverage.with_label_values(&series(a)));
        if retired {
            for a in Arm::ALL {
                let _ = metrics.served.remove_label_values(&series(a));
                let _ = metrics.coverage.remove_label_values(&series(a));
            }
        }
        VersionBook {
            served,
            coverage,
            model: model.manifest.name.clone(),
            version: model.manifest.version.clone(),
            state: Mutex::new(BookState {
                arms,
                served: [0; 3],
                drift: reference
                    .as_ref()
                    .map(|r| DriftWindow::new(r, settings.drift.clone())),
                pushes: 0,
                last: None,
                retired,
            }),
            kind,
            reference,
        }
    }

    fn score(
        &self,
        run: &Run,
        old: Option<&Truth>,
        truth: &Truth,
        serial: u64,
        metrics: &QualityMetrics,
    ) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.arms[run.arm.index()].label(serial, &run.outcome, old, truth);
        if st.retired {
            return;
        }
        let served = st.served[run.arm.index()];
        st.arms[run.arm.index()].export(
            metrics,
            &self.model,
            &self.version,
            run.arm,
            served,
            &self.kind,
        );
    }
}

impl BookState {
    /// Judges every few pushes rather than every one: the alarm can only
    /// change by a few counts between two judgements.
    fn push(
        &mut self,
        r: &Reference,
        values: &[f64],
        now: Instant,
        model: &str,
        version: &str,
        metrics: &QualityMetrics,
    ) {
        let Some(w) = self.drift.as_mut() else { return };
        w.push(r, values, now);
        self.pushes += 1;
        if !self.pushes.is_multiple_of(8) && self.last.is_some() {
            return;
        }
        let state = w.judge(r);
        if self.retired {
            return;
        }
        metrics
            .drift_observations
            .with_label_values(&[model, version])
            .set(state.observations as i64);
        metrics
            .drift_alarm
            .with_label_values(&[model, version])
            .set(i64::from(state.alarm));
        for f in &state.features {
            metrics
                .drift_psi
                .with_label_values(&[model, version, &f.name])
                .set(f.psi);
        }
        self.last = Some(state);
    }
}

/// `GET /v1/models/{name}/quality`.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    /// The model.
    pub model: String,
    /// Labels per version and arm that the windowed figures cover.
    pub window: usize,
    /// Per version and arm.
    pub versions: Vec<score::ArmReport>,
    /// Each shadow against its primary.
    pub comparisons: Vec<score::ComparisonReport>,
    /// Per version, its traffic against its training data.
    pub drift: Vec<DriftReport>,
}

/// One version's drift.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// The version.
    pub version: String,
    /// What its reference profile was built from; `None`: it has none, and
    /// drift is not judged.
    pub profile: Option<String>,
    /// The window's judgement (`None` without a profile).
    pub state: Option<DriftState>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::testing::{forecaster_model, TestBackend};

    fn classifier(version: &str) -> Model {
        let mut m = forecaster_model("spam", 2, 4, TestBackend::forecaster(2, 1, 1));
        m.manifest.version = version.to_string();
        m.task = Task::TextClassification {
            labels: vec!["ham".into(), "spam".into()],
            max_text_bytes: 1024,
            output: "probabilities".into(),
            email: None,
        };
        m
    }

    fn said(label: &str, spam: f32) -> Prediction {
        Prediction::Label {
            label: label.into(),
            scores: BTreeMap::from([("ham".into(), 1.0 - spam), ("spam".into(), spam)]),
        }
    }

    fn quality(window: usize, capacity: u64) -> Quality {
        let registry = prometheus::Registry::new();
        Quality::new(
            QualitySettings {
                index_capacity: capacity,
                window,
                ..QualitySettings::default()
            },
            Arc::new(QualityMetrics::new(&registry)),
        )
    }

    fn arm<'a>(r: &'a QualityReport, version: &str, arm: Arm) -> &'a score::ArmReport {
        r.versions
            .iter()
            .find(|a| a.version == version && a.arm == arm)
            .expect("the arm is reported")
    }

    #[test]
    fn labels_count_once_replace_when_changed_and_refuse_what_they_cannot_join() {
        let q = quality(1000, 1000);
        let m = classifier("1");
        let book = q.book(&m);
        let ms = Duration::from_millis(1);
        q.record(
            &book,
            Arm::Primary,
            "a",
            &[said("spam", 0.9), said("ham", 0.2)],
            None,
            ms,
        );
        let fed = |id, i, l| q.feedback(id, i, Feedback::Label(l));
        assert_eq!(fed("a", 0, "spam").unwrap().fed, Fed::Accepted);
        assert_eq!(fed("a", 0, "spam").unwrap().fed, Fed::Unchanged);
        assert_eq!(fed("a", 1, "spam").unwrap().fed, Fed::Accepted);
        let r = q.report("spam").unwrap();
        let a = arm(&r, "1", Arm::Primary);
        assert_eq!((a.served, a.labelled), (2, 2));
        assert_eq!(a.total.accuracy.unwrap().value, 0.5);
        // Changed: counted once, with the new label.
        assert_eq!(fed("a", 1, "ham").unwrap().fed, Fed::Replaced);
        let r = q.report("spam").unwrap();
        let a = arm(&r, "1", Arm::Primary);
        assert_eq!((a.labelled, a.window.labels), (2, 2));
        assert_eq!(a.total.accuracy.unwrap().value, 1.0);
        assert!(matches!(
            fed("a", 2, "ham"),
            Err(FeedbackError::Unknown { .. })
        ));
        assert!(matches!(
            fed("b", 0, "ham"),
            Err(FeedbackError::Unknown { .. })
        ));
        assert!(matches!(
            fed("a", 0, "eggs"),
            Err(FeedbackError::Invalid(_))
        ));
        let v = serde_json::json!(3.0);
        assert!(matches!(
            q.feedback("a", 0, Feedback::Value(&v)),
            Err(FeedbackError::Invalid(m)) if m.contains("classifier")
        ));
        // Refusals left the figures alone.
        let r = q.report("spam").unwrap();
        assert_eq!(arm(&r, "1", Arm::Primary).total.labels, 2);
    }

    #[test]
    fn the_window_keeps_the_last_labels_and_the_total_keeps_all() {
        let q = quality(2, 1000);
        let book = q.book(&classifier("1"));
        let ids = ["a", "b", "c"];
        for id in ids {
            q.record(
                &book,
                Arm::Primary,
                id,
                &[said("spam", 0.9)],
                None,
                Duration::ZERO,
            );
        }
        q.feedback("a", 0, Feedback::Label("ham")).unwrap();
        q.feedback("b", 0, Feedback::Label("spam")).unwrap();
        q.feedback("c", 0, Feedback::Label("spam")).unwrap();
        let r = q.report("spam").unwrap();
        let a = arm(&r, "1", Arm::Primary);
        assert_eq!((a.window.labels, a.total.labels), (2, 3));
        assert_eq!(a.window.accuracy.unwrap().value, 1.0);
        assert!((a.total.accuracy.unwrap().value - 2.0 / 3.0).abs() < 1e-12);
        // "a" left the window: its new label enters as the newest.
        q.feedback("a", 0, Feedback::Label("spam")).unwrap();
        let r = q.report("spam").unwrap();
        let a = arm(&r, "1", Arm::Primary);
        assert_eq!((a.window.labels, a.total.labels), (2, 3));
        assert_eq!(a.total.accuracy.unwrap().value, 1.0);
    }

    #[test]
    fn a_shadow_is_compared_with_its_primary_and_scored_on_the_same_labels() {
        let q = quality(1000, 1000);
        let (p, s) = (q.book(&classifier("3")), q.book(&classifier("2")));
        let t = Duration::from_millis(2);
        // A hundred requests: the shadow disagrees on four in ten, where it is right.
        for i in 0..100 {
            let id = format!("r{i}");
            let right = i % 10 < 6;
            let truth = if right { "ham" } else { "spam" };
            let shadow = if right {
                said("ham", 0.2)
            } else {
                said("spam", 0.8)
            };
            q.record(&p, Arm::Primary, &id, &[said("ham", 0.1)], None, t);
            // Half the labels arrive before the shadow's run ends.
            if i % 2 == 0 {
                q.feedback(&id, 0, Feedback::Label(truth)).unwrap();
                q.record(&s, Arm::Shadow, &id, &[shadow], None, t * 2);
            } else {
                q.record(&s, Arm::Shadow, &id, &[shadow], None, t * 2);
                q.feedback(&id, 0, Feedback::Label(truth)).unwrap();
            }
        }
        // A shadow run whose primary aged out (or never was) is not counted.
        q.record(&s, Arm::Shadow, "gone", &[said("ham", 0.1)], None, t);
        let r = q.report("spam").unwrap();
        let c = &r.comparisons[0];
        assert_eq!(
            (c.primary.as_str(), c.shadow.as_str(), c.requests),
            ("3", "2", 100)
        );
        assert_eq!(c.agreement.unwrap().value, 0.6);
        assert!((c.latency_difference_ms.as_ref().unwrap().p50 - 2.0).abs() < 1e-9);
        let l = c.labelled.as_ref().unwrap();
        assert_eq!(l.labels, 100);
        assert_eq!(l.primary_accuracy.unwrap().value, 0.6);
        assert_eq!(l.shadow_accuracy.unwrap().value, 1.0);
        let d = l.difference.unwrap();
        assert!((d.value - 0.4).abs() < 1e-12 && d.lower > 0.0, "{d:?}");
        // Four discordant pairs alone would not say so (exact McNemar p = 0.125).
        let mut few = Comparison::new(10);
        let (p3, s2) = (
            Outcome::of(&p.kind, &said("ham", 0.1)),
            Outcome::of(&p.kind, &said("spam", 0.9)),
        );
        for _ in 0..4 {
            few.label(&p3, &s2, &Truth::Label(1));
        }
        for _ in 0..6 {
            few.label(&p3, &p3, &Truth::Label(0));
        }
        let d = few.report("3", "2").labelled.unwrap().difference.unwrap();
        assert!(d.lower < 0.0 && d.upper > 0.3, "{d:?}");
        assert_eq!(arm(&r, "2", Arm::Shadow).total.accuracy.unwrap().value, 1.0);
        assert_eq!(
            arm(&r, "3", Arm::Primary).total.accuracy.unwrap().value,
            0.6
        );
    }

    /// The series of `q` naming `version` (as the version or the shadow).
    fn series(q: &Quality, version: &str) -> usize {
        use prometheus::core::Collector;
        let m = q.metrics();
        [
            m.served.collect(),
            m.coverage.collect(),
            m.accuracy.collect(),
            m.shadow_agreement.collect(),
            m.shadow_runs.collect(),
        ]
        .into_iter()
        .flatten()
        .map(|f| {
            f.get_metric()
                .iter()
                .filter(|m| {
                    m.get_label().iter().any(|l| {
                        (l.name() == "version" || l.name() == "shadow") && l.value() == version
                    })
                })
                .count()
        })
        .sum()
    }

    #[test]
    fn a_forgotten_version_exports_nothing_until_it_is_loaded_again() {
        let q = quality(1000, 1000);
        let t = Duration::from_millis(1);
        let (p, s) = (q.book(&classifier("3")), q.book(&classifier("2")));
        q.record(&p, Arm::Primary, "a", &[said("ham", 0.1)], None, t);
        q.record(&s, Arm::Shadow, "a", &[said("spam", 0.9)], None, t);
        q.count_shadow("spam", "3", "2", "ran");
        q.feedback("a", 0, Feedback::Label("ham")).unwrap();
        assert!(series(&q, "2") > 0);
        q.forget("spam", "2");
        assert_eq!(series(&q, "2"), 0);
        // Still in flight: the old book, a book asked for after the unload,
        // a shadow run counted, a label joining both.
        let late = q.book(&classifier("2"));
        q.record(&p, Arm::Primary, "b", &[said("ham", 0.1)], None, t);
        q.record(&s, Arm::Shadow, "b", &[said("spam", 0.9)], None, t);
        q.record(&late, Arm::Shadow, "b", &[said("spam", 0.9)], None, t);
        q.count_shadow("spam", "3", "2", "ran");
        q.feedback("b", 0, Feedback::Label("ham")).unwrap();
        assert_eq!(series(&q, "2"), 0);
        let r = q.report("spam").unwrap();
        assert!(r.comparisons.is_empty(), "{:?}", r.comparisons);
        assert!(r.versions.iter().all(|a| a.version == "3"));
        assert!(series(&q, "3") > 0, "the primary keeps its own series");
        // Loaded again: a fresh book that exports.
        q.remember("spam", "2");
        let again = q.book(&classifier("2"));
        q.record(&again, Arm::Primary, "c", &[said("ham", 0.1)], None, t);
        assert!(series(&q, "2") > 0);
        let r = q.report("spam").unwrap();
        assert_eq!(arm(&r, "2", Arm::Primary).served, 1);
    }

    #[test]
    fn forecasts_are_scored_by_their_errors() {
        let q = quality(1000, 1000);
        let m = forecaster_model("co2", 2, 4, TestBackend::forecaster(2, 1, 1));
        let target = match &m.task {
            Task::Forecast { targets, .. } => targets[0].clone(),
            Task::TextClassification { .. } => unreachable!(),
        };
        let book = q.book(&m);
        let f = |x: f32| Prediction::Forecast {
            forecast: BTreeMap::from([(target.clone(), x)]),
        };
        q.record(
            &book,
            Arm::Primary,
            "w",
            &[f(1.0), f(2.0)],
            None,
            Duration::ZERO,
        );
        let v = serde_json::json!(2.0);
        q.feedback("w", 0, Feedback::Value(&v)).unwrap();
        let v = serde_json::json!({ target.clone(): 5.0 });
        q.feedback("w", 1, Feedback::Value(&v)).unwrap();
        let r = q.report("co2").unwrap();
        let a = arm(&r, "1", Arm::Primary);
        assert_eq!(a.total.mae, Some(2.0));
        assert_eq!(a.total.rmse, Some(5.0f64.sqrt()));
        for bad in [
            serde_json::json!("2"),
            serde_json::json!({"other": 1.0}),
            serde_json::json!({}),
        ] {
            assert!(matches!(
                q.feedback("w", 0, Feedback::Value(&bad)),
                Err(FeedbackError::Invalid(_))
            ));
        }
        assert!(matches!(
            q.feedback("w", 0, Feedback::Label("up")),
            Err(FeedbackError::Invalid(_))
        ));
    }

    #[test]
    fn a_full_index_forgets_the_oldest_and_a_zero_index_is_off() {
        let q = quality(1000, 10);
        let book = q.book(&classifier("1"));
        for i in 0..200 {
            q.record(
                &book,
                Arm::Primary,
                &format!("r{i}"),
                &[said("ham", 0.1)],
                None,
                Duration::ZERO,
            );
        }
        if let Some(i) = &q.index {
            assert!(i.len() <= 16, "{}", i.len());
        }
        let known = (0..200)
            .filter(|i| {
                q.feedback(&format!("r{i}"), 0, Feedback::Label("ham"))
                    .is_ok()
            })
            .count();
        assert!((1..=16).contains(&known), "{known}");
        let off = quality(1000, 0);
        let book = off.book(&classifier("1"));
        off.record(
            &book,
            Arm::Primary,
            "a",
            &[said("ham", 0.1)],
            None,
            Duration::ZERO,
        );
        assert_eq!(
            off.feedback("a", 0, Feedback::Label("ham")),
            Err(FeedbackError::Off)
        );
        // Served counts (coverage) do not need the index.
        assert_eq!(
            arm(&off.report("spam").unwrap(), "1", Arm::Primary).served,
            1
        );
    }
}

//! Scoring: a version's predictions against fed-back labels (windowed and
//! since start), and a shadow against its primary on the same requests.

use std::collections::VecDeque;
use std::time::Duration;

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Registry};
use serde::Serialize;

use super::{Arm, Feedback, Kind};
use crate::task::Prediction;
use inferd_telemetry::metrics::Registrar;

/// 95% two-sided.
const Z: f64 = 1.959_963_984_540_054;

/// The largest true value a forecaster's label may carry.
const MAX_VALUE: f64 = 1e9;

/// A proportion with its 95% Wilson score interval (sound near 0 and 1 and
/// for small counts, where the normal approximation is not).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// The point estimate.
    pub value: f64,
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
}

impl Interval {
    /// `hits` of `n`; `None` for no trials.
    pub fn wilson(hits: u64, n: u64) -> Option<Interval> {
        if n == 0 {
            return None;
        }
        let (n, p) = (n as f64, hits as f64 / n as f64);
        let z2 = Z * Z;
        let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = Z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        Some(Interval {
            value: p,
            lower: (centre - half).max(0.0),
            upper: (centre + half).min(1.0),
        })
    }
}

/// What one version predicted for one instance, as scoring needs it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// The label's index, and the last label's probability.
    Class { label: u16, score: f32 },
    /// Each target's forecast.
    Values(smallvec::SmallVec<[f32; 2]>),
}

impl Outcome {
    pub(super) fn of(kind: &Kind, p: &Prediction) -> Outcome {
        match (kind, p) {
            (Kind::Labels(labels), Prediction::Label { label, scores }) => Outcome::Class {
                label: labels.iter().position(|l| l == label).unwrap_or(0) as u16,
                score: labels
                    .last()
                    .and_then(|l| scores.get(l))
                    .copied()
                    .unwrap_or(f32::NAN),
            },
            (Kind::Targets(targets), Prediction::Forecast { forecast }) => Outcome::Values(
                targets
                    .iter()
                    .map(|t| forecast.get(t).copied().unwrap_or(f32::NAN))
                    .collect(),
            ),
            _ => Outcome::Values(smallvec::SmallVec::new()),
        }
    }
}

/// The truth fed back, checked against the model.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Truth {
    Label(u16),
    Values(Vec<f64>),
}

impl Truth {
    pub(super) fn parse(kind: &Kind, fed: Feedback<'_>) -> Result<Truth, String> {
        match (kind, fed) {
            (Kind::Labels(labels), Feedback::Label(l)) => labels
                .iter()
                .position(|x| x == l)
                .map(|i| Truth::Label(i as u16))
                .ok_or_else(|| format!("label {l:?} is not one of the model's labels {labels:?}")),
            (Kind::Labels(_), Feedback::Value(_)) => {
                Err("this model is a classifier: send \"label\", not \"value\"".into())
            }
            (Kind::Targets(_), Feedback::Label(_)) => {
                Err("this model is a forecaster: send \"value\", not \"label\"".into())
            }
            (Kind::Targets(targets), Feedback::Value(v)) => {
                // Bounded, so that squared errors and their sums stay finite
                // and a value added to a window can be taken out again exactly
                // enough.
                let number = |v: &serde_json::Value, what: &str| {
                    v.as_f64()
                        .filter(|x| x.is_finite() && x.abs() <= MAX_VALUE)
                        .ok_or_else(|| {
                            format!("{what} must be a number within ±{MAX_VALUE:e}, got {v}")
                        })
                };
                match v {
                    serde_json::Value::Object(m) => {
                        if let Some(k) = m.keys().find(|k| !targets.contains(k)) {
                            return Err(format!("{k:?} is not one of the targets {targets:?}"));
                        }
                        targets
                            .iter()
                            .map(|t| match m.get(t) {
                                Some(x) => number(x, &format!("value.{t}")),
                                None => Err(format!("value.{t} is missing")),
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .map(Truth::Values)
                    }
                    _ if targets.len() == 1 => Ok(Truth::Values(vec![number(v, "value")?])),
                    _ => Err(format!(
                        "value must be an object with every target {targets:?}"
                    )),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Score {
    Class { pred: u16, truth: u16 },
    Error { abs: f64, sq: f64, n: u32 },
}

impl Score {
    fn of(outcome: &Outcome, truth: &Truth) -> Option<Score> {
        match (outcome, truth) {
            (Outcome::Class { label, .. }, Truth::Label(t)) => Some(Score::Class {
                pred: *label,
                truth: *t,
            }),
            (Outcome::Values(p), Truth::Values(t)) => {
                let (mut abs, mut sq, mut n) = (0.0, 0.0, 0);
                for (p, t) in p.iter().zip(t) {
                    let e = f64::from(*p) - t;
                    if e.is_finite() && (e * e).is_finite() {
                        abs += e.abs();
                        sq += e * e;
                        n += 1;
                    }
                }
                Some(Score::Error { abs, sq, n })
            }
            _ => None,
        }
    }

    fn correct(&self) -> Option<bool> {
        match self {
            Score::Class { pred, truth } => Some(pred == truth),
            Score::Error { .. } => None,
        }
    }
}

/// Sums that scores add to and subtract from.
#[derive(Debug, Clone)]
struct Tally {
    k: usize,
    /// `confusion[truth * k + pred]`.
    confusion: Vec<u64>,
    abs: f64,
    sq: f64,
    n: u64,
    labels: u64,
}

impl Tally {
    fn new(k: usize) -> Tally {
        Tally {
            k,
            confusion: vec![0; k * k],
            abs: 0.0,
            sq: 0.0,
            n: 0,
            labels: 0,
        }
    }

    fn add(&mut self, s: &Score, sign: i64) {
        match *s {
            Score::Class { pred, truth } => {
                let i = truth as usize * self.k + pred as usize;
                if let Some(c) = self.confusion.get_mut(i) {
                    *c = c.saturating_add_signed(sign);
                }
            }
            Score::Error { abs, sq, n } => {
                let f = sign as f64;
                self.abs += f * abs;
                self.sq += f * sq;
                self.n = self.n.saturating_add_signed(sign * i64::from(n));
            }
        }
        self.labels = self.labels.saturating_add_signed(sign);
    }

    fn correct(&self) -> u64 {
        (0..self.k).map(|i| self.confusion[i * self.k + i]).sum()
    }

    fn figures(&self, kind: &Kind) -> Figures {
        let mut f = Figures {
            labels: self.labels,
            accuracy: None,
            classes: Vec::new(),
            mae: None,
            rmse: None,
        };
        match kind {
            Kind::Labels(labels) => {
                f.accuracy = Interval::wilson(self.correct(), self.labels);
                let k = self.k;
                for (c, name) in labels.iter().enumerate() {
                    let tp = self.confusion[c * k + c];
                    let support: u64 = (0..k).map(|p| self.confusion[c * k + p]).sum();
                    let predicted: u64 = (0..k).map(|t| self.confusion[t * k + c]).sum();
                    let precision = Interval::wilson(tp, predicted);
                    let recall = Interval::wilson(tp, support);
                    let f1 = match (precision, recall) {
                        (Some(p), Some(r)) if p.value + r.value > 0.0 => {
                            Some(2.0 * p.value * r.value / (p.value + r.value))
                        }
                        (Some(_), Some(_)) => Some(0.0),
                        _ => None,
                    };
                    f.classes.push(ClassFigures {
                        label: name.clone(),
                        support,
                        precision,
                        recall,
                        f1,
                    });
                }
            }
            Kind::Targets(_) => {
                if self.n > 0 {
                    f.mae = Some(self.abs.max(0.0) / self.n as f64);
                    f.rmse = Some((self.sq.max(0.0) / self.n as f64).sqrt());
                }
            }
        }
        f
    }
}

/// One version's scores in one arm: the last `window` labels and all since
/// start.
pub(super) struct Scores {
    window: usize,
    ring: VecDeque<(u64, Score)>,
    recent: Tally,
    total: Tally,
}

impl Scores {
    pub(super) fn new(kind: &Kind, window: usize) -> Scores {
        let k = match kind {
            Kind::Labels(l) => l.len(),
            Kind::Targets(_) => 0,
        };
        Scores {
            window: window.max(1),
            ring: VecDeque::new(),
            recent: Tally::new(k),
            total: Tally::new(k),
        }
    }

    pub(super) fn labelled_total(&self) -> u64 {
        self.total.labels
    }

    /// Scores `outcome` against `truth`; `old` is the label it replaces.
    pub(super) fn label(
        &mut self,
        serial: u64,
        outcome: &Outcome,
        old: Option<&Truth>,
        truth: &Truth,
    ) {
        let Some(new) = Score::of(outcome, truth) else {
            return;
        };
        if let Some(old) = old.and_then(|t| Score::of(outcome, t)) {
            self.total.add(&old, -1);
        }
        self.total.add(&new, 1);
        // A replaced label still in the window is changed where it stands;
        // one that has left it enters again as the newest. A first label is
        // never in the window: no search.
        if old.is_some() {
            if let Some(slot) = self.ring.iter_mut().rev().find(|(s, _)| *s == serial) {
                self.recent.add(&slot.1, -1);
                slot.1 = new;
                self.recent.add(&new, 1);
                return;
            }
        }
        if self.ring.len() >= self.window {
            if let Some((_, gone)) = self.ring.pop_front() {
                self.recent.add(&gone, -1);
            }
        }
        self.ring.push_back((serial, new));
        self.recent.add(&new, 1);
    }

    pub(super) fn report(&self, version: &str, arm: Arm, served: u64, kind: &Kind) -> ArmReport {
        ArmReport {
            version: version.to_string(),
            arm,
            served,
            labelled: self.total.labels,
            coverage: (served > 0).then(|| self.total.labels as f64 / served as f64),
            window: self.recent.figures(kind),
            total: self.total.figures(kind),
        }
    }

    pub(super) fn export(
        &self,
        m: &QualityMetrics,
        model: &str,
        version: &str,
        arm: Arm,
        served: u64,
        kind: &Kind,
    ) {
        let l = [model, version, arm.as_str()];
        let f = self.recent.figures(kind);
        m.labels.with_label_values(&l).set(f.labels as i64);
        if served > 0 {
            m.coverage
                .with_label_values(&l)
                .set(self.total.labels as f64 / served as f64);
        }
        if let Some(a) = f.accuracy {
            m.accuracy.with_label_values(&l).set(a.value);
            m.accuracy_lower.with_label_values(&l).set(a.lower);
            m.accuracy_upper.with_label_values(&l).set(a.upper);
        }
        for c in &f.classes {
            let l = [model, version, arm.as_str(), c.label.as_str()];
            if let Some(p) = c.precision {
                m.precision.with_label_values(&l).set(p.value);
            }
            if let Some(r) = c.recall {
                m.recall.with_label_values(&l).set(r.value);
            }
            if let Some(f1) = c.f1 {
                m.f1.with_label_values(&l).set(f1);
            }
        }
        if let (Some(mae), Some(rmse)) = (f.mae, f.rmse) {
            m.mae.with_label_values(&l).set(mae);
            m.rmse.with_label_values(&l).set(rmse);
        }
    }
}

/// A version's figures over some labels.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Labels counted.
    pub labels: u64,
    /// Share predicted right (classifiers).
    pub accuracy: Option<Interval>,
    /// Per class (classifiers).
    pub classes: Vec<ClassFigures>,
    /// Mean absolute error over every target (forecasters).
    pub mae: Option<f64>,
    /// Root mean squared error over every target (forecasters).
    pub rmse: Option<f64>,
}

/// One class's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ClassFigures {
    /// The class.
    pub label: String,
    /// Labelled instances of the class.
    pub support: u64,
    /// Of the instances predicted as the class, the share that is.
    pub precision: Option<Interval>,
    /// Of the instances of the class, the share predicted so.
    pub recall: Option<Interval>,
    /// Harmonic mean of the two.
    pub f1: Option<f64>,
}

/// One version in one arm.
#[derive(Debug, Clone, Serialize)]
pub struct ArmReport {
    /// The version.
    pub version: String,
    /// Its arm.
    pub arm: Arm,
    /// Instances served in this arm since start.
    pub served: u64,
    /// Of those, labelled.
    pub labelled: u64,
    /// `labelled / served`.
    pub coverage: Option<f64>,
    /// Over the last `window` labels.
    pub window: Figures,
    /// Over every label since start.
    pub total: Figures,
}

/// A shadow against its primary.
pub(super) struct Comparison {
    window: usize,
    requests: u64,
    /// Of those, classifier outputs (agreement's denominator).
    classes: u64,
    agree: u64,
    diffs: VecDeque<f64>,
    latency: VecDeque<f64>,
    /// Labelled instances both ran: both right, only the primary, only the
    /// shadow, neither (classifiers); summed absolute errors (forecasters).
    both: u64,
    primary_only: u64,
    shadow_only: u64,
    neither: u64,
    abs_primary: f64,
    abs_shadow: f64,
    labelled_values: u64,
}

impl Comparison {
    pub(super) fn new(window: usize) -> Comparison {
        Comparison {
            window: window.max(1),
            requests: 0,
            classes: 0,
            agree: 0,
            diffs: VecDeque::new(),
            latency: VecDeque::new(),
            both: 0,
            primary_only: 0,
            shadow_only: 0,
            neither: 0,
            abs_primary: 0.0,
            abs_shadow: 0.0,
            labelled_values: 0,
        }
    }

    pub(super) fn outputs(&mut self, p: &Outcome, s: &Outcome, tp: Duration, ts: Duration) {
        self.requests += 1;
        let diff = match (p, s) {
            (Outcome::Class { label: a, score: x }, Outcome::Class { label: b, score: y }) => {
                self.classes += 1;
                self.agree += u64::from(a == b);
                f64::from((x - y).abs())
            }
            (Outcome::Values(a), Outcome::Values(b)) => a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from((x - y).abs()))
                .fold(0.0, f64::max),
            _ => f64::NAN,
        };
        push_bounded(&mut self.diffs, diff, self.window);
        push_bounded(
            &mut self.latency,
            ts.as_secs_f64() * 1e3 - tp.as_secs_f64() * 1e3,
            self.window,
        );
    }

    /// Classifiers only: forecasts have no labels to agree on.
    pub(super) fn agreement(&self) -> Option<Interval> {
        if self.labelled_values > 0 || self.classes == 0 {
            return None;
        }
        Interval::wilson(self.agree, self.classes)
    }

    fn tally(&mut self, p: &Outcome, s: &Outcome, truth: &Truth, sign: i64) {
        let (Some(a), Some(b)) = (Score::of(p, truth), Score::of(s, truth)) else {
            return;
        };
        if let (Some(x), Some(y)) = (a.correct(), b.correct()) {
            let c = match (x, y) {
                (true, true) => &mut self.both,
                (true, false) => &mut self.primary_only,
                (false, true) => &mut self.shadow_only,
                (false, false) => &mut self.neither,
            };
            *c = c.saturating_add_signed(sign);
        } else if let (Score::Error { abs: ea, n: na, .. }, Score::Error { abs: eb, n: nb, .. }) =
            (a, b)
        {
            if na > 0 && nb > 0 {
                let f = sign as f64;
                self.abs_primary += f * ea / f64::from(na);
                self.abs_shadow += f * eb / f64::from(nb);
                self.labelled_values = self.labelled_values.saturating_add_signed(sign);
            }
        }
    }

    pub(super) fn label(&mut self, p: &Outcome, s: &Outcome, truth: &Truth) {
        self.tally(p, s, truth, 1);
    }

    pub(super) fn unlabel(&mut self, p: &Outcome, s: &Outcome, truth: &Truth) {
        self.tally(p, s, truth, -1);
    }

    pub(super) fn report(&self, primary: &str, shadow: &str) -> ComparisonReport {
        let n = self.both + self.primary_only + self.shadow_only + self.neither;
        let labelled = if self.labelled_values > 0 {
            let m = self.labelled_values as f64;
            Some(PairedFigures {
                labels: self.labelled_values,
                primary_accuracy: None,
                shadow_accuracy: None,
                difference: None,
                primary_mae: Some(self.abs_primary / m),
                shadow_mae: Some(self.abs_shadow / m),
            })
        } else if n > 0 {
            // Shadow minus primary on the same labelled instances: only the
            // discordant pairs (one right, the other wrong) move it. Exact:
            // a Clopper-Pearson interval on the shadow's share of them,
            // scaled to the difference (McNemar's conditioning), so that a
            // handful of pairs never reads as a sure difference.
            let (b, c, nf) = (self.primary_only as f64, self.shadow_only as f64, n as f64);
            let m = b + c;
            let d = (c - b) / nf;
            let (lo, hi) = if m == 0.0 {
                // No discordant pair: the discordance rate is below 1-(α/2)^(1/n).
                let u = 1.0 - 0.025f64.powf(1.0 / nf);
                (-u, u)
            } else {
                let (l, u) =
                    clopper_pearson(self.shadow_only, self.primary_only + self.shadow_only);
                ((m / nf) * (2.0 * l - 1.0), (m / nf) * (2.0 * u - 1.0))
            };
            Some(PairedFigures {
                labels: n,
                primary_accuracy: Interval::wilson(self.both + self.primary_only, n),
                shadow_accuracy: Interval::wilson(self.both + self.shadow_only, n),
                difference: Some(Interval {
                    value: d,
                    lower: lo.max(-1.0),
                    upper: hi.min(1.0),
                }),
                primary_mae: None,
                shadow_mae: None,
            })
        } else {
            None
        };
        ComparisonReport {
            primary: primary.to_string(),
            shadow: shadow.to_string(),
            requests: self.requests,
            agreement: self.agreement(),
            output_difference: Quantiles::of(&self.diffs),
            latency_difference_ms: Quantiles::of(&self.latency),
            labelled,
        }
    }
}

/// The exact 95% interval of a proportion `k` of `n` (Clopper-Pearson).
fn clopper_pearson(k: u64, n: u64) -> (f64, f64) {
    use statrs::distribution::{Beta, ContinuousCDF};
    let (kf, nf) = (k as f64, n as f64);
    let lower = if k == 0 {
        0.0
    } else {
        Beta::new(kf, nf - kf + 1.0).map_or(0.0, |b| b.inverse_cdf(0.025))
    };
    let upper = if k == n {
        1.0
    } else {
        Beta::new(kf + 1.0, nf - kf).map_or(1.0, |b| b.inverse_cdf(0.975))
    };
    (lower, upper)
}

fn push_bounded(q: &mut VecDeque<f64>, x: f64, cap: usize) {
    if x.is_nan() {
        return;
    }
    if q.len() >= cap {
        q.pop_front();
    }
    q.push_back(x);
}

/// Quantiles of the last window of values.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    /// Values counted.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Quantiles {
    fn of(values: &VecDeque<f64>) -> Option<Quantiles> {
        if values.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = values.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(Quantiles {
            n: v.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
        })
    }
}

/// A shadow beside its primary on the same requests.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonReport {
    /// The primary version.
    pub primary: String,
    /// The shadow version.
    pub shadow: String,
    /// Instances both ran.
    pub requests: u64,
    /// Share of those with the same label (classifiers).
    pub agreement: Option<Interval>,
    /// |primary - shadow|: the last label's probability, or the largest
    /// target difference (last `window` instances).
    pub output_difference: Option<Quantiles>,
    /// Shadow minus primary model time, milliseconds.
    pub latency_difference_ms: Option<Quantiles>,
    /// On the instances both ran that have labels.
    pub labelled: Option<PairedFigures>,
}

/// Two versions scored on the same labelled instances.
#[derive(Debug, Clone, Serialize)]
pub struct PairedFigures {
    /// Labelled instances both ran.
    pub labels: u64,
    /// The primary's accuracy on them.
    pub primary_accuracy: Option<Interval>,
    /// The shadow's.
    pub shadow_accuracy: Option<Interval>,
    /// Shadow minus primary, with its exact 95% interval (paired, from the
    /// discordant pairs; an interval excluding 0 says the difference is real).
    pub difference: Option<Interval>,
    /// The primary's mean absolute error on them (forecasters).
    pub primary_mae: Option<f64>,
    /// The shadow's.
    pub shadow_mae: Option<f64>,
}

/// What the quality loop exports.
#[allow(missing_docs)] // Each field's help text is its documentation.
pub struct QualityMetrics {
    pub served: IntCounterVec,
    pub labels: IntGaugeVec,
    pub coverage: GaugeVec,
    pub accuracy: GaugeVec,
    pub accuracy_lower: GaugeVec,
    pub accuracy_upper: GaugeVec,
    pub precision: GaugeVec,
    pub recall: GaugeVec,
    pub f1: GaugeVec,
    pub mae: GaugeVec,
    pub rmse: GaugeVec,
    pub feedback: IntCounterVec,
    pub shadow_runs: IntCounterVec,
    pub shadow_agreement: GaugeVec,
    pub card_accuracy: GaugeVec,
    pub drift_profile: IntGaugeVec,
    pub drift_alarm: IntGaugeVec,
    pub drift_psi: GaugeVec,
    pub drift_observations: IntGaugeVec,
}

impl QualityMetrics {
    /// Removes every series of `model`'s `version`, and the shadow
    /// comparisons that name it as the shadow.
    pub fn forget(&self, model: &str, version: &str) {
        forget_in(&self.served, model, version);
        forget_in(&self.labels, model, version);
        for g in [
            &self.coverage,
            &self.accuracy,
            &self.accuracy_lower,
            &self.accuracy_upper,
            &self.precision,
            &self.recall,
            &self.f1,
            &self.mae,
            &self.rmse,
            &self.shadow_agreement,
            &self.card_accuracy,
            &self.drift_psi,
        ] {
            forget_in(g, model, version);
        }
        forget_in(&self.shadow_runs, model, version);
        for g in [
            &self.drift_profile,
            &self.drift_alarm,
            &self.drift_observations,
        ] {
            forget_in(g, model, version);
        }
    }

    /// Registered into `registry`.
    pub fn new(registry: &Registry) -> Self {
        let r = Registrar(registry);
        let mva = &["model", "version", "arm"];
        let mvac = &["model", "version", "arm", "class"];
        let mv = &["model", "version"];
        QualityMetrics {
            served: r.counter_vec(
                "inferd_quality_served_total",
                "Instances served, per model, version and arm (primary, canary, shadow): coverage's denominator",
                mva,
            ),
            labels: r.gauge_vec(
                "inferd_quality_window_labels",
                "Labels in the window the quality gauges cover",
                mva,
            ),
            coverage: r.float_gauge_vec(
                "inferd_quality_coverage_ratio",
                "Labelled instances over served instances since start",
                mva,
            ),
            accuracy: r.float_gauge_vec(
                "inferd_quality_accuracy_ratio",
                "Share of the window's labels predicted right",
                mva,
            ),
            accuracy_lower: r.float_gauge_vec(
                "inferd_quality_accuracy_lower_ratio",
                "Lower end of the accuracy's 95% Wilson interval",
                mva,
            ),
            accuracy_upper: r.float_gauge_vec(
                "inferd_quality_accuracy_upper_ratio",
                "Upper end of the accuracy's 95% Wilson interval",
                mva,
            ),
            precision: r.float_gauge_vec(
                "inferd_quality_precision_ratio",
                "Per class, over the window: of the instances predicted as the class, the share that are",
                mvac,
            ),
            recall: r.float_gauge_vec(
                "inferd_quality_recall_ratio",
                "Per class, over the window: of the instances of the class, the share predicted so",
                mvac,
            ),
            f1: r.float_gauge_vec(
                "inferd_quality_f1_ratio",
                "Per class, over the window: harmonic mean of precision and recall",
                mvac,
            ),
            mae: r.float_gauge_vec(
                "inferd_quality_mae",
                "Forecasters: mean absolute error over the window's labels, in the target's units",
                mva,
            ),
            rmse: r.float_gauge_vec(
                "inferd_quality_rmse",
                "Forecasters: root mean squared error over the window's labels",
                mva,
            ),
            feedback: r.counter_vec(
                "inferd_feedback_total",
                "Labels fed back, by outcome: accepted, unchanged (a duplicate), replaced, deferred (not served here; recorded in PostgreSQL for the join there), unknown (no such served instance here), invalid, off",
                &["outcome"],
            ),
            shadow_runs: r.counter_vec(
                "inferd_shadow_runs_total",
                "Requests copied to a shadow version, by outcome: ran, dropped (no idle capacity), failed",
                &["model", "version", "shadow", "outcome"],
            ),
            shadow_agreement: r.float_gauge_vec(
                "inferd_shadow_agreement_ratio",
                "Share of shadowed instances where the shadow's label equals the primary's",
                &["model", "version", "shadow"],
            ),
            card_accuracy: r.float_gauge_vec(
                "inferd_quality_card_accuracy_ratio",
                "The accuracy the version's model card states (model.toml [metrics] stratified_accuracy), for alerts against the live figure",
                mv,
            ),
            drift_profile: r.gauge_vec(
                "inferd_drift_profile",
                "1 when the version has a reference profile (reference.json) and drift is judged, 0 when not",
                mv,
            ),
            drift_alarm: r.gauge_vec(
                "inferd_drift_alarm",
                "1 while any feature of the version's traffic window drifts from its training data",
                mv,
            ),
            drift_psi: r.float_gauge_vec(
                "inferd_drift_psi",
                "Population stability index of a feature's traffic window against the training data",
                &["model", "version", "feature"],
            ),
            drift_observations: r.gauge_vec(
                "inferd_drift_window_observations",
                "Instances in the version's drift window",
                mv,
            ),
        }
    }
}

/// Removes the series of `vec` whose `model` is `model` and whose `version`
/// or `shadow` is `version`. The vector is asked for its series (prometheus
/// removes only by exact label values, and a version's classes, arms and
/// features are many).
fn forget_in<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    model: &str,
    version: &str,
) {
    use prometheus::core::Collector;
    use std::collections::HashMap;
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            let names = |k: &str| labels.get(k).is_some_and(|v| *v == version);
            if labels.get("model") == Some(&model) && (names("version") || names("shadow")) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

//! Drift against a version's training data: the reference profile training
//! writes beside the graph (`reference.json`), the same features computed on
//! live traffic, and a sliding window judged by PSI and a chi-square test.
//!
//! The features are a fixed catalogue with one definition here and one in
//! `training/profile.py`; a profile's `checks` (inputs with the feature
//! values training computed) hold the two equal in a test. Features are taken
//! from the instance *as the graph sees it* (cleaned text, a filled window),
//! so that what is judged is what the model was fitted on, and the window
//! features are level-free: a forecaster whose graph subtracts each window's
//! last reading does not drift just because the level rises.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::backend::InputBatch;
use crate::task::{Prediction, Task};

/// `reference.json`: per feature, the training rows binned.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Profile {
    /// The format's version; 1.
    pub schema: u32,
    /// What the profile was built from.
    #[serde(default)]
    pub source: String,
    /// Training rows profiled.
    pub rows: u64,
    /// The features, in the order they are judged.
    pub features: Vec<FeatureRef>,
    /// Inputs with the feature values training computed, for parity tests.
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// One feature's reference distribution.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FeatureRef {
    /// A name from the catalogue (see `Feature`).
    pub name: String,
    /// `input` or `prediction`.
    pub kind: String,
    /// k-1 ascending inner edges; a value's bin is the number of edges at or
    /// below it.
    pub edges: Vec<f64>,
    /// Training rows per bin.
    pub counts: Vec<u64>,
}

/// An input and the feature values training computed for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Check {
    /// The instance as a client sends it.
    pub input: serde_json::Value,
    /// Feature name to value.
    pub features: std::collections::BTreeMap<String, f64>,
}

/// The catalogue: what can be computed from an instance as the graph sees it
/// and from its prediction.
#[derive(Debug, Clone, PartialEq)]
pub enum Feature {
    /// Code points of the cleaned text.
    Length,
    /// Tokens as the graph's tokenizer finds them (`[a-zA-Z0-9][a-zA-Z0-9'$]+`).
    Tokens,
    /// ASCII capitals over ASCII letters.
    UpperRatio,
    /// ASCII digits over code points.
    DigitRatio,
    /// Code points above 127 over code points.
    NonAsciiRatio,
    /// Standard deviation of the window's first column.
    Std,
    /// Mean step between consecutive readings.
    DiffMean,
    /// Standard deviation of those steps.
    DiffStd,
    /// The largest step, in absolute value.
    DiffAbsMax,
    /// Share of steps exactly zero (a stuck sensor).
    FlatRatio,
    /// The last reading's distance from the window's mean, in standard deviations.
    LastDev,
    /// A class's probability (`p_<label>`).
    Probability(String),
    /// A target's forecast minus its last reading (`step_<target>`).
    Step(String),
}

impl Feature {
    fn parse(name: &str) -> Option<Feature> {
        Some(match name {
            "length" => Feature::Length,
            "tokens" => Feature::Tokens,
            "upper_ratio" => Feature::UpperRatio,
            "digit_ratio" => Feature::DigitRatio,
            "non_ascii_ratio" => Feature::NonAsciiRatio,
            "std" => Feature::Std,
            "diff_mean" => Feature::DiffMean,
            "diff_std" => Feature::DiffStd,
            "diff_abs_max" => Feature::DiffAbsMax,
            "flat_ratio" => Feature::FlatRatio,
            "last_dev" => Feature::LastDev,
            _ => {
                if let Some(l) = name.strip_prefix("p_") {
                    Feature::Probability(l.to_string())
                } else if let Some(t) = name.strip_prefix("step_") {
                    Feature::Step(t.to_string())
                } else {
                    return None;
                }
            }
        })
    }

    fn is_text(&self) -> bool {
        matches!(
            self,
            Feature::Length
                | Feature::Tokens
                | Feature::UpperRatio
                | Feature::DigitRatio
                | Feature::NonAsciiRatio
        )
    }

    fn is_prediction(&self) -> bool {
        matches!(self, Feature::Probability(_) | Feature::Step(_))
    }
}

/// A profile checked against the version's task: every feature known and
/// computable, every binning well-formed.
#[derive(Debug)]
pub struct Reference {
    /// As read.
    pub profile: Profile,
    features: Vec<Feature>,
    /// Per feature, the reference share of each bin (smoothed).
    expected: Vec<Vec<f64>>,
    /// Per forecast target, its column in the window (for `step_*`).
    columns: Vec<Option<usize>>,
}

impl Reference {
    /// Reads `dir/reference.json`: `Ok(None)` when there is none.
    pub fn load(dir: &Path, task: &Task) -> Result<Option<Reference>, String> {
        let path = dir.join("reference.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let profile: Profile = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Reference::new(profile, task).map(Some)
    }

    /// Checks `profile` against `task`.
    pub fn new(profile: Profile, task: &Task) -> Result<Reference, String> {
        if profile.schema != 1 {
            return Err(format!("unknown profile schema {}", profile.schema));
        }
        if profile.features.is_empty() {
            return Err("the profile lists no feature".into());
        }
        let mut features = Vec::new();
        let mut expected = Vec::new();
        let mut columns = Vec::new();
        for f in &profile.features {
            let feature = Feature::parse(&f.name)
                .ok_or_else(|| format!("feature {:?} is not in the catalogue", f.name))?;
            let fits = match (task, &feature) {
                (Task::TextClassification { labels, .. }, Feature::Probability(l)) => {
                    labels.contains(l)
                }
                (Task::TextClassification { .. }, f) => f.is_text(),
                (Task::Forecast { targets, .. }, Feature::Step(t)) => targets.contains(t),
                (Task::Forecast { .. }, f) => !f.is_text() && !f.is_prediction(),
            };
            if !fits {
                return Err(format!("feature {:?} does not apply to this task", f.name));
            }
            if f.kind
                != if feature.is_prediction() {
                    "prediction"
                } else {
                    "input"
                }
            {
                return Err(format!(
                    "feature {:?} has the wrong kind {:?}",
                    f.name, f.kind
                ));
            }
            // A bin index is a u8 and 255 means "not known".
            if f.counts.len() > 255 {
                return Err(format!("feature {:?}: at most 255 bins", f.name));
            }
            if f.counts.len() != f.edges.len() + 1 || f.counts.len() < 2 {
                return Err(format!(
                    "feature {:?}: {} edges need {} counts, got {}",
                    f.name,
                    f.edges.len(),
                    f.edges.len() + 1,
                    f.counts.len()
                ));
            }
            if f.edges.windows(2).any(|w| w[0] >= w[1]) || f.edges.iter().any(|e| !e.is_finite()) {
                return Err(format!(
                    "feature {:?}: edges must be finite and increasing",
                    f.name
                ));
            }
            expected.push(smoothed(&f.counts));
            columns.push(match (&feature, task) {
                (Feature::Step(t), Task::Forecast { features, .. }) => {
                    Some(features.iter().position(|c| c == t).ok_or_else(|| {
                        format!("step_{t}: the target is not a column of the window")
                    })?)
                }
                _ => None,
            });
            features.push(feature);
        }
        Ok(Reference {
            profile,
            features,
            expected,
            columns,
        })
    }

    /// Feature names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profile.features.iter().map(|f| f.name.as_str())
    }

    /// Instance `i`'s input features, in the profile's order. A prediction
    /// feature's place holds what `predictions` needs later (a forecast
    /// target's last reading), or `NaN`.
    pub fn inputs(&self, batch: &InputBatch, i: usize) -> Values {
        let text = match batch {
            InputBatch::Text(t) => t.get(i).map(|s| TextStats::of(s)),
            InputBatch::Windows { .. } => None,
        };
        let (window, steps, width) = match batch {
            InputBatch::Windows {
                steps, features, ..
            } => (batch.window(i), *steps, *features),
            InputBatch::Text(_) => (None, 0, 1),
        };
        let stats = window.map(|w| WindowStats::of(w, width.max(1)));
        self.features
            .iter()
            .zip(&self.columns)
            .map(|(f, column)| match (f, &text, &stats) {
                (Feature::Length, Some(t), _) => t.length,
                (Feature::Tokens, Some(t), _) => t.tokens,
                (Feature::UpperRatio, Some(t), _) => t.upper_ratio(),
                (Feature::DigitRatio, Some(t), _) => t.ratio(t.digits),
                (Feature::NonAsciiRatio, Some(t), _) => t.ratio(t.non_ascii),
                (Feature::Std, _, Some(w)) => w.std,
                (Feature::DiffMean, _, Some(w)) => w.diff_mean,
                (Feature::DiffStd, _, Some(w)) => w.diff_std,
                (Feature::DiffAbsMax, _, Some(w)) => w.diff_abs_max,
                (Feature::FlatRatio, _, Some(w)) => w.flat_ratio,
                (Feature::LastDev, _, Some(w)) => w.last_dev,
                (Feature::Step(_), _, _) => match (window, column) {
                    (Some(w), Some(c)) if steps > 0 => w
                        .get((steps - 1) * width + c)
                        .map_or(f64::NAN, |v| f64::from(*v)),
                    _ => f64::NAN,
                },
                _ => f64::NAN,
            })
            .collect()
    }

    /// Completes `values` (from `inputs`) with the prediction's features.
    pub fn predictions(&self, values: &mut [f64], p: &Prediction) {
        for (f, v) in self.features.iter().zip(values) {
            match (f, p) {
                (Feature::Probability(l), Prediction::Label { scores, .. }) => {
                    *v = scores.get(l).map_or(f64::NAN, |s| f64::from(*s));
                }
                (Feature::Step(t), Prediction::Forecast { forecast }) => {
                    *v = forecast.get(t).map_or(f64::NAN, |f| f64::from(*f) - *v);
                }
                _ => {}
            }
        }
    }

    fn bin(&self, feature: usize, x: f64) -> u8 {
        let edges = &self.profile.features[feature].edges;
        // At most 254: `Reference::new` refuses more than 255 bins.
        edges.partition_point(|e| *e <= x).min(254) as u8
    }
}

/// One instance's feature values, in the profile's order; inline for up to
/// eight features, so a request's features cost no allocation.
pub type Values = SmallVec<[f64; 8]>;

/// Shares per bin with half a count added to each, so an empty bin on either
/// side keeps PSI finite; the same smoothing as `training/profile.py`.
fn smoothed(counts: &[u64]) -> Vec<f64> {
    let n: f64 = counts.iter().sum::<u64>() as f64;
    let k = counts.len() as f64;
    counts
        .iter()
        .map(|c| (*c as f64 + 0.5) / (n + 0.5 * k))
        .collect()
}

struct TextStats {
    length: f64,
    tokens: f64,
    upper: f64,
    letters: f64,
    digits: f64,
    non_ascii: f64,
}

impl TextStats {
    fn of(s: &str) -> TextStats {
        let (mut length, mut tokens, mut upper, mut letters, mut digits, mut non_ascii) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        // A token is a maximal run that starts with an ASCII letter or digit
        // and continues with letters, digits, `'` or `$`, at least two long.
        let mut run = 0usize;
        for c in s.chars() {
            length += 1;
            if !c.is_ascii() {
                non_ascii += 1;
            } else if c.is_ascii_alphabetic() {
                letters += 1;
                upper += u64::from(c.is_ascii_uppercase());
            } else if c.is_ascii_digit() {
                digits += 1;
            }
            let alnum = c.is_ascii_alphanumeric();
            if run == 0 {
                if alnum {
                    run = 1;
                }
            } else if alnum || c == '\'' || c == '$' {
                run += 1;
            } else {
                tokens += u64::from(run >= 2);
                run = 0;
            }
        }
        tokens += u64::from(run >= 2);
        TextStats {
            length: length as f64,
            tokens: tokens as f64,
            upper: upper as f64,
            letters: letters as f64,
            digits: digits as f64,
            non_ascii: non_ascii as f64,
        }
    }

    fn upper_ratio(&self) -> f64 {
        if self.letters == 0.0 {
            0.0
        } else {
            self.upper / self.letters
        }
    }

    fn ratio(&self, x: f64) -> f64 {
        if self.length == 0.0 {
            0.0
        } else {
            x / self.length
        }
    }
}

struct WindowStats {
    std: f64,
    diff_mean: f64,
    diff_std: f64,
    diff_abs_max: f64,
    flat_ratio: f64,
    last_dev: f64,
}

impl WindowStats {
    /// Over the first column of a row-major window `width` values wide. The
    /// column and its differences are copied out once (on the stack for
    /// windows up to 64 rows): the six statistics as passes over lazy
    /// `step_by`/`zip` iterators cost about 8,000 instructions per LSTM
    /// request, as much as the rest of the quality loop. The sums run in the
    /// same order as before, so the figures are the same to the bit.
    fn of(window: &[f32], width: usize) -> WindowStats {
        let x: SmallVec<[f64; 64]> = window
            .iter()
            .step_by(width.max(1))
            .map(|v| f64::from(*v))
            .collect();
        let d: SmallVec<[f64; 64]> = x.windows(2).map(|p| p[1] - p[0]).collect();
        let (mean, std) = mean_std(&x);
        let (diff_mean, diff_std) = mean_std(&d);
        let last = x.last().copied().unwrap_or(0.0);
        WindowStats {
            std,
            diff_mean,
            diff_std,
            diff_abs_max: d.iter().fold(0.0, |m: f64, v| m.max(v.abs())),
            flat_ratio: if d.is_empty() {
                0.0
            } else {
                d.iter().filter(|v| **v == 0.0).count() as f64 / d.len() as f64
            },
            last_dev: if std == 0.0 { 0.0 } else { (last - mean) / std },
        }
    }
}

/// Mean and population standard deviation (numpy's defaults), 0 for none.
fn mean_std(x: &[f64]) -> (f64, f64) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// How the window is judged.
#[derive(Debug, Clone)]
pub struct DriftRule {
    /// The last this many observations (count-based window).
    pub window: usize,
    /// ... no older than this (time-based window).
    pub span: Duration,
    /// Judged only once the window holds this many.
    pub min_count: usize,
    /// A feature drifts when its PSI reaches this ...
    pub psi: f64,
    /// ... and its chi-square p-value is below this over the number of
    /// features (Bonferroni).
    pub alpha: f64,
}

impl Default for DriftRule {
    fn default() -> Self {
        DriftRule {
            window: 1000,
            span: Duration::from_secs(3600),
            min_count: 100,
            psi: 0.25,
            alpha: 0.01,
        }
    }
}

/// One feature's state in the last judgement.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeatureDrift {
    /// The feature.
    pub name: String,
    /// Population stability index of the window against the reference.
    pub psi: f64,
    /// The chi-square goodness-of-fit test's p-value.
    pub p_value: f64,
    /// PSI at or above the threshold and p below alpha over the features.
    pub drifting: bool,
}

/// A version's drift: judged or not yet, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DriftState {
    /// Observations in the window now.
    pub observations: usize,
    /// Whether the window was big enough to judge.
    pub judged: bool,
    /// Whether any feature drifts.
    pub alarm: bool,
    /// Per feature, in the profile's order (empty until judged).
    pub features: Vec<FeatureDrift>,
}

/// The sliding window of one version's live traffic, binned as the profile.
pub struct DriftWindow {
    rule: DriftRule,
    /// When each observation in the window was made.
    seen: VecDeque<Instant>,
    /// Each observation's bin per feature, `features` at a time
    /// (`u8::MAX`: not known).
    bins: VecDeque<u8>,
    features: usize,
    /// Per feature, observations per bin in the window.
    counts: Vec<Vec<u32>>,
}

impl DriftWindow {
    /// An empty window for `reference`.
    pub fn new(reference: &Reference, rule: DriftRule) -> DriftWindow {
        DriftWindow {
            counts: reference
                .profile
                .features
                .iter()
                .map(|f| vec![0; f.counts.len()])
                .collect(),
            seen: VecDeque::with_capacity(rule.window.min(4096)),
            bins: VecDeque::with_capacity(rule.window.min(4096) * reference.features.len()),
            features: reference.features.len(),
            rule,
        }
    }

    /// Adds one observation's feature values at `now`, dropping what falls
    /// out of either window.
    pub fn push(&mut self, reference: &Reference, values: &[f64], now: Instant) {
        self.expire(now);
        while self.seen.len() >= self.rule.window.max(1) {
            self.pop();
        }
        for (f, v) in values.iter().enumerate().take(self.features) {
            let b = if v.is_nan() {
                u8::MAX
            } else {
                reference.bin(f, *v)
            };
            if let Some(c) = self.counts.get_mut(f).and_then(|c| c.get_mut(b as usize)) {
                *c += 1;
            }
            self.bins.push_back(b);
        }
        for _ in values.len()..self.features {
            self.bins.push_back(u8::MAX);
        }
        self.seen.push_back(now);
    }

    /// Drops what is older than the span.
    pub fn expire(&mut self, now: Instant) {
        while self
            .seen
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.rule.span)
        {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if self.seen.pop_front().is_none() {
            return;
        }
        for f in 0..self.features {
            let Some(b) = self.bins.pop_front() else {
                return;
            };
            if let Some(c) = self.counts.get_mut(f).and_then(|c| c.get_mut(b as usize)) {
                *c -= 1;
            }
        }
    }

    /// Judges the window as it stands.
    pub fn judge(&self, reference: &Reference) -> DriftState {
        let n = self.seen.len();
        if n < self.rule.min_count.max(1) {
            return DriftState {
                observations: n,
                judged: false,
                alarm: false,
                features: Vec::new(),
            };
        }
        let alpha = self.rule.alpha / reference.features.len() as f64;
        let features: Vec<FeatureDrift> = reference
            .profile
            .features
            .iter()
            .zip(&self.counts)
            .zip(&reference.expected)
            .map(|((f, counts), expected)| {
                let (psi, p_value) = compare(counts, expected);
                FeatureDrift {
                    name: f.name.clone(),
                    psi,
                    p_value,
                    drifting: psi >= self.rule.psi && p_value < alpha,
                }
            })
            .collect();
        DriftState {
            observations: n,
            judged: true,
            alarm: features.iter().any(|f| f.drifting),
            features,
        }
    }
}

/// PSI and the chi-square p-value of window counts against expected shares.
fn compare(counts: &[u32], expected: &[f64]) -> (f64, f64) {
    let n: f64 = counts.iter().map(|c| f64::from(*c)).sum();
    let k = counts.len() as f64;
    if n == 0.0 {
        return (0.0, 1.0);
    }
    let mut psi = 0.0;
    let mut chi2 = 0.0;
    for (c, p) in counts.iter().zip(expected) {
        let c = f64::from(*c);
        let q = (c + 0.5) / (n + 0.5 * k);
        psi += (q - p) * (q / p).ln();
        chi2 += (c - n * p) * (c - n * p) / (n * p);
    }
    let p_value = ChiSquared::new(k - 1.0).map_or(1.0, |d| d.sf(chi2));
    (psi, p_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_task() -> Task {
        Task::TextClassification {
            labels: vec!["ham".into(), "spam".into()],
            max_text_bytes: 1 << 20,
            output: "probabilities".into(),
            email: None,
        }
    }

    fn profile(edges: Vec<f64>, counts: Vec<u64>) -> Profile {
        Profile {
            schema: 1,
            source: String::new(),
            rows: counts.iter().sum(),
            features: vec![FeatureRef {
                name: "length".into(),
                kind: "input".into(),
                edges,
                counts,
            }],
            checks: Vec::new(),
        }
    }

    #[test]
    fn text_statistics_follow_the_graphs_tokenizer() {
        let t = TextStats::of("Free $$ MONEY, it's 100% é x");
        assert_eq!(t.length, 28.0);
        // "Free", "MONEY", "it's", "100": a lone "x" and "$$" are not tokens.
        assert_eq!(t.tokens, 4.0);
        assert_eq!(t.non_ascii, 1.0);
        assert_eq!(t.digits, 3.0);
        assert_eq!(t.upper_ratio(), 6.0 / 13.0);
    }

    #[test]
    fn window_statistics_are_level_free() {
        let a = WindowStats::of(&[1.0f32, 2.0, 2.0, 4.0], 1);
        let b = WindowStats::of(&[401.0f32, 402.0, 402.0, 404.0], 1);
        // Only the first column counts.
        let c = WindowStats::of(&[1.0f32, 9.0, 2.0, 0.0, 2.0, 5.0, 4.0, 1.0], 2);
        assert_eq!(
            (a.std, a.diff_std, a.flat_ratio),
            (c.std, c.diff_std, c.flat_ratio)
        );
        assert_eq!(a.flat_ratio, 1.0 / 3.0);
        assert_eq!(a.diff_abs_max, 2.0);
        assert!((a.std - b.std).abs() < 1e-4 && (a.last_dev - b.last_dev).abs() < 1e-4);
        let stuck = WindowStats::of(&[5.0f32; 26], 1);
        assert_eq!(
            (stuck.flat_ratio, stuck.std, stuck.last_dev),
            (1.0, 0.0, 0.0)
        );
    }

    #[test]
    fn a_profile_must_fit_the_task() {
        let bad = |p: Profile| Reference::new(p, &text_task()).unwrap_err();
        assert!(bad(profile(vec![1.0], vec![1])).contains("counts"));
        assert!(bad(profile(vec![2.0, 1.0], vec![1, 1, 1])).contains("increasing"));
        let mut p = profile(vec![1.0], vec![1, 1]);
        p.features[0].name = "flat_ratio".into();
        assert!(bad(p).contains("does not apply"));
        let mut p = profile(vec![1.0], vec![1, 1]);
        p.features[0].name = "p_eggs".into();
        p.features[0].kind = "prediction".into();
        assert!(bad(p).contains("does not apply"));
    }

    fn texts(lengths: &[usize]) -> InputBatch {
        InputBatch::Text(lengths.iter().map(|n| "a".repeat(*n)).collect())
    }

    #[test]
    fn the_window_alarms_on_a_shift_and_forgets_it_once_it_slides_past() {
        // Reference: lengths evenly over four bins.
        let r = Reference::new(
            profile(vec![10.0, 20.0, 30.0], vec![250, 250, 250, 250]),
            &text_task(),
        )
        .unwrap();
        let rule = DriftRule {
            window: 200,
            min_count: 100,
            ..DriftRule::default()
        };
        let mut w = DriftWindow::new(&r, rule);
        let t0 = Instant::now();
        let like = texts(&[5, 15, 25, 35]);
        for i in 0..400 {
            w.push(&r, &r.inputs(&like, i % 4), t0);
            let s = w.judge(&r);
            assert!(!s.alarm, "at {i}: {s:?}");
            assert_eq!(s.judged, i + 1 >= 100);
        }
        let long = texts(&[35]);
        let mut first = None;
        for i in 0..200 {
            w.push(&r, &r.inputs(&long, 0), t0);
            if first.is_none() && w.judge(&r).alarm {
                first = Some(i);
            }
        }
        let first = first.expect("a window of one bin alarms");
        assert!(first < 100, "alarm after {first}");
        for _ in 0..200 {
            w.push(&r, &r.inputs(&like, 1), t0);
            w.push(&r, &r.inputs(&like, 2), t0);
            w.push(&r, &r.inputs(&like, 0), t0);
            w.push(&r, &r.inputs(&like, 3), t0);
        }
        assert!(!w.judge(&r).alarm);
    }

    #[test]
    fn the_time_window_drops_old_observations() {
        let r = Reference::new(profile(vec![10.0], vec![50, 50]), &text_task()).unwrap();
        let rule = DriftRule {
            span: Duration::from_secs(60),
            min_count: 1,
            ..DriftRule::default()
        };
        let mut w = DriftWindow::new(&r, rule);
        let t0 = Instant::now();
        let b = texts(&[5]);
        for _ in 0..10 {
            w.push(&r, &r.inputs(&b, 0), t0);
        }
        w.push(&r, &r.inputs(&b, 0), t0 + Duration::from_secs(30));
        w.expire(t0 + Duration::from_secs(61));
        assert_eq!(w.judge(&r).observations, 1);
        w.expire(t0 + Duration::from_secs(91));
        assert_eq!(w.judge(&r).observations, 0);
        assert_eq!(w.counts[0], vec![0, 0]);
    }

    #[test]
    fn psi_and_chi_square_agree_with_hand_figures() {
        // Window 30/70 against 50/50, n = 100: PSI with the half-count
        // smoothing, chi-square = (30-50)^2/50 * 2 = 16, df 1, p = 6.3e-5.
        let (psi, p) = compare(&[30, 70], &smoothed(&[1_000_000, 1_000_000]));
        let q = [30.5 / 101.0, 70.5 / 101.0];
        let want = (q[0] - 0.5) * (q[0] / 0.5f64).ln() + (q[1] - 0.5) * (q[1] / 0.5f64).ln();
        assert!((psi - want).abs() < 1e-6, "{psi} vs {want}");
        assert!((p - 6.334e-5).abs() < 1e-7, "{p}");
    }
}

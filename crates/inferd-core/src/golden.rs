//! The golden gate: a model version must reproduce its own `golden.json` (held-out
//! inputs, as a client sends them, with the outputs training recorded) within
//! the file's tolerance before it may serve.
//!
//! The sha256 pin proves the graph file is the one the manifest names; the
//! manifest check proves its tensors are the ones declared. Neither proves that
//! this runtime, on this machine, with the server's own preprocessing, computes
//! what training computed. The gate does, end to end: each case goes through the
//! task's decoding (preprocessing included), the backend and the task's encoding,
//! exactly as a request would. A version without a golden file has no gate.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::repository::Model;
use super::task::Prediction;

#[derive(Debug, Deserialize)]
struct GoldenFile {
    tolerance: f64,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    #[serde(default)]
    source: String,
    input: Value,
    expected: Prediction,
}

/// What the gate checked, for the start-up log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GateReport {
    pub cases: usize,
    /// The largest difference seen on any score or forecast.
    pub max_diff: f64,
    pub tolerance: f64,
}

/// Why a version failed its gate. The message names the file and the case.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub(crate) struct GateError {
    pub path: PathBuf,
    pub message: String,
}

/// Cases per backend call: the gate's batches stay within any model's batch size.
const CHUNK: usize = 16;

/// Runs `model` on its golden cases. `Ok(None)` when the version has no golden
/// file. Blocking (it runs the model).
pub(crate) fn check(model: &Model) -> Result<Option<GateReport>, GateError> {
    let path = path(&model.dir);
    if !path.is_file() {
        return Ok(None);
    }
    let fail = |message: String| GateError {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let golden: GoldenFile =
        serde_json::from_str(&text).map_err(|e| fail(format!("not a golden file: {e}")))?;
    if golden.cases.is_empty() {
        return Err(fail("no cases".into()));
    }
    let mut max_diff = 0.0f64;
    for chunk in golden.cases.chunks(CHUNK) {
        let inputs: Vec<Value> = chunk.iter().map(|c| c.input.clone()).collect();
        let decoded = model.task.decode(&inputs).map_err(|e| {
            fail(format!(
                "a case is invalid input: {}: {}",
                e.field, e.message
            ))
        })?;
        let out = model
            .backend
            .infer(&decoded.batch)
            .map_err(|e| fail(format!("inference failed: {e}")))?;
        for (case, got) in chunk.iter().zip(model.task.encode(&out)) {
            let diff = compare(&case.expected, &got)
                .map_err(|m| fail(format!("case {}: {m}", case.source)))?;
            if diff > golden.tolerance {
                return Err(fail(format!(
                    "case {}: output differs by {diff:.3e}, beyond the tolerance {:.1e}",
                    case.source, golden.tolerance
                )));
            }
            max_diff = max_diff.max(diff);
        }
    }
    Ok(Some(GateReport {
        cases: golden.cases.len(),
        max_diff,
        tolerance: golden.tolerance,
    }))
}

/// The largest difference between expected and computed values; an error when
/// they disagree in kind (another label, another set of names).
fn compare(expected: &Prediction, got: &Prediction) -> Result<f64, String> {
    let (want, have) = match (expected, got) {
        (
            Prediction::Label {
                label: a,
                scores: want,
            },
            Prediction::Label {
                label: b,
                scores: have,
            },
        ) => {
            if a != b {
                return Err(format!("label `{b}`, golden says `{a}`"));
            }
            (want, have)
        }
        (Prediction::Forecast { forecast: want }, Prediction::Forecast { forecast: have }) => {
            (want, have)
        }
        _ => return Err("the prediction is of another kind than the golden one".into()),
    };
    if want.keys().ne(have.keys()) {
        return Err(format!(
            "names {:?}, golden says {:?}",
            have.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        ));
    }
    Ok(want
        .values()
        .zip(have.values())
        .map(|(w, h)| (f64::from(*w) - f64::from(*h)).abs())
        .fold(0.0, f64::max))
}

/// Where a version's golden file is.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join("golden.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::{forecaster_model, TestBackend};

    /// A forecaster on the scripted backend (output = sum of the window) with a
    /// golden file of `cases` (window values, expected forecast).
    fn model_with(cases: &[(Vec<f64>, f64)], tolerance: f64) -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap();
        let mut m = forecaster_model("m", 2, 8, TestBackend::forecaster(2, 1, 1));
        m.dir = dir.path().to_path_buf();
        let cases: Vec<Value> = cases
            .iter()
            .enumerate()
            .map(|(i, (w, y))| {
                serde_json::json!({
                    "source": format!("case {i}"),
                    "input": w.iter().map(|x| vec![*x]).collect::<Vec<_>>(),
                    "expected": {"forecast": {"y": y}},
                })
            })
            .collect();
        let doc = serde_json::json!({"tolerance": tolerance, "cases": cases});
        std::fs::write(path(dir.path()), doc.to_string()).unwrap();
        (dir, m)
    }

    #[test]
    fn a_model_that_reproduces_its_golden_file_passes() {
        let cases: Vec<(Vec<f64>, f64)> = (0..40)
            .map(|i| (vec![i as f64, 1.0], i as f64 + 1.0))
            .collect();
        let (_d, m) = model_with(&cases, 1e-6);
        let r = check(&m).unwrap().unwrap();
        assert_eq!((r.cases, r.max_diff), (40, 0.0));
    }

    #[test]
    fn an_output_beyond_the_tolerance_fails_naming_the_case() {
        let (_d, m) = model_with(&[(vec![1.0, 2.0], 3.0), (vec![1.0, 1.0], 2.5)], 1e-3);
        let e = check(&m).unwrap_err();
        assert!(
            e.message.contains("case 1") && e.message.contains("tolerance"),
            "{e}"
        );
        assert!(e.path.ends_with("golden.json"));
    }

    #[test]
    fn invalid_golden_inputs_and_files_fail_and_no_file_is_no_gate() {
        let (d, m) = model_with(&[(vec![1.0], 1.0)], 1e-3);
        assert!(check(&m).unwrap_err().message.contains("invalid input"));
        std::fs::write(path(d.path()), "{}").unwrap();
        assert!(check(&m).unwrap_err().message.contains("not a golden file"));
        std::fs::remove_file(path(d.path())).unwrap();
        assert_eq!(check(&m), Ok(None));
    }
}

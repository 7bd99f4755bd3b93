//! What a model's instances and predictions look like on the wire, per task.
//!
//! `Task` turns the JSON instances of a request into the tensor batch the graph
//! takes (validating every value, so bad input is refused naming the exact field
//! and never reaches a backend), and turns the graph's output rows back into
//! named predictions. Everything model-specific the front doors need lives here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::backend::{DType, InputBatch, OutputBatch, TensorInfo};
use super::manifest::Manifest;

#[derive(Debug, Clone)]
pub enum Task {
    TextClassification {
        labels: Vec<String>,
        max_text_bytes: usize,
        output: String,
    },
    Forecast {
        window: usize,
        features: Vec<String>,
        targets: Vec<String>,
        output: String,
    },
}

/// Which field is wrong and what was expected (an invalid-input refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    pub field: String,
    pub message: String,
}

fn invalid(field: String, message: impl Into<String>) -> InvalidInput {
    InvalidInput {
        field,
        message: message.into(),
    }
}

/// One prediction. Untagged: the shape differs by task, as the API documents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Prediction {
    /// Classifiers: the most probable label, and every label's probability.
    Label {
        label: String,
        scores: BTreeMap<String, f32>,
    },
    /// Forecasters: the next value of each target, by target name.
    Forecast { forecast: BTreeMap<String, f32> },
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Task {
    pub fn from_manifest(m: &Manifest) -> Result<Task, String> {
        match m.task.as_str() {
            "text-classification" => {
                let t = m
                    .text
                    .as_ref()
                    .ok_or("task text-classification needs a [text] table")?;
                if t.labels.is_empty() {
                    return Err("[text].labels is empty".into());
                }
                Ok(Task::TextClassification {
                    labels: t.labels.clone(),
                    max_text_bytes: t.max_text_bytes,
                    output: t.scores_output.clone(),
                })
            }
            "time-series-forecast" => {
                let t = m
                    .timeseries
                    .as_ref()
                    .ok_or("task time-series-forecast needs a [timeseries] table")?;
                if t.window == 0 || t.features.is_empty() || t.targets.is_empty() {
                    return Err("[timeseries] needs window > 0, features and targets".into());
                }
                let out = m.outputs.first().ok_or("no outputs declared")?;
                Ok(Task::Forecast {
                    window: t.window,
                    features: t.features.clone(),
                    targets: t.targets.clone(),
                    output: out.name.clone(),
                })
            }
            other => Err(format!(
                "unknown task `{other}` (expected text-classification or time-series-forecast)"
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Task::TextClassification { .. } => "text-classification",
            Task::Forecast { .. } => "time-series-forecast",
        }
    }

    /// The graph output whose rows become predictions.
    pub fn output_name(&self) -> &str {
        match self {
            Task::TextClassification { output, .. } | Task::Forecast { output, .. } => output,
        }
    }

    /// Checks that the graph can do what the task promises, beyond the manifest's
    /// own declarations (label count vs output width, window vs input shape).
    pub fn check_graph(&self, inputs: &[TensorInfo], outputs: &[TensorInfo]) -> Result<(), String> {
        let [input] = inputs else {
            return Err(format!(
                "expected exactly one graph input, found {}",
                inputs.len()
            ));
        };
        let out = outputs
            .iter()
            .find(|o| o.name == self.output_name())
            .ok_or_else(|| format!("the graph has no output `{}`", self.output_name()))?;
        let width = out.shape.get(1).copied().unwrap_or(1);
        match self {
            Task::TextClassification { labels, .. } => {
                if input.dtype != DType::String || input.shape.len() != 1 {
                    return Err(format!(
                        "input `{}` must be a [batch] string tensor",
                        input.name
                    ));
                }
                if out.dtype != DType::Float32 || width != labels.len() as i64 {
                    return Err(format!(
                        "output `{}` has shape {:?}, but the manifest lists {} labels",
                        out.name,
                        out.shape,
                        labels.len()
                    ));
                }
            }
            Task::Forecast {
                window,
                features,
                targets,
                ..
            } => {
                let want = [-1, *window as i64, features.len() as i64];
                let ok_dims = input.shape.len() == 3
                    && input.shape[1] == want[1]
                    && input.shape[2] == want[2];
                if input.dtype != DType::Float32 || !ok_dims {
                    return Err(format!(
                        "input `{}` has shape {:?}, but the manifest says window {} x {} features",
                        input.name,
                        input.shape,
                        window,
                        features.len()
                    ));
                }
                if out.dtype != DType::Float32 || width != targets.len() as i64 {
                    return Err(format!(
                        "output `{}` has shape {:?}, but the manifest lists {} targets",
                        out.name,
                        out.shape,
                        targets.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Validates and converts request instances. `instances` is never empty here.
    pub fn decode(&self, instances: &[Value]) -> Result<InputBatch, InvalidInput> {
        match self {
            Task::TextClassification { max_text_bytes, .. } => {
                let mut texts = Vec::with_capacity(instances.len());
                for (i, v) in instances.iter().enumerate() {
                    let Value::String(s) = v else {
                        return Err(invalid(
                            format!("instances[{i}]"),
                            format!(
                                "expected a string (the text to classify), got {}",
                                json_kind(v)
                            ),
                        ));
                    };
                    if s.len() > *max_text_bytes {
                        return Err(invalid(
                            format!("instances[{i}]"),
                            format!(
                                "text is {} bytes; this model accepts at most {max_text_bytes}",
                                s.len()
                            ),
                        ));
                    }
                    if s.contains('\0') {
                        return Err(invalid(
                            format!("instances[{i}]"),
                            "text contains a NUL character",
                        ));
                    }
                    texts.push(s.clone());
                }
                Ok(InputBatch::Text(texts))
            }
            Task::Forecast {
                window, features, ..
            } => {
                let f = features.len();
                let mut data = Vec::with_capacity(instances.len() * window * f);
                for (i, v) in instances.iter().enumerate() {
                    let Value::Array(rows) = v else {
                        return Err(invalid(
                            format!("instances[{i}]"),
                            format!(
                                "expected an array of {window} rows of {f} numbers, got {}",
                                json_kind(v)
                            ),
                        ));
                    };
                    if rows.len() != *window {
                        return Err(invalid(
                            format!("instances[{i}]"),
                            format!("expected {window} rows (time steps), got {}", rows.len()),
                        ));
                    }
                    for (t, row) in rows.iter().enumerate() {
                        let Value::Array(cols) = row else {
                            return Err(invalid(
                                format!("instances[{i}][{t}]"),
                                format!(
                                    "expected a row of {f} numbers ({}), got {}",
                                    features.join(", "),
                                    json_kind(row)
                                ),
                            ));
                        };
                        if cols.len() != f {
                            return Err(invalid(
                                format!("instances[{i}][{t}]"),
                                format!(
                                    "expected {f} numbers ({}), got {}",
                                    features.join(", "),
                                    cols.len()
                                ),
                            ));
                        }
                        for (k, x) in cols.iter().enumerate() {
                            let val = x.as_f64().map(|d| d as f32).filter(|d| d.is_finite());
                            let Some(val) = val else {
                                return Err(invalid(
                                    format!("instances[{i}][{t}][{k}]"),
                                    format!(
                                        "expected a finite number ({}) within float32 range, got {}",
                                        features[k],
                                        if x.is_number() { "an out-of-range number" } else { json_kind(x) }
                                    ),
                                ));
                            };
                            data.push(val);
                        }
                    }
                }
                Ok(InputBatch::Windows {
                    data,
                    batch: instances.len(),
                    steps: *window,
                    features: f,
                })
            }
        }
    }

    /// Output rows to predictions, in order.
    pub fn encode(&self, out: &OutputBatch) -> Vec<Prediction> {
        (0..out.rows)
            .map(|i| {
                let row = out.row(i);
                match self {
                    Task::TextClassification { labels, .. } => {
                        let best = row
                            .iter()
                            .enumerate()
                            .fold(0, |b, (j, p)| if *p > row[b] { j } else { b });
                        Prediction::Label {
                            label: labels[best].clone(),
                            scores: labels.iter().cloned().zip(row.iter().copied()).collect(),
                        }
                    }
                    Task::Forecast { targets, .. } => Prediction::Forecast {
                        forecast: targets.iter().cloned().zip(row.iter().copied()).collect(),
                    },
                }
            })
            .collect()
    }

    /// A plausible input for warm-up runs.
    pub fn warmup_input(&self) -> InputBatch {
        match self {
            Task::TextClassification { .. } => InputBatch::Text(vec![
                "Subject: warm-up\n\nThis request warms the model up.".into(),
            ]),
            Task::Forecast {
                window, features, ..
            } => InputBatch::Windows {
                data: vec![1.0; window * features.len()],
                batch: 1,
                steps: *window,
                features: features.len(),
            },
        }
    }

    /// What an instance is, for the model listing.
    pub fn instance_doc(&self) -> String {
        match self {
            Task::TextClassification { max_text_bytes, .. } => {
                format!("a string of at most {max_text_bytes} bytes (UTF-8, no NUL)")
            }
            Task::Forecast {
                window, features, ..
            } => format!(
                "an array of {window} rows (oldest first), each [{}]",
                features.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn forecast() -> Task {
        Task::Forecast {
            window: 3,
            features: vec!["a".into(), "b".into()],
            targets: vec!["a".into()],
            output: "y".into(),
        }
    }

    #[test]
    fn forecast_errors_name_the_field() {
        let t = forecast();
        let ok = json!([[1, 2], [3, 4], [5, 6]]);
        assert!(t.decode(std::slice::from_ref(&ok)).is_ok());
        let e = t
            .decode(&[ok.clone(), json!([[1, 2], [3, 4]])])
            .unwrap_err();
        assert_eq!(e.field, "instances[1]");
        assert!(e.message.contains("expected 3 rows"));
        let e = t.decode(&[json!([[1, 2], [3], [5, 6]])]).unwrap_err();
        assert_eq!(e.field, "instances[0][1]");
        let e = t.decode(&[json!([[1, 2], [3, "x"], [5, 6]])]).unwrap_err();
        assert_eq!(e.field, "instances[0][1][1]");
        let e = t
            .decode(&[json!([[1, 2], [3, 1e300], [5, 6]])])
            .unwrap_err();
        assert!(e.message.contains("float32"), "{}", e.message);
    }

    #[test]
    fn text_limits() {
        let t = Task::TextClassification {
            labels: vec!["ham".into(), "spam".into()],
            max_text_bytes: 4,
            output: "p".into(),
        };
        assert!(t.decode(&[json!("abcd")]).is_ok());
        assert_eq!(
            t.decode(&[json!("abcde")]).unwrap_err().field,
            "instances[0]"
        );
        assert!(t
            .decode(&[json!("a\u{0}")])
            .unwrap_err()
            .message
            .contains("NUL"));
        assert!(t
            .decode(&[json!(5)])
            .unwrap_err()
            .message
            .contains("a number"));
        let out = OutputBatch {
            rows: 1,
            cols: 2,
            data: vec![0.25, 0.75],
        };
        assert_eq!(
            serde_json::to_value(t.encode(&out)).unwrap(),
            json!([{"label": "spam", "scores": {"ham": 0.25, "spam": 0.75}}])
        );
    }
}

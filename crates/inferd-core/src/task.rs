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
use super::instances::{read_string, read_window, Instances};
use super::manifest::{Manifest, Missing, TextPreprocess};
use super::preprocess::{email, series};

#[derive(Debug, Clone)]
/// A model's task: how its instances are decoded and its outputs encoded.
pub enum Task {
    /// One label of several per text.
    TextClassification {
        /// The classes, in the scores' order.
        labels: Vec<String>,
        /// The largest input, before preprocessing.
        max_text_bytes: usize,
        /// The scores output.
        output: String,
        /// `Some(truncate_chars)`: inputs are email messages, cleaned as in
        /// training (`preprocess::email`); `None`: the text goes in as sent.
        email: Option<usize>,
    },
    /// The next value of each target from a window of readings.
    Forecast {
        /// Time steps per window.
        window: usize,
        /// Column names of a window's rows.
        features: Vec<String>,
        /// What the output predicts.
        targets: Vec<String>,
        /// The forecast output.
        output: String,
        /// `Some(max_missing)`: `null` readings are filled as in training
        /// (`preprocess::series`); `None`: a gap is invalid input.
        fill: Option<usize>,
    },
}

/// Instances as the graph takes them, and what preprocessing did to them.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The batch the graph takes.
    pub batch: InputBatch,
    /// Per instance, how many readings were filled in; `None` for tasks that
    /// never fill.
    pub filled: Option<Vec<usize>>,
}

/// Which field is wrong and what was expected (an invalid-input refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    /// Where in the request (`instances[2][25][0]`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: String, message: impl Into<String>) -> InvalidInput {
    InvalidInput {
        field,
        message: message.into(),
    }
}

/// One prediction. Untagged: the shape differs by task, as the API documents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Prediction {
    /// Classifiers: the most probable label, and every label's probability.
    Label {
        /// The most probable label.
        label: String,
        /// Every label's probability.
        scores: BTreeMap<String, f32>,
    },
    /// Forecasters: the next value of each target, by target name.
    Forecast {
        /// Each target's next value.
        forecast: BTreeMap<String, f32>,
    },
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
    /// The task a manifest describes, or why it describes none.
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
                let email = match (t.preprocess, t.truncate_chars) {
                    (TextPreprocess::None, _) => None,
                    (TextPreprocess::Email, Some(n)) if n > 0 => Some(n),
                    (TextPreprocess::Email, _) => {
                        return Err("[text] preprocess = \"email\" needs truncate_chars > 0".into())
                    }
                };
                Ok(Task::TextClassification {
                    labels: t.labels.clone(),
                    max_text_bytes: t.max_text_bytes,
                    output: t.scores_output.clone(),
                    email,
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
                let fill = match t.missing {
                    Missing::Refuse => None,
                    Missing::Interpolate if t.max_missing < t.window => Some(t.max_missing),
                    Missing::Interpolate => {
                        return Err("[timeseries] max_missing must be below window".into())
                    }
                };
                Ok(Task::Forecast {
                    window: t.window,
                    features: t.features.clone(),
                    targets: t.targets.clone(),
                    output: out.name.clone(),
                    fill,
                })
            }
            other => Err(format!(
                "unknown task `{other}` (expected text-classification or time-series-forecast)"
            )),
        }
    }

    /// The manifest's name for it.
    pub fn name(&self) -> &'static str {
        match self {
            Task::TextClassification { .. } => "text-classification",
            Task::Forecast { .. } => "time-series-forecast",
        }
    }

    /// Whether the instance the model sees can differ from the one sent.
    pub fn preprocesses(&self) -> bool {
        match self {
            Task::TextClassification { email, .. } => email.is_some(),
            Task::Forecast { fill, .. } => fill.is_some(),
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

    /// `decode` for instances in any form: raw ones are read straight into
    /// the batch where they are plainly valid (`instances::read_window`),
    /// and otherwise parsed and decoded as values, with the same outcome.
    pub fn decode_any(&self, instances: &Instances) -> Result<Decoded, InvalidInput> {
        let raw = match instances {
            Instances::Json(values) => return self.decode(values),
            Instances::Raw(raw) => raw,
        };
        let value = |i: usize| {
            serde_json::from_str::<Value>(raw[i].get()).map_err(|e| {
                invalid(
                    format!("instances[{i}]"),
                    format!("not a usable JSON value: {e}"),
                )
            })
        };
        self.decode_each(
            raw.len(),
            |i, max_bytes, email| match read_string(&raw[i]) {
                Some(s) => text_of(i, &s, max_bytes, email),
                None => decode_text(i, &value(i)?, max_bytes, email),
            },
            |i, window, features, fill, data| match read_window(
                &raw[i],
                window,
                features.len(),
                data,
            ) {
                Some(()) => Ok(0),
                None => decode_window(i, &value(i)?, window, features, fill, data),
            },
        )
    }

    /// Validates, preprocesses and converts request instances. `instances` is
    /// never empty here.
    pub fn decode(&self, instances: &[Value]) -> Result<Decoded, InvalidInput> {
        self.decode_each(
            instances.len(),
            |i, max_bytes, email| decode_text(i, &instances[i], max_bytes, email),
            |i, window, features, fill, data| {
                decode_window(i, &instances[i], window, features, fill, data)
            },
        )
    }

    /// The batch of `n` instances, each read by `text` or `window` (as
    /// `decode_text` and `decode_window` are called) as the task needs.
    fn decode_each(
        &self,
        n: usize,
        mut text: impl FnMut(usize, usize, Option<usize>) -> Result<String, InvalidInput>,
        mut window: impl FnMut(
            usize,
            usize,
            &[String],
            Option<usize>,
            &mut Vec<f32>,
        ) -> Result<usize, InvalidInput>,
    ) -> Result<Decoded, InvalidInput> {
        match self {
            Task::TextClassification {
                max_text_bytes,
                email,
                ..
            } => {
                let mut texts = Vec::with_capacity(n);
                for i in 0..n {
                    texts.push(text(i, *max_text_bytes, *email)?);
                }
                Ok(Decoded {
                    batch: InputBatch::Text(texts),
                    filled: None,
                })
            }
            Task::Forecast {
                window: steps,
                features,
                fill,
                ..
            } => {
                let f = features.len();
                let mut data = Vec::with_capacity(n * steps * f);
                let mut filled = Vec::with_capacity(n);
                for i in 0..n {
                    filled.push(window(i, *steps, features, *fill, &mut data)?);
                }
                Ok(Decoded {
                    batch: InputBatch::Windows {
                        data,
                        batch: n,
                        steps: *steps,
                        features: f,
                    },
                    filled: fill.map(|_| filled),
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
            Task::TextClassification {
                max_text_bytes,
                email: None,
                ..
            } => format!("a string of at most {max_text_bytes} bytes (UTF-8, no NUL)"),
            Task::TextClassification {
                max_text_bytes,
                email: Some(chars),
                ..
            } => format!(
                "an email message of at most {max_text_bytes} bytes, raw RFC 822 source or \
                 plain text; the server decodes its MIME parts, strips HTML, collapses \
                 whitespace and keeps the first {chars} characters, as in training"
            ),
            Task::Forecast {
                window,
                features,
                fill,
                ..
            } => {
                let gaps = match fill {
                    Some(n) => format!(
                        "; up to {n} readings may be null, filled by linear interpolation \
                         as in training"
                    ),
                    None => String::new(),
                };
                format!(
                    "an array of {window} rows (oldest first), each [{}]{gaps}",
                    features.join(", ")
                )
            }
        }
    }
}

/// One text instance: a string within the size limit, cleaned as an email
/// message when the model says so.
fn decode_text(
    i: usize,
    v: &Value,
    max_bytes: usize,
    email: Option<usize>,
) -> Result<String, InvalidInput> {
    let Value::String(s) = v else {
        return Err(invalid(
            format!("instances[{i}]"),
            format!(
                "expected a string (the text to classify), got {}",
                json_kind(v)
            ),
        ));
    };
    text_of(i, s, max_bytes, email)
}

/// Instance `i`'s text, once it is known to be a string.
fn text_of(
    i: usize,
    s: &str,
    max_bytes: usize,
    email: Option<usize>,
) -> Result<String, InvalidInput> {
    let field = || format!("instances[{i}]");
    if s.len() > max_bytes {
        let what = if email.is_some() { "message" } else { "text" };
        return Err(invalid(
            field(),
            format!(
                "{what} is {} bytes; this model accepts at most {max_bytes}",
                s.len()
            ),
        ));
    }
    match email {
        // Cleaning removes NULs, as training did.
        Some(truncate_chars) => Ok(email::clean(s, truncate_chars)),
        None if s.contains('\0') => Err(invalid(field(), "text contains a NUL character")),
        None => Ok(s.to_string()),
    }
}

/// One window: `window` rows of one number per feature, appended to `data`.
/// With `fill`, `null` readings are filled per feature column, up to that many
/// per window; returns how many were filled.
fn decode_window(
    i: usize,
    v: &Value,
    window: usize,
    features: &[String],
    fill: Option<usize>,
    data: &mut Vec<f32>,
) -> Result<usize, InvalidInput> {
    let f = features.len();
    let Value::Array(rows) = v else {
        return Err(invalid(
            format!("instances[{i}]"),
            format!(
                "expected an array of {window} rows of {f} numbers, got {}",
                json_kind(v)
            ),
        ));
    };
    if rows.len() != window {
        return Err(invalid(
            format!("instances[{i}]"),
            format!("expected {window} rows (time steps), got {}", rows.len()),
        ));
    }
    // Readings go straight into the batch; a gap is a NaN placeholder, filled
    // below only when the window has one, so complete windows cost nothing more.
    let start = data.len();
    let mut missing = 0;
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
            if x.is_null() && fill.is_some() {
                missing += 1;
                data.push(f32::NAN);
                continue;
            }
            let val = x.as_f64().map(|d| d as f32).filter(|d| d.is_finite());
            let Some(val) = val else {
                let allowed = if fill.is_some() { " or null" } else { "" };
                return Err(invalid(
                    format!("instances[{i}][{t}][{k}]"),
                    format!(
                        "expected a finite number ({}) within float32 range{allowed}, got {}",
                        features[k],
                        if x.is_number() {
                            "an out-of-range number"
                        } else {
                            json_kind(x)
                        }
                    ),
                ));
            };
            data.push(val);
        }
    }
    let Some(max_missing) = fill.filter(|_| missing > 0) else {
        return Ok(0);
    };
    if missing > max_missing {
        return Err(invalid(
            format!("instances[{i}]"),
            format!(
                "{missing} readings are null; this model fills at most {max_missing} per window"
            ),
        ));
    }
    // Each feature fills along time, from the readings as sent (f64), as
    // training interpolated in f64 before the cast.
    for (k, feature) in features.iter().enumerate() {
        let column: Vec<Option<f64>> = rows.iter().map(|row| row[k].as_f64()).collect();
        let done = series::fill(&column, max_missing).map_err(|e| {
            invalid(
                format!("instances[{i}]"),
                format!("feature {k} ({feature}): {e}"),
            )
        })?;
        for (t, v) in done.values.into_iter().enumerate() {
            data[start + t * f + k] = v;
        }
    }
    Ok(missing)
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;

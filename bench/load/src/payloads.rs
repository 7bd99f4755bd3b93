//! What the requests carry, before any protocol encodes it: either the model's
//! held-out golden inputs (`<models>/<model>/<version or 1>/golden.json`, the
//! default) or the lines of a `--payloads` JSON-lines file.
//!
//! A payload is one request: a group of bare instances (a string for a text
//! model, an array of rows for a window model) that the protocol wraps into its
//! request for the model, or a full request body, sent as it is.

use std::path::Path;

use clap::ValueEnum;
use serde_json::Value;

use crate::protocol::Protocol;

/// One request's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Bare instances, for the protocol to wrap (`protocol::Target`).
    Instances(Vec<Value>),
    /// A full request body for the chosen protocol, sent as it is.
    Body(Value),
}

/// One request and where it came from (`payloads.jsonl line 3`,
/// `golden.json case 4`), for the errors that name it.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub origin: String,
    pub request: Request,
}

/// What kind of instance a bare one is. Every bare instance of a run is the
/// same kind, as they are grouped into requests together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string: the text to classify.
    Text,
    /// `steps` rows of `features` numbers (or `null` for a gap).
    Window { steps: usize, features: usize },
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Text => f.write_str("a text"),
            Kind::Window { steps, features } => write!(f, "a window of {steps}x{features}"),
        }
    }
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

/// The kind of a bare instance, or why it is none.
pub fn kind_of(v: &Value) -> Result<Kind, String> {
    const WINDOW: &str = "a window is an array of rows, each an array of numbers (null for a gap)";
    match v {
        Value::String(_) => Ok(Kind::Text),
        Value::Array(rows) => {
            let Some(first) = rows.first() else {
                return Err(format!("{WINDOW}; this one is empty"));
            };
            let features = match first {
                Value::Array(r) if !r.is_empty() => r.len(),
                Value::Array(_) => return Err(format!("{WINDOW}; row 1 is empty")),
                other => return Err(format!("{WINDOW}; row 1 is {}", json_kind(other))),
            };
            for (i, row) in rows.iter().enumerate() {
                let Value::Array(cells) = row else {
                    return Err(format!("{WINDOW}; row {} is {}", i + 1, json_kind(row)));
                };
                if cells.len() != features {
                    return Err(format!(
                        "{WINDOW}; row {} has {} values, row 1 has {features}",
                        i + 1,
                        cells.len()
                    ));
                }
                if let Some(c) = cells.iter().find(|c| !(c.is_number() || c.is_null())) {
                    return Err(format!("{WINDOW}; row {} holds {}", i + 1, json_kind(c)));
                }
            }
            Ok(Kind::Window {
                steps: rows.len(),
                features,
            })
        }
        other => Err(format!(
            "expected a text (a string) or a window (an array of rows), got {}",
            json_kind(other)
        )),
    }
}

/// Payload `i` of the bare ones carries `n` instances starting at instance `i`
/// (wrapping), so every instance is sent and consecutive requests differ.
fn group(bare: &[Value], i: usize, n: usize) -> Vec<Value> {
    (0..n.max(1))
        .map(|k| bare[(i + k) % bare.len()].clone())
        .collect()
}

/// One payload per golden case, each with `instances` inputs from the case's `field`.
pub fn golden(
    models_dir: &Path,
    model: &str,
    version: Option<&str>,
    field: &str,
    instances: usize,
) -> anyhow::Result<Vec<Payload>> {
    let path = models_dir
        .join(model)
        .join(version.unwrap_or("1"))
        .join("golden.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let golden: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?;
    let inputs: Vec<Value> = golden["cases"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{}: no cases", path.display()))?
        .iter()
        .map(|c| c[field].clone())
        .collect();
    anyhow::ensure!(!inputs.is_empty(), "{}: no cases", path.display());
    anyhow::ensure!(
        inputs.iter().all(|v| !v.is_null()),
        "{}: not every case has `{field}`",
        path.display()
    );
    Ok((0..inputs.len())
        .map(|i| Payload {
            origin: format!("{} case {}", path.display(), i + 1),
            request: Request::Instances(group(&inputs, i, instances)),
        })
        .collect())
}

/// The payloads of a JSON-lines file (see `parse_lines`).
pub fn read_file(
    path: &Path,
    protocol: Protocol,
    instances: usize,
) -> anyhow::Result<Vec<Payload>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    parse_lines(&path.display().to_string(), &text, protocol, instances).map_err(anyhow::Error::msg)
}

/// One payload per non-blank line of `text` (the file `name`), in order. A line
/// is a full request body for `protocol` (an object; it must hold the
/// protocol's `instances` or `inputs` array) or one bare instance, which
/// becomes a request of `instances` bare instances: its own and the next bare
/// lines' (wrapping). A bad line is an error naming it.
pub fn parse_lines(
    name: &str,
    text: &str,
    protocol: Protocol,
    instances: usize,
) -> Result<Vec<Payload>, String> {
    enum Line {
        Body(Value),
        Bare(usize),
    }
    let mut lines: Vec<(usize, Line)> = Vec::new();
    let mut bare: Vec<Value> = Vec::new();
    let mut first_bare: Option<(usize, Kind)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() {
            continue;
        }
        let at = |msg: String| format!("{name} line {n}: {msg}");
        let v: Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        if let Value::Object(fields) = &v {
            check_body(fields, protocol).map_err(at)?;
            lines.push((n, Line::Body(v)));
            continue;
        }
        let kind = match v {
            Value::String(_) | Value::Array(_) => kind_of(&v).map_err(at)?,
            ref other => {
                return Err(at(format!(
                    "expected a request body (an object), a text (a string) or a window \
                     (an array of rows), got {}",
                    json_kind(other)
                )))
            }
        };
        match first_bare {
            None => first_bare = Some((n, kind)),
            Some((m, k)) if k != kind => {
                return Err(at(format!(
                    "{kind}, but line {m} is {k}: bare instances are sent together, so they \
                     must all be alike"
                )))
            }
            Some(_) => {}
        }
        lines.push((n, Line::Bare(bare.len())));
        bare.push(v);
    }
    if lines.is_empty() {
        return Err(format!("{name}: no payloads (no line that is not blank)"));
    }
    Ok(lines
        .into_iter()
        .map(|(n, line)| Payload {
            origin: format!("{name} line {n}"),
            request: match line {
                Line::Body(v) => Request::Body(v),
                Line::Bare(i) => Request::Instances(group(&bare, i, instances)),
            },
        })
        .collect())
}

/// A full body must hold the protocol's array of instances or tensors.
fn check_body(fields: &serde_json::Map<String, Value>, protocol: Protocol) -> Result<(), String> {
    let key = protocol.body_key();
    match fields.get(key) {
        Some(Value::Array(items)) if !items.is_empty() => Ok(()),
        Some(Value::Array(_)) => Err(format!("`{key}` is empty")),
        Some(other) => Err(format!(
            "`{key}` must be an array, got {}",
            json_kind(other)
        )),
        None => {
            let other = Protocol::value_variants()
                .iter()
                .find(|p| **p != protocol && fields.contains_key(p.body_key()));
            Err(match other {
                Some(p) => format!(
                    "a {p} request body (it has `{}`), but --protocol is {protocol}, whose \
                     bodies have `{key}`",
                    p.body_key()
                ),
                None => format!(
                    "a request body (an object) for --protocol {protocol} needs `{key}`, an array"
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn golden_payloads_cycle_through_the_inputs() {
        let dir = tempfile_dir("golden");
        let model_dir = dir.join("m").join("1");
        std::fs::create_dir_all(&model_dir).expect("mkdir");
        std::fs::write(
            model_dir.join("golden.json"),
            r#"{"cases": [{"input": "a"}, {"input": "b"}, {"input": "c"}]}"#,
        )
        .expect("write");
        let p = golden(&dir, "m", None, "input", 2).expect("payloads");
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[0].request,
            Request::Instances(vec![json!("a"), json!("b")])
        );
        assert_eq!(
            p[2].request,
            Request::Instances(vec![json!("c"), json!("a")])
        );
        assert!(
            p[2].origin.ends_with("golden.json case 3"),
            "{}",
            p[2].origin
        );
        assert!(golden(&dir, "missing", None, "input", 1).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(what: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("inferd-bench-{what}-{}", std::process::id()))
    }

    #[test]
    fn lines_are_bodies_or_bare_instances() {
        let text =
            "\"spam spam\"\n\n{\"model\": \"m\", \"instances\": [\"x\"]}\n\"ham\"\n\"eggs\"\n";
        let p = parse_lines("f.jsonl", text, Protocol::V1, 2).expect("parses");
        let got: Vec<(&str, &Request)> = p.iter().map(|p| (&*p.origin, &p.request)).collect();
        assert_eq!(
            got,
            vec![
                (
                    "f.jsonl line 1",
                    &Request::Instances(vec![json!("spam spam"), json!("ham")])
                ),
                (
                    "f.jsonl line 3",
                    &Request::Body(json!({"model": "m", "instances": ["x"]}))
                ),
                (
                    "f.jsonl line 4",
                    &Request::Instances(vec![json!("ham"), json!("eggs")])
                ),
                (
                    "f.jsonl line 5",
                    &Request::Instances(vec![json!("eggs"), json!("spam spam")])
                ),
            ]
        );
        let windows = "[[1.5], [null], [2]]\n{\"inputs\": [{\"name\": \"w\"}]}\n";
        let p = parse_lines("w", windows, Protocol::V2, 1).expect("parses");
        assert_eq!(
            p[0].request,
            Request::Instances(vec![json!([[1.5], [null], [2]])])
        );
        assert!(matches!(p[1].request, Request::Body(_)));
        assert_eq!(
            kind_of(&json!([[1, 2], [3, 4], [5, 6]])),
            Ok(Kind::Window {
                steps: 3,
                features: 2
            })
        );
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, protocol, says) in [
            (
                "\"a\"\n{\"instances\": [\n",
                Protocol::V1,
                "f line 2: not JSON",
            ),
            (
                "\"a\"\n\n42\n",
                Protocol::V1,
                "f line 3: expected a request body",
            ),
            ("null", Protocol::V1, "f line 1: expected"),
            (
                "[1, 2, 3]",
                Protocol::V1,
                "f line 1: a window is an array of rows",
            ),
            ("[]", Protocol::V1, "this one is empty"),
            ("[[1], [1, 2]]", Protocol::V1, "row 2 has 2 values"),
            ("[[1], [\"x\"]]", Protocol::V1, "row 2 holds a string"),
            (
                "\"a\"\n[[1]]",
                Protocol::V1,
                "f line 2: a window of 1x1, but line 1 is a text",
            ),
            (
                "[[1]]\n[[1], [2]]",
                Protocol::V1,
                "f line 2: a window of 2x1, but line 1",
            ),
            (
                "{\"inputs\": [{}]}",
                Protocol::V1,
                "a v2 request body (it has `inputs`), but --protocol is v1",
            ),
            (
                "{\"instances\": [1]}",
                Protocol::V2,
                "a v1 request body (it has `instances`), but --protocol is v2",
            ),
            ("{\"model\": \"m\"}", Protocol::V1, "needs `instances`"),
            ("{\"instances\": []}", Protocol::V1, "`instances` is empty"),
            (
                "{\"inputs\": {}}",
                Protocol::V2,
                "`inputs` must be an array",
            ),
            ("\n  \n", Protocol::V1, "no payloads"),
        ] {
            let e = parse_lines("f", text, protocol, 1).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let e = read_file(Path::new("/nonexistent/p.jsonl"), Protocol::V1, 1).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/p.jsonl"), "{e}");
    }
}

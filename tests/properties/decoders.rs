//! The pure decoders, called directly: the v2 binary codec, request
//! documents, each task's instances and its preprocessing.

use crate::mutate::*;
use crate::requests::*;
use crate::*;

/// `split_body` splits exactly at a declared length within the body, and
/// refuses anything else.
#[test]
fn codec_split_body_splits_exactly_or_refuses() {
    let header = prop_oneof![
        Just(None),
        (0usize..80).prop_map(|n| Some(n.to_string().into_bytes())),
        (
            0usize..80,
            prop::sample::select(vec![" ", "\t", "+", "0", "-", " \t "])
        )
            .prop_map(|(n, pad)| Some(format!("{pad}{n}{pad}").into_bytes())),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Some),
    ];
    let strategy = (header, prop::collection::vec(any::<u8>(), 0..64));
    check("codec_split_body", 256, strategy, |(header, body)| {
        let declared = header.as_ref().map(|raw| {
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
        });
        match codec::split_body(header.as_deref(), body.clone().into()) {
            Ok((head, tail)) => {
                prop_assert_eq!([&head[..], &tail[..]].concat(), body.clone());
                match declared {
                    None => prop_assert!(tail.is_empty()),
                    Some(n) => prop_assert_eq!(n, Some(head.len())),
                }
            }
            Err(e) => {
                prop_assert!(!e.is_empty());
                let fits = match declared {
                    None => true,
                    Some(Some(n)) => n <= body.len(),
                    Some(None) => false,
                };
                prop_assert!(!fits, "refused a length within the body: {e}");
            }
        }
        Ok(())
    });
}

/// `decode` never makes more elements than asked for, only finite numbers or
/// the exact texts that were framed, and refuses everything else in words.
#[test]
fn codec_decode_is_bounded_and_exact() {
    let datatype = prop::sample::select(vec![
        "FP32", "FP64", "INT32", "INT64", "BYTES", "BOOL", "FP16", "UINT8", "", "fp32",
    ]);
    let raw = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        // Well-framed texts, then perhaps damaged.
        (
            prop::collection::vec("\\PC{0,12}", 0..5),
            prop::collection::vec(byte_edit(), 0..2)
        )
            .prop_map(|(texts, edits)| {
                let mut raw = encode_texts(&texts);
                for e in &edits {
                    e.apply(&mut raw);
                }
                raw
            }),
    ];
    check(
        "codec_decode",
        256,
        (datatype, raw, 0usize..24),
        |(datatype, raw, n)| {
            let size = codec::element_size(datatype);
            match codec::decode(datatype, &raw, n) {
                Ok(values) => {
                    prop_assert!(
                        values.len() <= n,
                        "{} elements for a shape of {n}",
                        values.len()
                    );
                    if datatype == "BYTES" {
                        let texts: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
                        prop_assert_eq!(texts.len(), values.len());
                        prop_assert_eq!(encode_texts(&texts), raw);
                    } else {
                        prop_assert_eq!(size.map(|s| s * values.len()), Some(raw.len()));
                        prop_assert!(values
                            .iter()
                            .all(|v| v.as_f64().is_some_and(f64::is_finite)));
                    }
                }
                Err(e) => {
                    prop_assert!(!e.is_empty());
                    if let Some(s) = size {
                        let whole = raw.len() % s == 0 && raw.len() / s <= n;
                        prop_assert!(!whole || e.contains("not a finite number"), "{e}");
                    }
                }
            }
            Ok(())
        },
    );
}

/// What `encode` writes, `decode` reads back, value for value.
#[test]
fn codec_encode_decode_round_trip() {
    // `TensorData` has no `Debug`: the case is generated as a `Result`.
    let data = prop_oneof![
        prop::collection::vec(any::<f32>().prop_filter("finite", |x| x.is_finite()), 0..32)
            .prop_map(Ok),
        prop::collection::vec(any::<i64>(), 0..32).prop_map(Err),
    ];
    check("codec_round_trip", 256, data, |data| {
        let data = match data {
            Ok(v) => TensorData::Fp32(v),
            Err(v) => TensorData::Int64(v),
        };
        let (datatype, want): (&str, Vec<f64>) = match &data {
            TensorData::Fp32(v) => ("FP32", v.iter().map(|&x| f64::from(x)).collect()),
            TensorData::Int64(v) => ("INT64", v.iter().map(|&x| x as f64).collect()),
        };
        let raw = codec::encode(&data);
        let got: Vec<f64> = codec::decode(datatype, &raw, want.len())
            .map_err(TestCaseError::fail)?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        prop_assert_eq!(&got, &want);
        if !want.is_empty() {
            prop_assert!(codec::decode(datatype, &raw, want.len() - 1).is_err());
        }
        Ok(())
    });
}

/// `flatten` yields the leaves in order, and refuses more than the shape's.
#[test]
fn codec_flatten_counts_leaves() {
    fn leaves(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| leaves(x, out)),
            other => out.push(other.clone()),
        }
    }
    let strategy = (prop::collection::vec(weird(), 0..6), 0usize..20);
    check("codec_flatten", 256, strategy, |(data, n)| {
        let mut want = Vec::new();
        data.iter().for_each(|v| leaves(v, &mut want));
        match codec::flatten(data, n) {
            Ok(flat) => {
                prop_assert!(want.len() <= n);
                prop_assert_eq!(flat, want);
            }
            Err(e) => prop_assert!(want.len() > n, "refused {} leaves for {n}: {e}", want.len()),
        }
        Ok(())
    });
}

/// Bytes, shown as text when a case fails.
#[derive(Clone)]
pub(crate) struct Doc(Vec<u8>);

impl Debug for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A request document of either front door, mutated.
pub(crate) fn any_document() -> impl Strategy<Value = Doc> {
    prop_oneof![
        v1_case().prop_map(|c| Doc(c.request().1)),
        v2_case().prop_map(|c| Doc(c.request().1)),
    ]
}

/// What the bytes are, as JSON: grammatical (`grammar`), and also within
/// every number's range with no lone surrogate (`strict`, what `Value` takes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Json {
    pub grammar: bool,
    pub strict: bool,
}

/// Documents are accepted only when they are JSON; bytes that are not JSON
/// are refused (400 `malformed_json`, or 422 `invalid_input` when a field is
/// wrong before the syntax is); JSON within range is never called malformed.
#[test]
fn request_documents_parse_or_give_a_typed_4xx() {
    fn judge<T: serde::de::DeserializeOwned>(bytes: &[u8], json: Json) -> TestCaseResult {
        match parse::<T>(bytes) {
            Ok(_) => prop_assert!(json.grammar, "accepted bytes that are not JSON"),
            Err(e) => {
                let status = e.status().as_u16();
                match e.code() {
                    "malformed_json" => {
                        prop_assert_eq!(status, 400);
                        prop_assert!(!json.strict, "JSON called malformed: {}", e);
                    }
                    "invalid_input" => prop_assert_eq!(status, 422),
                    other => prop_assert!(false, "unexpected error {other} ({status}): {e}"),
                }
                prop_assert!(!e.to_string().is_empty());
            }
        }
        Ok(())
    }
    check("request_documents", 256, any_document(), |Doc(bytes)| {
        let json = Json {
            grammar: serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok(),
            strict: serde_json::from_slice::<Value>(&bytes).is_ok(),
        };
        judge::<PredictRequest>(&bytes, json)?;
        judge::<InferRequest>(&bytes, json)
    });
}

pub(crate) fn real_task(model: &str, version: &str) -> Task {
    let p = common::root()
        .join("models")
        .join(model)
        .join(version)
        .join("model.toml");
    let m: Manifest =
        toml::from_str(&std::fs::read_to_string(p).expect("manifest")).expect("manifest parses");
    Task::from_manifest(&m).expect("task")
}

/// Each task decodes mutated instances into a batch of exactly their shape,
/// or names the instance that is wrong.
#[test]
fn task_decode_accepts_exactly_or_names_the_instance() {
    let tasks = [
        (Target::Text1, real_task("text-classifier", "1")),
        (Target::Text2, real_task("text-classifier", "2")),
        (Target::Lstm, real_task("lstm-forecaster", "1")),
    ];
    let cut = common::manifest_int("text-classifier", "2", &["text", "truncate_chars"]) as usize;
    let strategy = (0usize..3, picks(), edits());
    check("task_decode", 256, strategy, |(which, picks, edits)| {
        let (target, task) = &tasks[which];
        let mut doc = Value::Array(picks.iter().map(|&p| target.instance(p)).collect());
        for (at, op) in &edits {
            apply(&mut doc, *at, op);
        }
        let instances = match doc {
            Value::Array(a) if !a.is_empty() => a,
            Value::Array(_) => return Ok(()),
            other => vec![other],
        };
        let n = instances.len();
        // The JSON API's path (each instance as raw text, read straight into
        // the batch where it is plainly valid) decides exactly as the values do.
        let raw = instances
            .iter()
            .map(|v| serde_json::value::RawValue::from_string(v.to_string()).expect("raw"))
            .collect();
        let fast = task.decode_any(&inferd_core::instances::Instances::Raw(raw));
        let slow = task.decode(&instances);
        prop_assert_eq!(
            fast.as_ref()
                .map(|d| format!("{:?} {:?}", d.batch, d.filled)),
            slow.as_ref()
                .map(|d| format!("{:?} {:?}", d.batch, d.filled))
        );
        match slow {
            Ok(d) => match (d.batch, target) {
                (InputBatch::Text(texts), Target::Text1) => {
                    let sent: Vec<&str> = instances.iter().filter_map(Value::as_str).collect();
                    prop_assert_eq!(texts.iter().map(String::as_str).collect::<Vec<_>>(), sent);
                }
                (InputBatch::Text(texts), Target::Text2) => {
                    prop_assert_eq!(texts.len(), n);
                    for t in &texts {
                        prop_assert!(!t.contains('\0') && t.chars().count() <= cut, "{t:?}");
                    }
                }
                (
                    InputBatch::Windows {
                        data,
                        batch,
                        steps,
                        features,
                    },
                    Target::Lstm,
                ) => {
                    prop_assert_eq!((batch, steps, features), (n, 26, 1));
                    prop_assert_eq!(data.len(), n * 26);
                    prop_assert!(data.iter().all(|x| x.is_finite()));
                    let nulls: Vec<usize> = instances
                        .iter()
                        .map(|i| {
                            i.as_array()
                                .map(|rows| rows.iter().filter(|r| r[0].is_null()).count())
                                .unwrap_or(0)
                        })
                        .collect();
                    prop_assert_eq!(d.filled, Some(nulls));
                }
                (batch, t) => prop_assert!(false, "{t:?} decoded to {batch:?}"),
            },
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                let index: Option<usize> = e
                    .field
                    .strip_prefix("instances[")
                    .and_then(|rest| rest.split(']').next())
                    .and_then(|i| i.parse().ok());
                prop_assert!(
                    index.is_some_and(|i| i < n),
                    "field `{}` of {n} instances",
                    e.field
                );
            }
        }
        Ok(())
    });
}

/// Email cleaning takes any text: no NUL, within the cut, no edge or double
/// spaces, and idempotent, as its documentation promises.
#[test]
fn email_clean_is_total_bounded_and_idempotent() {
    let text = prop_oneof![
        message(),
        (any::<usize>(), prop::collection::vec(text_edit(), 0..3)).prop_map(|(p, edits)| {
            let mut t = Target::Text2.text(p);
            for e in &edits {
                if !matches!(e, TextEdit::Grow(_)) {
                    edit_text(&mut t, e);
                }
            }
            t
        }),
    ];
    let cut = prop::sample::select(vec![1usize, 7, 100, 4000]);
    check("email_clean", 256, (text, cut), |(text, cut)| {
        let once = email::clean(&text, cut);
        prop_assert!(!once.contains('\0'));
        prop_assert!(
            once.chars().count() <= cut,
            "{} chars for a cut at {cut}",
            once.chars().count()
        );
        prop_assert_eq!(once.trim(), once.as_str(), "edge whitespace");
        prop_assert!(!once.contains("  "), "double space in {once:?}");
        prop_assert_eq!(
            email::clean(&once, cut),
            once.clone(),
            "cleaning twice changed it"
        );
        Ok(())
    });
}

/// Gap filling keeps every reading, fills exactly the gaps, stays within the
/// known readings' range, and refuses only what its contract says.
#[test]
fn series_fill_fills_exactly_the_gaps() {
    let reading = prop_oneof![
        3 => any::<f32>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| Some(f64::from(x))),
        1 => Just(None),
    ];
    let strategy = (prop::collection::vec(reading, 0..30), 0usize..30);
    check("series_fill", 256, strategy, |(window, max)| {
        let missing = window.iter().filter(|r| r.is_none()).count();
        match series::fill(&window, max) {
            Ok(f) => {
                prop_assert!(missing <= max && (missing < window.len() || window.is_empty()));
                prop_assert_eq!(f.values.len(), window.len());
                prop_assert_eq!(f.filled, missing);
                let known: Vec<f32> = window.iter().flatten().map(|&x| x as f32).collect();
                let lo = known.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = known.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (r, v) in window.iter().zip(&f.values) {
                    match r {
                        Some(x) => prop_assert_eq!(*v, *x as f32),
                        None => prop_assert!(
                            v.is_finite() && (lo..=hi).contains(v),
                            "{v} outside {lo}..{hi}"
                        ),
                    }
                }
            }
            Err(e) => {
                let why = e.to_string();
                prop_assert!(
                    missing > max || missing == window.len(),
                    "refused {missing} gaps of {} with {max} allowed: {why}",
                    window.len()
                );
            }
        }
        Ok(())
    });
}

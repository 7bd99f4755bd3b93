//! HTTP properties: the JSON API, v2 JSON tensors and the v2 binary extension,
//! through the shared server.

use crate::mutate::*;
use crate::requests::*;
use crate::shared::*;
use crate::*;

/// `/predict` and `/v1/models/...`: mutated golden bodies, wrong content types.
#[test]
fn v1_mutated_bodies_get_4xx_json_errors_never_5xx() {
    check("v1_mutated_bodies", 128, v1_case(), |c| {
        let (path, body) = c.request();
        let r = post(&path, &ct_header(c.content_type), body.clone())?;
        check_reply(Door::V1, &r)?;
        if !is_json_type(c.content_type) {
            prop_assert_eq!(r.status, 415, "a body that is not declared JSON");
        }
        if c.untouched() {
            prop_assert_eq!(
                r.status,
                200,
                "the golden request itself: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        if r.status == 200 {
            check_v1_success(&body, &r)?;
        }
        Ok(())
    });
}

/// `/v2/models/{m}[/versions/{v}]/infer` with JSON tensors.
#[test]
fn v2_json_mutated_tensors_get_4xx_json_errors_never_5xx() {
    check("v2_json_mutated_tensors", 128, v2_case(), |c| {
        let (path, body) = c.request();
        let r = post(&path, &ct_header(c.content_type), body.clone())?;
        check_reply(Door::V2, &r)?;
        if c.edits.is_empty() && c.bytes.is_empty() {
            prop_assert_eq!(
                r.status,
                200,
                "the golden request itself: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        if r.status == 200 {
            check_v2_success(&body, &r)?;
        }
        Ok(())
    });
}

/// The binary extension: lying header lengths, truncated or extended tensors,
/// wrong sizes, datatypes and length prefixes.
#[test]
fn v2_binary_mutated_framing_gets_4xx_json_errors_never_5xx() {
    check("v2_binary_mutated_framing", 128, binary_case(), |c| {
        let f = c.request();
        let r = post(&f.path, &f.headers, f.body.clone())?;
        check_reply(Door::V2, &r)?;
        if c.untouched() {
            prop_assert_eq!(
                r.status,
                200,
                "the golden request itself: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        if r.status == 200 {
            let json = match f.split {
                Some(n) => &f.body[..n.min(f.body.len())],
                None => &f.body[..],
            };
            check_v2_success(json, &r)?;
        }
        Ok(())
    });
}

/// A valid request, generated rather than golden.
#[derive(Debug, Clone)]
pub(crate) enum Valid {
    /// Forecaster windows, `None` a missing reading.
    Windows(Vec<Vec<Option<f64>>>),
    /// Texts for text-classifier 1 (`plain`) or 2.
    Texts { texts: Vec<String>, plain: bool },
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Way {
    V1,
    V2Json,
    /// With this forecaster datatype (index into `NUMERIC_TYPES`).
    V2Binary(usize),
}

/// Any reading the forecaster takes: within float32 range, sometimes null
/// (at most 20 per window, the model's limit).
pub(crate) fn window() -> impl Strategy<Value = Vec<Option<f64>>> {
    let reading = prop_oneof![
        8 => (300.0..450.0f64).prop_map(Some),
        2 => any::<f32>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| Some(f64::from(x))),
        1 => Just(None),
    ];
    prop::collection::vec(reading, 26).prop_map(|mut w| {
        let mut nulls = 0;
        for r in &mut w {
            if r.is_none() {
                nulls += 1;
                if nulls > 20 {
                    *r = Some(400.0);
                }
            }
        }
        w
    })
}

pub(crate) fn valid_request() -> impl Strategy<Value = (Valid, Way)> {
    let way = prop_oneof![
        Just(Way::V1),
        Just(Way::V2Json),
        (0usize..4).prop_map(Way::V2Binary),
    ];
    let valid = prop_oneof![
        prop::collection::vec(window(), 1..4).prop_map(Valid::Windows),
        (prop::collection::vec(message(), 1..4), any::<bool>()).prop_map(|(texts, plain)| {
            let texts = if plain {
                texts.into_iter().map(|t| t.replace('\0', "")).collect()
            } else {
                texts
            };
            Valid::Texts { texts, plain }
        }),
    ];
    (valid, way)
}

/// Everything the decoders promise to take is taken, on every door: no false
/// refusals, and as many answers as instances.
#[test]
fn valid_generated_instances_are_answered_on_every_door() {
    check(
        "valid_generated_instances",
        64,
        valid_request(),
        |(valid, way)| {
            let (target, k) = match &valid {
                Valid::Windows(w) => (Target::Lstm, w.len()),
                Valid::Texts { texts, plain } => (
                    if *plain { Target::Text1 } else { Target::Text2 },
                    texts.len(),
                ),
            };
            let nulls: Vec<usize> = match &valid {
                Valid::Windows(w) => w
                    .iter()
                    .map(|w| w.iter().filter(|r| r.is_none()).count())
                    .collect(),
                Valid::Texts { .. } => vec![],
            };
            let instances: Vec<Value> = match &valid {
                Valid::Windows(w) => w
                    .iter()
                    .map(|w| Value::Array(w.iter().map(|r| json!([r])).collect()))
                    .collect(),
                Valid::Texts { texts, .. } => texts.iter().map(|t| json!(t)).collect(),
            };
            let m = target.model();
            match way {
                Way::V1 => {
                    let path = format!("/v1/models/{m}/versions/{}/predict", target.version());
                    let body =
                        serde_json::to_vec(&json!({"instances": instances})).unwrap_or_default();
                    let r = post(&path, &ct_header(Some("application/json")), body.clone())?;
                    check_reply(Door::V1, &r)?;
                    prop_assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    check_v1_success(&body, &r)?;
                    if target == Target::Lstm {
                        let got: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                        prop_assert_eq!(&got["filled"], &json!(nulls));
                    }
                }
                Way::V2Json => {
                    let (shape, data) = match &valid {
                        Valid::Windows(_) => (json!([k, 26, 1]), Value::Array(instances)),
                        Valid::Texts { .. } => (json!([k]), Value::Array(instances)),
                    };
                    let datatype = if target == Target::Lstm {
                        "FP64"
                    } else {
                        "BYTES"
                    };
                    let doc = json!({"inputs": [{"name": target.input(), "shape": shape,
                                             "datatype": datatype, "data": data}]});
                    let body = serde_json::to_vec(&doc).unwrap_or_default();
                    let r = post(&v2_path(target, true), &[], body.clone())?;
                    check_reply(Door::V2, &r)?;
                    prop_assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    check_v2_success(&body, &r)?;
                    if target == Target::Lstm {
                        let want: Vec<String> = nulls.iter().map(usize::to_string).collect();
                        prop_assert_eq!(r.filled.clone(), Some(want.join(",")));
                    }
                }
                Way::V2Binary(dtype) => {
                    // Binary tensors carry no null: the gaps get a reading.
                    let (shape, datatype, blob) = match &valid {
                        Valid::Windows(w) => {
                            let values: Vec<f64> =
                                w.iter().flatten().map(|r| r.unwrap_or(400.0)).collect();
                            let dt = NUMERIC_TYPES[dtype];
                            (json!([k, 26, 1]), dt, encode_numbers(dt, &values))
                        }
                        Valid::Texts { texts, .. } => (json!([k]), "BYTES", encode_texts(texts)),
                    };
                    let outputs: Vec<Value> = target
                        .outputs()
                        .iter()
                        .map(|n| json!({"name": n, "parameters": {"binary_data": true}}))
                        .collect();
                    let header = serde_json::to_vec(&json!({
                        "inputs": [{"name": target.input(), "shape": shape, "datatype": datatype,
                                    "parameters": {"binary_data_size": blob.len()}}],
                        "outputs": outputs,
                    }))
                    .unwrap_or_default();
                    let n = header.len();
                    let f = frame(
                        v2_path(target, true),
                        header,
                        blob,
                        &HeaderLength::Exact,
                        None,
                    );
                    let r = post(&f.path, &f.headers, f.body.clone())?;
                    check_reply(Door::V2, &r)?;
                    prop_assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    check_v2_success(&f.body[..n], &r)?;
                }
            }
            Ok(())
        },
    );
}

//! Requests of both front doors, built from the models' golden inputs and
//! then mutated.

use crate::mutate::*;
use crate::*;

pub(crate) struct Goldens {
    pub v1_texts: Vec<String>,
    pub v2_texts: Vec<String>,
    pub windows: Vec<Vec<f64>>,
}

pub(crate) fn goldens() -> &'static Goldens {
    static G: OnceLock<Goldens> = OnceLock::new();
    G.get_or_init(|| {
        let read = |model: &str, version: &str| -> Value {
            let p = common::root()
                .join("models")
                .join(model)
                .join(version)
                .join("golden.json");
            serde_json::from_str(&std::fs::read_to_string(p).expect("golden")).expect("golden JSON")
        };
        // The shorter messages: a failing case is printed whole.
        let texts = |version: &str| -> Vec<String> {
            read("text-classifier", version)["cases"]
                .as_array()
                .expect("cases")
                .iter()
                .filter_map(|c| c["input"].as_str())
                .filter(|t| t.len() <= 4096)
                .map(String::from)
                .collect()
        };
        let windows = read("lstm-forecaster", "1")["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| {
                c["input"]
                    .as_array()
                    .expect("rows")
                    .iter()
                    .map(|r| r[0].as_f64().expect("reading"))
                    .collect()
            })
            .collect();
        Goldens {
            v1_texts: texts("1"),
            v2_texts: texts("2"),
            windows,
        }
    })
}

/// A model version the server serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Target {
    /// text-classifier 1: plain text, at most 16 KiB, no NUL.
    Text1,
    /// text-classifier 2 (latest): email messages, cleaned by the server.
    Text2,
    /// lstm-forecaster 1: 26 rows of 1 reading, up to 20 of them null.
    Lstm,
}

impl Target {
    pub(crate) fn model(self) -> &'static str {
        match self {
            Target::Text1 | Target::Text2 => "text-classifier",
            Target::Lstm => "lstm-forecaster",
        }
    }

    pub(crate) fn version(self) -> &'static str {
        match self {
            Target::Text1 | Target::Lstm => "1",
            Target::Text2 => "2",
        }
    }

    /// Routes without a version reach the latest one.
    pub(crate) fn is_latest(self) -> bool {
        self != Target::Text1
    }

    pub(crate) fn input(self) -> &'static str {
        match self {
            Target::Lstm => "window",
            _ => "text",
        }
    }

    pub(crate) fn outputs(self) -> &'static [&'static str] {
        match self {
            Target::Lstm => &["forecast"],
            _ => &["label", "probabilities"],
        }
    }

    pub(crate) fn text(self, pick: usize) -> String {
        let g = goldens();
        let texts = if self == Target::Text1 {
            &g.v1_texts
        } else {
            &g.v2_texts
        };
        texts[pick % texts.len()].clone()
    }

    pub(crate) fn window(self, pick: usize) -> Vec<f64> {
        let w = &goldens().windows;
        w[pick % w.len()].clone()
    }

    /// A golden instance as the JSON API takes it.
    pub(crate) fn instance(self, pick: usize) -> Value {
        match self {
            Target::Lstm => {
                Value::Array(self.window(pick).into_iter().map(|x| json!([x])).collect())
            }
            _ => Value::String(self.text(pick)),
        }
    }
}

pub(crate) fn target() -> impl Strategy<Value = Target> {
    prop::sample::select(vec![Target::Text1, Target::Text2, Target::Lstm])
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Route {
    /// `/predict`, the model named in the body.
    Body,
    /// `/v1/models/{m}/predict`.
    Named,
    /// `/v1/models/{m}/versions/{v}/predict`.
    Versioned,
    /// A version in the path that is not one.
    BadVersion(&'static str),
}

#[derive(Debug, Clone)]
pub(crate) struct V1Case {
    pub target: Target,
    pub route: Route,
    pub picks: Vec<usize>,
    pub edits: Vec<(usize, Op)>,
    pub bytes: Vec<ByteEdit>,
    pub content_type: Option<&'static str>,
}

impl V1Case {
    pub(crate) fn untouched(&self) -> bool {
        self.edits.is_empty()
            && self.bytes.is_empty()
            && is_json_type(self.content_type)
            && !matches!(self.route, Route::BadVersion(_))
    }

    pub(crate) fn request(&self) -> (String, Vec<u8>) {
        let (m, v) = (self.target.model(), self.target.version());
        let instances: Vec<Value> = self
            .picks
            .iter()
            .map(|&p| self.target.instance(p))
            .collect();
        let (path, mut doc) = match self.route {
            Route::Body => (
                "/predict".to_string(),
                json!({"model": m, "version": v, "instances": instances}),
            ),
            Route::Named => (
                format!("/v1/models/{m}/predict"),
                json!({"model": m, "version": v, "instances": instances}),
            ),
            Route::Versioned => (
                format!("/v1/models/{m}/versions/{v}/predict"),
                json!({"instances": instances}),
            ),
            Route::BadVersion(bad) => (
                format!("/v1/models/{m}/versions/{bad}/predict"),
                json!({"instances": instances}),
            ),
        };
        for (at, op) in &self.edits {
            apply(&mut doc, *at, op);
        }
        let mut bytes = serde_json::to_vec(&doc).unwrap_or_default();
        for e in &self.bytes {
            e.apply(&mut bytes);
        }
        (path, bytes)
    }
}

pub(crate) fn picks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 1..4)
}

pub(crate) fn v1_case() -> impl Strategy<Value = V1Case> {
    let route = prop_oneof![
        3 => prop::sample::select(vec![Route::Body, Route::Named, Route::Versioned]),
        1 => prop::sample::select(vec!["0", "3", "abc", "18446744073709551616", "-1", "1.0", "%20"])
            .prop_map(Route::BadVersion),
    ];
    (
        target(),
        route,
        picks(),
        edits(),
        byte_edits(),
        content_type(),
    )
        .prop_map(
            |(target, route, picks, edits, bytes, content_type)| V1Case {
                target,
                route,
                picks,
                edits,
                bytes,
                content_type,
            },
        )
}

/// Which outputs a v2 request asks for, and in which form.
#[derive(Debug, Clone)]
pub(crate) enum Outputs {
    Default,
    /// `parameters.binary_data_output`.
    AllBinary(bool),
    /// Each of the model's outputs with its own `binary_data`.
    Listed(Vec<bool>),
}

pub(crate) fn outputs() -> impl Strategy<Value = Outputs> {
    prop_oneof![
        Just(Outputs::Default),
        any::<bool>().prop_map(Outputs::AllBinary),
        prop::collection::vec(any::<bool>(), 1..3).prop_map(Outputs::Listed),
    ]
}

impl Outputs {
    pub(crate) fn add_to(&self, doc: &mut Value, target: Target) {
        match self {
            Outputs::Default => {}
            Outputs::AllBinary(b) => doc["parameters"] = json!({"binary_data_output": b}),
            Outputs::Listed(flags) => {
                doc["outputs"] = target
                    .outputs()
                    .iter()
                    .zip(flags)
                    .map(|(name, b)| json!({"name": name, "parameters": {"binary_data": b}}))
                    .collect();
            }
        }
    }
}

pub(crate) fn v2_path(target: Target, versioned: bool) -> String {
    let m = target.model();
    if versioned || !target.is_latest() {
        format!("/v2/models/{m}/versions/{}/infer", target.version())
    } else {
        format!("/v2/models/{m}/infer")
    }
}

#[derive(Debug, Clone)]
pub(crate) struct V2Case {
    pub target: Target,
    pub versioned: bool,
    pub picks: Vec<usize>,
    /// Forecaster data nested as `[k][26][1]` rather than flat.
    pub nested: bool,
    pub outputs: Outputs,
    pub edits: Vec<(usize, Op)>,
    pub bytes: Vec<ByteEdit>,
    pub content_type: Option<&'static str>,
}

impl V2Case {
    pub(crate) fn request(&self) -> (String, Vec<u8>) {
        let t = self.target;
        let k = self.picks.len();
        let (shape, data): (Value, Vec<Value>) = match t {
            Target::Lstm => {
                let windows = self.picks.iter().map(|&p| t.window(p));
                let data = if self.nested {
                    windows
                        .map(|w| Value::Array(w.into_iter().map(|x| json!([x])).collect()))
                        .collect()
                } else {
                    windows.flatten().map(|x| json!(x)).collect()
                };
                (json!([k, 26, 1]), data)
            }
            _ => (
                json!([k]),
                self.picks
                    .iter()
                    .map(|&p| Value::String(t.text(p)))
                    .collect(),
            ),
        };
        let datatype = if t == Target::Lstm { "FP32" } else { "BYTES" };
        let mut doc = json!({
            "id": "property",
            "inputs": [{"name": t.input(), "shape": shape, "datatype": datatype, "data": data}],
        });
        self.outputs.add_to(&mut doc, t);
        for (at, op) in &self.edits {
            apply(&mut doc, *at, op);
        }
        let mut bytes = serde_json::to_vec(&doc).unwrap_or_default();
        for e in &self.bytes {
            e.apply(&mut bytes);
        }
        (v2_path(t, self.versioned), bytes)
    }
}

pub(crate) fn v2_case() -> impl Strategy<Value = V2Case> {
    (
        target(),
        any::<bool>(),
        picks(),
        any::<bool>(),
        outputs(),
        edits(),
        byte_edits(),
        content_type(),
    )
        .prop_map(
            |(target, versioned, picks, nested, outputs, edits, bytes, content_type)| V2Case {
                target,
                versioned,
                picks,
                nested,
                outputs,
                edits,
                bytes,
                content_type,
            },
        )
}

/// `Inference-Header-Content-Length`, right or wrong.
#[derive(Debug, Clone)]
pub(crate) enum HeaderLength {
    Exact,
    Off(i64),
    Raw(Vec<u8>),
    Absent,
    /// The header twice: the right value, then one that is off.
    Twice(i64),
}

pub(crate) fn header_length() -> impl Strategy<Value = HeaderLength> {
    let off = prop::sample::select(vec![-100_000i64, -5, -1, 1, 4, 5, 100_000, i64::MAX]);
    let raw = prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "abc",
            "1e3",
            "0x10",
            "+5",
            "5 5",
            "-0",
            "0",
            "18446744073709551616",
            "99999999999999999999999",
            "\t7\t",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        // Every byte a header value may carry.
        prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..12),
    ];
    prop_oneof![
        5 => Just(HeaderLength::Exact),
        2 => off.clone().prop_map(HeaderLength::Off),
        1 => raw.prop_map(HeaderLength::Raw),
        1 => Just(HeaderLength::Absent),
        1 => off.prop_map(HeaderLength::Twice),
    ]
}

#[derive(Debug, Clone)]
pub(crate) struct BinaryCase {
    pub target: Target,
    pub versioned: bool,
    pub picks: Vec<usize>,
    /// The forecaster's datatype, by index into FP32, FP64, INT32, INT64.
    pub dtype: usize,
    pub binary_out: bool,
    pub header_edits: Vec<(usize, Op)>,
    pub header_bytes: Vec<ByteEdit>,
    pub blob_edits: Vec<ByteEdit>,
    pub length: HeaderLength,
    pub content_type: Option<&'static str>,
}

pub(crate) const NUMERIC_TYPES: [&str; 4] = ["FP32", "FP64", "INT32", "INT64"];

/// `values` in binary as `datatype` (the client's side of the codec).
pub(crate) fn encode_numbers(datatype: &str, values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&x| match datatype {
            "FP32" => (x as f32).to_le_bytes().to_vec(),
            "FP64" => x.to_le_bytes().to_vec(),
            "INT32" => (x as i32).to_le_bytes().to_vec(),
            _ => (x as i64).to_le_bytes().to_vec(),
        })
        .collect()
}

/// `BYTES` elements: a 4-byte length, then the bytes.
pub(crate) fn encode_texts<S: AsRef<str>>(texts: &[S]) -> Vec<u8> {
    texts
        .iter()
        .flat_map(|t| {
            let t = t.as_ref().as_bytes();
            let mut e = (t.len() as u32).to_le_bytes().to_vec();
            e.extend(t);
            e
        })
        .collect()
}

/// A binary request: the JSON header, then the tensor, and the headers that
/// frame it.
pub(crate) struct Framed {
    pub path: String,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Where the server will split the body (the first length header, as it
    /// reads it), for checking a 200 against what it saw.
    pub split: Option<usize>,
}

pub(crate) fn frame(
    path: String,
    header: Vec<u8>,
    blob: Vec<u8>,
    length: &HeaderLength,
    content_type: Option<&'static str>,
) -> Framed {
    let exact = header.len() as i64;
    let mut headers = ct_header(content_type);
    const NAME: &str = "inference-header-content-length";
    match length {
        HeaderLength::Exact => headers.push((NAME, exact.to_string().into_bytes())),
        HeaderLength::Off(d) => {
            headers.push((NAME, exact.saturating_add(*d).to_string().into_bytes()))
        }
        HeaderLength::Raw(raw) => headers.push((NAME, raw.clone())),
        HeaderLength::Absent => {}
        HeaderLength::Twice(d) => {
            headers.push((NAME, exact.to_string().into_bytes()));
            headers.push((NAME, exact.saturating_add(*d).to_string().into_bytes()));
        }
    }
    let mut body = header;
    body.extend(blob);
    let split = headers.iter().find(|(n, _)| *n == NAME).map(|(_, v)| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    Framed {
        path,
        headers,
        body,
        split,
    }
}

impl BinaryCase {
    pub(crate) fn datatype(&self) -> &'static str {
        match self.target {
            Target::Lstm => NUMERIC_TYPES[self.dtype % 4],
            _ => "BYTES",
        }
    }

    pub(crate) fn untouched(&self) -> bool {
        self.header_edits.is_empty()
            && self.header_bytes.is_empty()
            && self.blob_edits.is_empty()
            && matches!(self.length, HeaderLength::Exact)
    }

    pub(crate) fn request(&self) -> Framed {
        let t = self.target;
        let k = self.picks.len();
        let datatype = self.datatype();
        let (shape, mut blob) = match t {
            Target::Lstm => {
                let values: Vec<f64> = self.picks.iter().flat_map(|&p| t.window(p)).collect();
                (json!([k, 26, 1]), encode_numbers(datatype, &values))
            }
            _ => {
                let texts: Vec<String> = self.picks.iter().map(|&p| t.text(p)).collect();
                (json!([k]), encode_texts(&texts))
            }
        };
        let outputs: Vec<Value> = t
            .outputs()
            .iter()
            .map(|name| json!({"name": name, "parameters": {"binary_data": self.binary_out}}))
            .collect();
        let mut header = json!({
            "inputs": [{"name": t.input(), "shape": shape, "datatype": datatype,
                        "parameters": {"binary_data_size": blob.len()}}],
            "outputs": outputs,
        });
        for (at, op) in &self.header_edits {
            apply(&mut header, *at, op);
        }
        let mut header = serde_json::to_vec(&header).unwrap_or_default();
        for e in &self.header_bytes {
            e.apply(&mut header);
        }
        for e in &self.blob_edits {
            e.apply(&mut blob);
        }
        frame(
            v2_path(t, self.versioned),
            header,
            blob,
            &self.length,
            self.content_type,
        )
    }
}

pub(crate) fn binary_case() -> impl Strategy<Value = BinaryCase> {
    (
        (target(), any::<bool>(), picks(), 0usize..4, any::<bool>()),
        (
            prop_oneof![
                Just(Vec::new()),
                prop::collection::vec((any::<usize>(), op()), 1..3)
            ],
            prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(byte_edit(), 1..2)],
            byte_edits(),
            header_length(),
            prop_oneof![
                3 => Just(Some("application/octet-stream")),
                1 => content_type(),
            ],
        ),
    )
        .prop_map(
            |(
                (target, versioned, picks, dtype, binary_out),
                (header_edits, header_bytes, blob_edits, length, content_type),
            )| BinaryCase {
                target,
                versioned,
                picks,
                dtype,
                binary_out,
                header_edits,
                header_bytes,
                blob_edits,
                length,
                content_type,
            },
        )
}

/// Texts, plain and as email messages in their many encodings.
pub(crate) fn message() -> impl Strategy<Value = String> {
    let header = prop::sample::select(vec![
        "text/plain; charset=utf-8",
        "text/html",
        "text/plain; charset=iso-8859-1",
        "text/plain; charset=x-unknown",
        "multipart/alternative; boundary=b",
        "multipart/mixed; boundary=\"b\"",
        "message/rfc822",
    ]);
    let encoding = prop::sample::select(vec![
        "7bit",
        "8bit",
        "base64",
        "quoted-printable",
        "x-bogus",
    ]);
    let part = prop_oneof![
        "(?s).{0,120}",
        prop::sample::select(vec![
            "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--",
            "--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--b--",
            "=E9t=E9 =\r\nsoft break",
            "SGVsbG8gd29ybGQ=",
            "////",
            "<p>a&amp;b &#x1F600; &#99999999;</p>",
        ])
        .prop_map(String::from),
    ];
    prop_oneof![
        "(?s).{0,300}",
        (
            "\\PC{0,30}",
            header,
            encoding,
            prop::collection::vec(part, 0..4)
        )
            .prop_map(|(subject, ct, cte, parts)| format!(
                "Subject: {subject}\r\nContent-Type: {ct}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{}",
                parts.join("\r\n")
            )),
    ]
}

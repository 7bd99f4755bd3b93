//! Mutations: of JSON documents, node by node, and of bytes, and the
//! content types a client may get wrong.

use crate::*;

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Index(usize),
    Key(String),
}

pub(crate) fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(m) => m.values().map(count).sum(),
        _ => 0,
    }
}

/// The path to the `n`th node in pre-order.
pub(crate) fn path_to(v: &Value, mut n: usize) -> Vec<Step> {
    let mut path = Vec::new();
    let mut cur = v;
    while n > 0 {
        n -= 1;
        let children: Vec<(Step, &Value)> = match cur {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, c)| (Step::Index(i), c))
                .collect(),
            Value::Object(m) => m.iter().map(|(k, c)| (Step::Key(k.clone()), c)).collect(),
            _ => break,
        };
        let mut next = None;
        for (step, child) in children {
            let c = count(child);
            if n < c {
                next = Some((step, child));
                break;
            }
            n -= c;
        }
        let Some((step, child)) = next else { break };
        path.push(step);
        cur = child;
    }
    path
}

pub(crate) fn at_mut<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    let mut cur = v;
    for step in path {
        cur = match (cur, step) {
            (Value::Array(a), Step::Index(i)) => a.get_mut(*i)?,
            (Value::Object(m), Step::Key(k)) => m.get_mut(k)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[derive(Debug, Clone)]
pub(crate) enum TextEdit {
    Insert(usize, String),
    Cut(usize),
    /// Repeats the text up to this many bytes (size limits).
    Grow(usize),
}

pub(crate) fn edit_text(s: &mut String, e: &TextEdit) {
    let boundary = |s: &str, at: usize| {
        let mut i = at % (s.len() + 1);
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match e {
        TextEdit::Insert(at, t) => {
            let i = boundary(s, *at);
            s.insert_str(i, t);
        }
        TextEdit::Cut(at) => {
            let i = boundary(s, *at);
            s.truncate(i);
        }
        TextEdit::Grow(n) => {
            if s.is_empty() {
                s.push('x');
            }
            while s.len() < *n {
                s.push_str(&s.clone());
            }
            let i = boundary(s, *n);
            s.truncate(i);
        }
    }
}

/// One edit of a JSON document, at a node chosen by pre-order index.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Replace(Value),
    /// Removes the node from its parent.
    Remove,
    /// Duplicates the node within its parent (a sibling key for objects).
    Duplicate,
    /// An array repeated to this many elements (instance limits).
    Repeat(usize),
    Wrap,
    Unwrap,
    /// A scalar becomes this edge-case number.
    Number(Value),
    Negate,
    /// The node becomes a string of its JSON text (`1.5` -> `"1.5"`).
    Stringify,
    RenameKey(String),
    AddKey(String, Value),
    Text(TextEdit),
}

pub(crate) fn apply(root: &mut Value, at: usize, op: &Op) {
    let path = path_to(root, at % count(root));
    if let Op::Remove | Op::Duplicate = op {
        let Some((last, parent)) = path.split_last() else {
            if let Op::Remove = op {
                *root = Value::Null;
            }
            return;
        };
        match (at_mut(root, parent), last) {
            (Some(Value::Array(a)), Step::Index(i)) => {
                if let Op::Remove = op {
                    a.remove(*i);
                } else {
                    let c = a[*i].clone();
                    a.insert(*i, c);
                }
            }
            (Some(Value::Object(m)), Step::Key(k)) => {
                if let Op::Remove = op {
                    m.remove(k);
                } else if let Some(c) = m.get(k).cloned() {
                    m.insert(format!("{k}2"), c);
                }
            }
            _ => {}
        }
        return;
    }
    let Some(node) = at_mut(root, &path) else {
        return;
    };
    match op {
        Op::Replace(v) => *node = v.clone(),
        Op::Repeat(n) => {
            if let Value::Array(a) = node {
                if !a.is_empty() {
                    let items: Vec<Value> = a.iter().cycle().take(*n).cloned().collect();
                    *a = items;
                }
            }
        }
        Op::Wrap => *node = Value::Array(vec![node.take()]),
        Op::Unwrap => {
            let first = match node {
                Value::Array(a) => a.first().cloned(),
                Value::Object(m) => m.values().next().cloned(),
                _ => None,
            };
            if let Some(f) = first {
                *node = f;
            }
        }
        Op::Number(n) => {
            if !node.is_array() && !node.is_object() {
                *node = n.clone();
            }
        }
        Op::Negate => {
            let negated = match node {
                Value::Number(x) => x
                    .as_i64()
                    .and_then(i64::checked_neg)
                    .map(Value::from)
                    .or_else(|| x.as_f64().map(|f| json!(-f))),
                _ => None,
            };
            if let Some(v) = negated {
                *node = v;
            }
        }
        Op::Stringify => *node = Value::String(node.to_string()),
        Op::RenameKey(new) => {
            if let Value::Object(m) = node {
                if let Some(k) = m.keys().next().cloned() {
                    if let Some(v) = m.remove(&k) {
                        m.insert(new.clone(), v);
                    }
                }
            }
        }
        Op::AddKey(k, v) => {
            if let Value::Object(m) = node {
                m.insert(k.clone(), v.clone());
            }
        }
        Op::Text(e) => {
            if let Value::String(s) = node {
                edit_text(s, e);
            }
        }
        Op::Remove | Op::Duplicate => {}
    }
}

pub(crate) fn edge_number() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!(0),
        json!(-0.0),
        json!(1),
        json!(-1),
        json!(2),
        json!(26),
        json!(64),
        json!(65),
        json!(0.5),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(4294967296u64),
        json!(9007199254740993u64),
        json!(3.4028235e38),
        json!(1e39),
        json!(-1e39),
        json!(1e308),
        json!(5e-324),
        json!(1e-40),
    ])
}

pub(crate) fn edge_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "NaN",
            "nan",
            "-NaN",
            "Infinity",
            "-Infinity",
            "inf",
            "1e999",
            "null",
            "0x1A",
            "1_0",
            " 1",
            "\u{0}",
            "text",
            "window",
            "label",
            "probabilities",
            "forecast",
            "BYTES",
            "FP32",
            "FP64",
            "INT32",
            "INT64",
            "BOOL",
            "FP16",
            "UINT8",
            "text-classifier",
            "lstm-forecaster",
            "1",
            "2",
            "999",
            "-1",
            "\u{feff}",
            "\u{10ffff}",
            "\u{fffd}",
            "Subject: x\r\n\r\nbody",
        ])
        .prop_map(String::from),
        "\\PC{0,24}",
    ]
}

pub(crate) fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "model",
            "version",
            "instances",
            "inputs",
            "outputs",
            "name",
            "shape",
            "datatype",
            "data",
            "parameters",
            "binary_data_size",
            "binary_data",
            "binary_data_output",
            "id",
        ])
        .prop_map(String::from),
        "[a-z_]{0,8}",
    ]
}

/// Values of every JSON type, edge cases first.
pub(crate) fn weird() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        edge_number(),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |x| serde_json::Number::from_f64(x)
            .map(Value::Number)),
        edge_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
    .boxed()
}

/// `max_text_bytes` of each text-classifier version, and one byte past it.
fn text_size_edges() -> Vec<usize> {
    let mut edges = vec![100_000];
    for version in ["1", "2"] {
        let max =
            crate::common::manifest_int("text-classifier", version, &["text", "max_text_bytes"]);
        edges.extend([max as usize, max as usize + 1]);
    }
    edges
}

pub(crate) fn text_edit() -> impl Strategy<Value = TextEdit> {
    let inserted = prop_oneof![
        prop::sample::select(vec![
            "\u{0}",
            "\r\n\r\n",
            "Content-Type: multipart/mixed; boundary=b\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "=?utf-8?b?////?=",
            "--b\r\n",
            "--b--",
            "<html><body>",
            "\u{feff}",
            "\u{10ffff}",
            "\\u0000",
        ])
        .prop_map(String::from),
        "\\PC{0,16}",
    ];
    prop_oneof![
        (any::<usize>(), inserted).prop_map(|(at, s)| TextEdit::Insert(at, s)),
        any::<usize>().prop_map(TextEdit::Cut),
        // Both text versions' size limits, and one past each.
        prop::sample::select(text_size_edges()).prop_map(TextEdit::Grow),
    ]
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => weird().prop_map(Op::Replace),
        2 => Just(Op::Remove),
        1 => Just(Op::Duplicate),
        1 => prop::sample::select(vec![0usize, 2, 63, 64, 65, 200]).prop_map(Op::Repeat),
        1 => Just(Op::Wrap),
        1 => Just(Op::Unwrap),
        3 => edge_number().prop_map(Op::Number),
        1 => Just(Op::Negate),
        1 => Just(Op::Stringify),
        1 => key().prop_map(Op::RenameKey),
        1 => (key(), weird()).prop_map(|(k, v)| Op::AddKey(k, v)),
        2 => text_edit().prop_map(Op::Text),
    ]
}

/// Zero to three edits: a quarter of the cases are the document unchanged,
/// which must be accepted (so the edits are what the refusals are about).
pub(crate) fn edits() -> impl Strategy<Value = Vec<(usize, Op)>> {
    prop::collection::vec((any::<usize>(), op()), 0..4)
}

/// Number tokens that are not JSON numbers, or are out of every range.
pub(crate) const RAW_NUMBERS: &[&str] = &[
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1e-999",
    "18446744073709551616",
    "-9223372036854775809",
    "-0",
    "01",
    "1.",
    ".5",
    "+1",
    "0x10",
    "1e",
    "--1",
    "1E+2",
];

#[derive(Debug, Clone)]
pub(crate) enum ByteEdit {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Copies `len` bytes from one place to another (duplicated keys, values).
    Splice(usize, usize, usize),
    /// The `n`th number token becomes one of `RAW_NUMBERS`.
    NumberToken(usize, &'static str),
    /// Overwrites 4 bytes with a little-endian word (length prefixes, floats).
    Word(usize, u32),
}

/// Where the number tokens of a JSON text are (outside strings).
pub(crate) fn number_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
        } else if c == b'"' {
            in_string = true;
            i += 1;
        } else if c == b'-' || c.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b"+-.eE".contains(&b[i])) {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

impl ByteEdit {
    pub(crate) fn apply(&self, b: &mut Vec<u8>) {
        let at = |i: usize, b: &Vec<u8>| i % (b.len() + 1);
        match self {
            ByteEdit::Truncate(i) => {
                let n = at(*i, b);
                b.truncate(n);
            }
            ByteEdit::Flip(i, mask) => {
                if !b.is_empty() {
                    let n = i % b.len();
                    b[n] ^= mask.max(&1);
                }
            }
            ByteEdit::Insert(i, bytes) => {
                let n = at(*i, b);
                b.splice(n..n, bytes.iter().copied());
            }
            ByteEdit::Delete(i, len) => {
                let n = at(*i, b);
                let end = (n + len).min(b.len());
                b.drain(n..end);
            }
            ByteEdit::Splice(from, len, to) => {
                let s = at(*from, b);
                let piece = b[s..(s + len).min(b.len())].to_vec();
                let t = at(*to, b);
                b.splice(t..t, piece);
            }
            ByteEdit::NumberToken(i, token) => {
                let spans = number_spans(b);
                if !spans.is_empty() {
                    let (s, e) = spans[i % spans.len()];
                    b.splice(s..e, token.bytes());
                }
            }
            ByteEdit::Word(i, w) => {
                if b.len() >= 4 {
                    let n = i % (b.len() - 3);
                    b[n..n + 4].copy_from_slice(&w.to_le_bytes());
                }
            }
        }
    }
}

pub(crate) fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let inserted = prop_oneof![
        prop::sample::select(vec![
            &b"\0"[..],
            b"\xff\xfe",
            b"\"",
            b",",
            b"}",
            b"]",
            b"{\"a\":",
            b"\\u0000",
            b"\\ud800",
            b"\xc3\x28",
            b"\r\n",
            b" ",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop_oneof![
        1 => any::<usize>().prop_map(ByteEdit::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, m)| ByteEdit::Flip(i, m)),
        1 => (any::<usize>(), inserted).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        1 => (any::<usize>(), 0usize..16).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        1 => (any::<usize>(), 0usize..32, any::<usize>()).prop_map(|(f, n, t)| ByteEdit::Splice(f, n, t)),
        2 => (any::<usize>(), prop::sample::select(RAW_NUMBERS))
            .prop_map(|(i, t)| ByteEdit::NumberToken(i, t)),
        1 => (any::<usize>(), word()).prop_map(|(i, w)| ByteEdit::Word(i, w)),
    ]
}

/// Words that matter as a length prefix or a float's bits.
pub(crate) fn word() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![
            0u32,
            1,
            3,
            25,
            26,
            27,
            0x7fff_ffff,
            u32::MAX,
            0x7fc0_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7ff8_0000,
            0x7ff0_0000,
        ]),
        any::<u32>(),
    ]
}

/// Half the cases keep their bytes.
pub(crate) fn byte_edits() -> impl Strategy<Value = Vec<ByteEdit>> {
    prop_oneof![Just(Vec::new()), prop::collection::vec(byte_edit(), 1..3),]
}

pub(crate) fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        6 => Just(Some("application/json")),
        1 => prop::sample::select(vec![
            Some("application/json; charset=utf-8"),
            Some("application/problem+json"),
            Some("APPLICATION/JSON"),
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/octet-stream"),
            Some("application/jsonx"),
            Some(""),
            None,
        ]),
    ]
}

/// What the server takes for JSON (`extract::is_json`).
pub(crate) fn is_json_type(ct: Option<&str>) -> bool {
    let mime = ct
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

pub(crate) fn ct_header(ct: Option<&'static str>) -> Vec<(&'static str, Vec<u8>)> {
    ct.map(|c| vec![("content-type", c.as_bytes().to_vec())])
        .unwrap_or_default()
}

//! A request's instances as a front door hands them over: JSON values (the
//! KServe doors build them from tensors) or the raw text of each instance
//! (inferd's JSON API, which never builds a tree for them).
//!
//! Parsing a forecaster's window into `serde_json::Value`s cost an allocation
//! per row and per number's array (28 for one 26-week window), a quarter of
//! the miss path's allocations; the raw text is read straight into the batch
//! instead (`read_window`). Only a window that the straight read refuses
//! (wrong shape, a gap to fill, a bad number) is parsed into values and
//! decoded the long way, which names the field and fills gaps exactly as
//! before: the fast path decides nothing the slow path would decide
//! differently, it only skips the tree for windows that are plainly valid.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// A request's instances.
#[derive(Debug, Clone)]
pub enum Instances {
    /// As JSON values.
    Json(Vec<Value>),
    /// Each instance's JSON text, as sent (already checked to be JSON).
    Raw(Vec<Box<RawValue>>),
}

impl Instances {
    /// How many instances.
    pub fn len(&self) -> usize {
        match self {
            Instances::Json(v) => v.len(),
            Instances::Raw(r) => r.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of text among the instances, to decide whether preprocessing
    /// them is worth a thread of its own (an estimate for raw ones: a
    /// string's JSON text, escapes included).
    pub fn text_bytes(&self) -> usize {
        match self {
            Instances::Json(v) => v.iter().map(|v| v.as_str().map_or(0, str::len)).sum(),
            Instances::Raw(r) => r
                .iter()
                .map(|r| r.get())
                .filter(|t| t.starts_with('"'))
                .map(str::len)
                .sum(),
        }
    }

    /// The instances as JSON values (for the prediction log, which keeps
    /// them and their hashes).
    pub fn into_values(self) -> Vec<Value> {
        match self {
            Instances::Json(v) => v,
            // Raw instances were parsed once already; a parse that fails
            // here cannot happen, and would log `null` rather than fail the
            // request.
            Instances::Raw(r) => r
                .iter()
                .map(|r| serde_json::from_str(r.get()).unwrap_or(Value::Null))
                .collect(),
        }
    }
}

impl Instances {
    /// Each instance's SHA-256 as sent, before preprocessing, in hex (the
    /// prediction log's `input_sha256`): a string's bytes, anything else's
    /// compact JSON as `Value` prints it (numbers in their shortest form,
    /// object keys sorted).
    ///
    /// Raw instances are hashed as they are parsed, without building a tree:
    /// for a forecaster's window the tree and its printing were a third of
    /// the logged cache-hit path's instructions. Objects, whose keys a stream
    /// cannot sort, go through `Value`.
    pub fn input_sha256(&self) -> Vec<String> {
        match self {
            Instances::Json(v) => v.iter().map(value_sha256).collect(),
            Instances::Raw(r) => r
                .iter()
                .map(|r| {
                    stream_sha256(r.get()).unwrap_or_else(|| {
                        value_sha256(&serde_json::from_str(r.get()).unwrap_or(Value::Null))
                    })
                })
                .collect(),
        }
    }
}

fn value_sha256(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    match v {
        Value::String(s) => sha256_hex(Sha256::digest(s.as_bytes())),
        other => {
            let mut h = Sha256::new();
            // Writing into a hasher cannot fail.
            let _ = serde_json::to_writer(HashWriter(&mut h), other);
            sha256_hex(h.finalize())
        }
    }
}

/// `value_sha256` of the text's value, computed while parsing it; `None` for
/// an object (or anything that fails to parse), for the long way.
fn stream_sha256(text: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    if text.contains('{') {
        return None;
    }
    if text.starts_with('"') {
        let s: std::borrow::Cow<str> = match serde_json::from_str::<&str>(text) {
            Ok(s) => s.into(),
            // Escapes: the unescaped text is a copy.
            Err(_) => serde_json::from_str::<String>(text).ok()?.into(),
        };
        return Some(sha256_hex(Sha256::digest(s.as_bytes())));
    }
    let mut h = Sha256::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let mut ser = serde_json::Serializer::new(HashWriter(&mut h));
    serde_transcode::transcode(&mut de, &mut ser).ok()?;
    de.end().ok()?;
    Some(sha256_hex(h.finalize()))
}

/// A digest in lower-case hex, through a table (`hex::encode` collects
/// characters one by one).
pub fn sha256_hex(d: impl AsRef<[u8]>) -> String {
    let mut buf = [0u8; 64];
    match hex::encode_to_slice(d.as_ref(), &mut buf) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => hex::encode(d),
    }
}

/// Feeds what a serializer writes to a hash.
struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl From<Vec<Value>> for Instances {
    fn from(v: Vec<Value>) -> Self {
        Instances::Json(v)
    }
}

/// Reads a window of `steps` rows of `features` finite float32 numbers from
/// its JSON text, appending them to `data`. `None` (with `data` as it was)
/// when the text is anything else, for the long way to judge.
pub(crate) fn read_window(
    raw: &RawValue,
    steps: usize,
    features: usize,
    data: &mut Vec<f32>,
) -> Option<()> {
    let start = data.len();
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let read = Window {
        steps,
        features,
        data: &mut *data,
    }
    .deserialize(&mut de)
    .is_ok();
    if read && data.len() == start + steps * features {
        Some(())
    } else {
        data.truncate(start);
        None
    }
}

struct Window<'a> {
    steps: usize,
    features: usize,
    data: &'a mut Vec<f32>,
}

impl<'de> DeserializeSeed<'de> for Window<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Window<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} rows of {} numbers", self.steps, self.features)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.steps {
            let row = Row {
                features: self.features,
                data: &mut *self.data,
            };
            if seq.next_element_seed(row)?.is_none() {
                return Err(serde::de::Error::custom("too few rows"));
            }
        }
        match seq.next_element::<serde::de::IgnoredAny>()? {
            None => Ok(()),
            Some(_) => Err(serde::de::Error::custom("too many rows")),
        }
    }
}

struct Row<'a> {
    features: usize,
    data: &'a mut Vec<f32>,
}

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a row of {} numbers", self.features)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.features {
            // As the long way reads a reading: the JSON number as f64, then
            // float32, finite. `null` (a gap) fails here and goes the long way.
            let Some(x) = seq.next_element::<f64>()? else {
                return Err(serde::de::Error::custom("too few numbers"));
            };
            let x = x as f32;
            if !x.is_finite() {
                return Err(serde::de::Error::custom("not a finite float32"));
            }
            self.data.push(x);
        }
        match seq.next_element::<serde::de::IgnoredAny>()? {
            None => Ok(()),
            Some(_) => Err(serde::de::Error::custom("too many numbers")),
        }
    }
}

/// The string a raw instance holds, when it is one.
pub(crate) fn read_string(raw: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    // Borrowed when the text has no escapes.
    #[derive(serde::Deserialize)]
    struct Text<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);
    serde_json::from_str::<Text<'_>>(raw.get())
        .ok()
        .map(|t| t.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    /// The streamed hash is the one the log always had: the instance parsed
    /// into a `Value` and printed compactly (a string: its bytes).
    fn hash_of_value(text: &str) -> String {
        use sha2::{Digest, Sha256};
        match serde_json::from_str::<Value>(text).unwrap() {
            Value::String(s) => hex::encode(Sha256::digest(s.as_bytes())),
            v => hex::encode(Sha256::digest(v.to_string().as_bytes())),
        }
    }

    #[test]
    fn input_hashes_are_the_values_hashes_without_the_tree() {
        let cases = [
            "[[1], [2.5], [3e2]]",
            " [ [ 1.0 ,2.50], [-0, -0.0, 1E-7, 12345678901234567890] ] ",
            "[[18446744073709551616, -9223372036854775809, 0.1, 1e300]]",
            "[true, false, null, \"a\", []]",
            "\"plain text\"",
            "\"esc\\u00e9aped \\\"quote\\\" \\n\"",
            "\"d\u{e9}j\u{e0} vu\"",
            "42",
            "{\"b\": 1, \"a\": [2, 3]}",
            "[{\"z\": 1, \"y\": 2}]",
        ];
        for text in cases {
            let want = hash_of_value(text);
            let raw = Instances::Raw(vec![raw(text)]).input_sha256();
            assert_eq!(raw, std::slice::from_ref(&want), "raw {text}");
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                Instances::Json(vec![v]).input_sha256(),
                [want],
                "value {text}"
            );
        }
        assert!(stream_sha256("[1, 2]").is_some(), "arrays are streamed");
        assert!(stream_sha256("{\"a\": 1}").is_none(), "objects are not");
    }

    #[test]
    fn a_plain_window_is_read_straight_into_the_batch() {
        let mut data = vec![9.0];
        assert!(read_window(&raw("[[1], [2.5], [3e2]]"), 3, 1, &mut data).is_some());
        assert_eq!(data, [9.0, 1.0, 2.5, 300.0]);
        assert!(read_window(&raw("[[1, 2], [3, 4]]"), 2, 2, &mut data).is_some());
        assert_eq!(data[4..], [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn anything_else_is_left_to_the_long_way_with_the_batch_untouched() {
        for bad in [
            "[[1], [2]]",
            "[[1], [2], [3], [4]]",
            "[[1], [null], [3]]",
            "[[1], [2, 3], [4]]",
            "[[1], [], [3]]",
            "[[1], [\"2\"], [3]]",
            "[[1], [1e39], [3]]",
            "[1, 2, 3]",
            "{\"a\": 1}",
            "\"text\"",
        ] {
            let mut data = vec![7.0];
            assert!(read_window(&raw(bad), 3, 1, &mut data).is_none(), "{bad}");
            assert_eq!(data, [7.0], "{bad}");
        }
    }

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let r = raw("\"plain\"");
        assert!(matches!(
            read_string(&r),
            Some(std::borrow::Cow::Borrowed("plain"))
        ));
        assert_eq!(read_string(&raw("\"a\\nb\"")).as_deref(), Some("a\nb"));
        assert!(read_string(&raw("3")).is_none());
    }

    #[test]
    fn raw_instances_become_the_same_values() {
        let sent = "[\"a\", [[1], [2]], null, {\"k\": 1}]";
        let raw: Vec<Box<RawValue>> = serde_json::from_str(sent).unwrap();
        let values: Vec<Value> = serde_json::from_str(sent).unwrap();
        assert_eq!(Instances::Raw(raw).into_values(), values);
    }
}

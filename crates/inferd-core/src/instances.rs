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

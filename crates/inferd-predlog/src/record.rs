//! One prediction-log record, and its on-disk form: JSON lines, shared by the
//! file sink and the spill file, so a spilled record replays exactly as written.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::metrics::Metrics;
use inferd_telemetry::trace::TraceRef;

/// The `role` of a label's row.
pub const FEEDBACK: &str = "feedback";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
/// One log row: a prediction served, or a request that failed.
pub struct Record {
    /// The row's own id: inserts are idempotent on it.
    pub id: Uuid,
    /// When the answer went out.
    pub ts: DateTime<Utc>,
    /// The request's `x-request-id`.
    pub request_id: String,
    /// The model (empty when the request named none that exists).
    pub model: String,
    /// The version that answered.
    pub version: String,
    /// The HTTP status the answer stands for.
    pub status: u16,
    /// The instance as sent, when `INFERD_PREDLOG_INPUTS=full`.
    pub instance: Option<JsonText>,
    /// SHA-256 of the instance's canonical encoding after preprocessing (the
    /// cache key's hash).
    pub instance_sha256: Option<String>,
    /// SHA-256 of the instance as sent, before preprocessing. Absent from
    /// records spilled by older versions.
    #[serde(default)]
    pub input_sha256: Option<String>,
    /// The prediction, as answered.
    pub prediction: Option<JsonText>,
    /// Whether it came from the cache.
    pub cached: bool,
    /// The whole request's time in the server.
    pub latency_ms: f32,
    /// Who asked (the proxy's `x-forwarded-for`, else the peer).
    pub client: Option<String>,
    /// Why the request failed.
    pub error: Option<String>,
    /// The request's trace id (OpenTelemetry, W3C), when it had one: tracing
    /// is on, or the client sent a `traceparent`.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Which instance of its request this row is (0-based). Absent from
    /// records spilled by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_index: Option<u32>,
    /// `None` for the version that answered; `canary`, `shadow` (a copy run
    /// on a shadow version), or `feedback` (a label fed back for the
    /// instance; `prediction` holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Where the request's spans hang, for the `predlog.write` span; not
    /// stored.
    #[serde(skip)]
    pub trace: TraceRef,
}

/// A JSON document serialized once, where the record is made, and written
/// as it is by either sink.
///
/// Records held `serde_json::Value` trees, built on the request path and
/// printed again by the writer: for a forecaster's window that was one
/// allocation per row and a tenth of a logged request's instructions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// `value` serialized; `None` if it cannot be (a map with non-string
    /// keys, which no prediction has).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Option<Self> {
        serde_json::value::to_raw_value(value).ok().map(JsonText)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub(super) fn raw(&self) -> &RawValue {
        &self.0
    }
}

/// The same text: records are compared in tests of the spill and replay.
impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// Both sinks count their writes the same way, so dashboards need not care
/// which one is configured.
pub(super) fn record_written(metrics: &Metrics, sink: &str, rows: usize, took: Duration) {
    metrics
        .predlog_written
        .with_label_values(&[sink])
        .inc_by(rows as u64);
    metrics
        .predlog_write_duration
        .with_label_values(&[sink])
        .observe(took.as_secs_f64());
}

/// The spill file while it is being replayed: appends go to a fresh spill file
/// meanwhile, so nothing appended during a replay is removed with it.
pub(super) fn replaying(spill: &Path) -> PathBuf {
    PathBuf::from(format!("{}.replaying", spill.display()))
}

/// The batch goes out in one write, so a crash mid-append tears at most the
/// last line, which `read_spill` then reports as unreadable.
pub(super) fn append_jsonl(path: &Path, records: &[Record]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut out = Vec::with_capacity(records.len() * 512);
    for r in records {
        serde_json::to_writer(&mut out, r)?;
        out.push(b'\n');
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    // All or nothing: a batch that does not fit (disk full) would otherwise
    // leave its first records and a torn line behind, while the caller counts
    // the whole batch as dropped and the replay counts the torn line again.
    let before = f.metadata()?.len();
    match f.write_all(&out).and_then(|()| f.flush()) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = f.set_len(before);
            Err(e)
        }
    }
}

/// One entry per line; `None` for a line that does not parse (a torn append).
pub(super) fn read_spill(path: &Path) -> std::io::Result<Vec<Option<Record>>> {
    let f = File::open(path)?;
    BufReader::new(f)
        .lines()
        .map(|l| l.map(|l| serde_json::from_str::<Record>(&l).ok()))
        .collect()
}

/// A filled-in record for the submodules' tests.
#[cfg(test)]
pub(super) fn test_record(i: u32) -> Record {
    Record {
        id: Uuid::new_v4(),
        ts: Utc::now(),
        request_id: format!("r{i}"),
        model: "m".into(),
        version: "1".into(),
        status: 200,
        instance: JsonText::of("text"),
        instance_sha256: Some("ab".into()),
        input_sha256: Some("cd".into()),
        prediction: JsonText::of(&serde_json::json!({"label": "ham"})),
        cached: false,
        latency_ms: 0.5,
        client: Some("127.0.0.1:1".into()),
        error: None,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        instance_index: Some(0),
        role: None,
        trace: TraceRef::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::test_record as record;
    use super::*;
    use std::fs::OpenOptions;

    /// Replay trusts `read_spill` to give back every appended record intact and
    /// to count, not fail on, a line torn by a crash mid-append.
    #[test]
    fn spill_append_reads_back_and_counts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/spill.jsonl");
        let first: Vec<Record> = (0..3).map(record).collect();
        let second: Vec<Record> = (3..5).map(record).collect();
        append_jsonl(&path, &first).unwrap();
        append_jsonl(&path, &second).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"id":"0b6f"#).unwrap();
        drop(f);

        let back = read_spill(&path).unwrap();
        assert_eq!(back.len(), 6);
        let good: Vec<Record> = back.iter().flatten().cloned().collect();
        let want: Vec<Record> = first.into_iter().chain(second).collect();
        assert_eq!(good, want);
        assert!(back[5].is_none());
        assert_eq!(
            replaying(&path),
            dir.path().join("nested/spill.jsonl.replaying")
        );
    }
}

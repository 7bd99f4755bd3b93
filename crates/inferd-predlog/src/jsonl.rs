//! The JSON-lines file sink: for deployments without a database, one record per
//! line in a local file.
//!
//! The file is rotated by size and only `keep` old files are kept, so a server
//! that runs for months cannot fill its disk with its own log.

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use inferd_telemetry::ratelimit::{every, Every};

use super::record::append_jsonl;
use super::record::{record_written, Record};
use crate::metrics::Metrics;

pub(super) struct JsonlSink {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
}

impl JsonlSink {
    pub(super) fn open(path: PathBuf, max_bytes: u64, keep: usize) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        Ok(JsonlSink {
            path,
            max_bytes,
            keep: keep.max(1),
        })
    }

    fn write(&mut self, records: &[Record]) -> std::io::Result<()> {
        let size = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        // An empty or missing file is never rotated: there is nothing to keep,
        // and renaming a missing file would fail the write.
        if size > 0 && size >= self.max_bytes {
            self.rotate()?;
        }
        append_jsonl(&self.path, records)
    }

    /// `predictions.jsonl` -> `.1` -> `.2` ... up to `keep` old files.
    /// Only the run of existing files from `.1` up is shifted (the first gap
    /// absorbs it), so a rotation costs one rename per file that exists,
    /// whatever `keep` is.
    fn rotate(&self) -> std::io::Result<()> {
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let mut gap = 1;
        while gap <= self.keep && name(gap).exists() {
            gap += 1;
        }
        if gap > self.keep {
            let _ = fs::remove_file(name(self.keep));
            gap = self.keep;
        }
        for i in (1..gap).rev() {
            let _ = fs::rename(name(i), name(i + 1));
        }
        fs::rename(&self.path, name(1))
    }
}

/// Writes one batch on the blocking pool, since file I/O would stall the async
/// workers. Never hands records back for a retry (see the error arm).
pub(super) async fn write_shared(
    sink: Arc<Mutex<JsonlSink>>,
    batch: Arc<Vec<Record>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let joined = tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let r = sink
            .lock()
            .map_err(|_| anyhow::anyhow!("sink lock poisoned"))
            .and_then(|mut s| Ok(s.write(&batch)?));
        (batch, r, t.elapsed())
    })
    .await;
    match joined {
        Ok((batch, Ok(()), took)) => {
            record_written(&metrics, "jsonl", batch.len(), took);
            Ok(())
        }
        // A local file that cannot be written will not heal by retrying
        // the same records forever: count them as dropped.
        Ok((batch, Err(e), _)) => {
            metrics
                .predlog_dropped
                .with_label_values(&["jsonl_write"])
                .inc_by(batch.len() as u64);
            static FAILED: LazyLock<Every> = every!("prediction log file write failed");
            if let Some(suppressed) = FAILED.tick() {
                tracing::error!(
                    suppressed,
                    "prediction log file write failed, {} records dropped: {e:#}",
                    batch.len()
                );
            }
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("jsonl writer task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::test_record as record;

    #[test]
    fn jsonl_rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let mut s = JsonlSink::open(path.clone(), 200, 2).unwrap();
        for i in 0..10 {
            s.write(&[record(i)]).unwrap();
        }
        assert!(path.exists());
        assert!(dir.path().join("p.jsonl.1").exists());
        assert!(dir.path().join("p.jsonl.2").exists());
        assert!(!dir.path().join("p.jsonl.3").exists());
        let line = fs::read_to_string(&path).unwrap();
        let back: Record = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(back.model, "m");
    }

    #[test]
    fn rotation_shifts_only_up_to_the_first_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let at = |i: u32| dir.path().join(format!("p.jsonl.{i}"));
        fs::write(&path, "current\n").unwrap();
        fs::write(at(1), "one\n").unwrap();
        fs::write(at(3), "three\n").unwrap();
        let s = JsonlSink::open(path.clone(), 1, 3).unwrap();
        s.rotate().unwrap();
        let read = |i| fs::read_to_string(at(i)).unwrap();
        assert_eq!(
            (read(1), read(2), read(3)),
            ("current\n".into(), "one\n".into(), "three\n".into())
        );
        // All kept numbers taken: the oldest goes.
        fs::write(&path, "newest\n").unwrap();
        s.rotate().unwrap();
        assert_eq!(
            (read(1), read(2), read(3)),
            ("newest\n".into(), "current\n".into(), "one\n".into())
        );
        assert!(!at(4).exists() && !path.exists());
    }
}

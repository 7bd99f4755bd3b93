//! Bugs the properties found, each kept as its minimal case now that it is
//! fixed. Most were configuration values near the integer limits that
//! overflowed or panicked; every setting now has an upper bound checked at
//! start-up (`ServeConfig::validate`), and the arithmetic that used them
//! saturates. Each test checks that just past the bound is a start-up error
//! and, where the bound itself could misbehave, that it works.

use crate::config::*;
use crate::*;

/// Start-up with the tests' configuration on the scripted model, edited; a
/// panic on any of the server's threads is an `Err`.
pub(crate) fn start_edited(
    p: Probe,
    edit: impl FnOnce(&mut ServeConfig),
) -> Result<StartUp, String> {
    watch_server_panics();
    let _one = START_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    SERVER_PANICS
        .lock()
        .map(|mut p| p.clear())
        .unwrap_or_default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = common::config();
    config.models.models_dir = scripted_models(tmp.path());
    config.predlog.sink = PredLogMode::Jsonl;
    config.predlog.predlog_path = tmp.path().join("predictions.jsonl");
    config.predlog.predlog_spill_path = tmp.path().join("spill.jsonl");
    edit(&mut config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = rt.block_on(start_up(config, p, crate::common::gate::EVENTUALLY));
    rt.shutdown_timeout(Duration::from_secs(2));
    let panics = SERVER_PANICS
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    match panics.is_empty() {
        true => outcome,
        false => Err(format!("the server panicked: {panics:#?}")),
    }
}

/// `INFERD_CACHE_TTL_SECS=31536000001` (or more): moka's builder asserts a
/// time to live of at most 1000 years, in `build_state` (`local_store`,
/// crates/inferd-core/src/cache.rs), so the binary exits 101 with a panic.
#[test]
fn a_cache_ttl_over_1000_years_is_a_start_up_error() {
    let outcome = start_edited(Probe::Predict, |c| {
        c.cache.cache_ttl_secs = MOKA_MAX_TTL_SECS + 1
    });
    assert!(matches!(outcome, Ok(StartUp::Refused(_))), "{outcome:?}");
}

/// `INFERD_PREDLOG_CHANNEL=2305843009213693952` (or more) with the JSON-lines
/// or PostgreSQL log: tokio's `mpsc::channel` panics over `MAX_PERMITS`
/// (crates/inferd-predlog/src/writer.rs, `spawn`); the binary exits 101.
#[test]
fn a_predlog_channel_over_max_permits_is_a_start_up_error() {
    let outcome = start_edited(Probe::Predict, |c| {
        c.predlog.predlog_channel = TOKIO_MAX_PERMITS as usize + 1
    });
    assert!(matches!(outcome, Ok(StartUp::Refused(_))), "{outcome:?}");
}

/// `INFERD_PREDLOG_BUFFER_ROWS=18446744073709551615` (or a batch of 2^63
/// rows) with the JSON-lines or PostgreSQL log: the writer's read-ahead bound
/// `buffer_rows + SPILL_CHUNK.max(batch_rows)` (crates/inferd-predlog/src/writer.rs, `run`)
/// overflows at the first record; the writer task dies (debug) and every
/// later record is dropped, the server answering as if nothing happened.
#[test]
fn a_predlog_buffer_near_usize_max_is_refused_and_the_largest_allowed_works() {
    let outcome = start_edited(Probe::Predict, |c| {
        c.predlog.predlog_buffer_rows = usize::MAX
    });
    assert!(matches!(outcome, Ok(StartUp::Refused(_))), "{outcome:?}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (outcome, written) = predict_with_log(tmp.path(), |c| {
        c.predlog.predlog_buffer_rows = 100_000_000;
        c.predlog.predlog_batch_rows = 1_000_000;
    });
    assert!(
        matches!(outcome, Ok(StartUp::Ready(Some(200)))),
        "{outcome:?}"
    );
    assert_eq!(written.lines().count(), 1, "{written:?}");
}

/// Starts the scripted model with the JSON-lines log in `tmp`, `edit`ed,
/// makes one prediction and shuts down; returns how start-up went and the
/// log file's text after shutdown (which writes every record out first).
pub(crate) fn predict_with_log(
    tmp: &Path,
    edit: impl FnOnce(&mut ServeConfig),
) -> (Result<StartUp, String>, String) {
    watch_server_panics();
    let _one = START_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut config = common::config();
    config.models.models_dir = scripted_models(tmp);
    config.predlog.sink = PredLogMode::Jsonl;
    config.predlog.predlog_path = tmp.join("predictions.jsonl");
    edit(&mut config);
    let log = config.predlog.predlog_path.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = rt.block_on(start_up(
        config,
        Probe::Predict,
        crate::common::gate::EVENTUALLY,
    ));
    let written = std::fs::read_to_string(&log).unwrap_or_default();
    // Not `drop`: a write stuck on the blocking pool would hang the test.
    rt.shutdown_timeout(Duration::from_secs(1));
    (outcome, written)
}

/// `INFERD_PREDLOG_KEEP=18446744073709551615` (any huge count): each rotation
/// of the JSON-lines log renames `.{keep-1}` to `.{keep}`, down to `.1`, one
/// `rename` per number whether the file exists or not (`JsonlSink::rotate`,
/// crates/inferd-predlog/src/jsonl.rs), holding the sink's lock: the first rotation never
/// ends, no record is written again, and the process never exits (the async
/// runtime waits for that blocking thread). Here a full log file (1 byte
/// allowed) makes the first record rotate.
#[test]
fn a_huge_predlog_keep_is_refused_and_the_largest_allowed_rotates_at_once() {
    let outcome = start_edited(Probe::Predict, |c| c.predlog.predlog_keep = usize::MAX);
    assert!(matches!(outcome, Ok(StartUp::Refused(_))), "{outcome:?}");
    // A rotation now costs one rename per file that exists.
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("predictions.jsonl"), "an older record\n").expect("log");
    let (outcome, written) = predict_with_log(tmp.path(), |c| {
        c.predlog.predlog_max_bytes = 1;
        c.predlog.predlog_keep = 10_000;
    });
    assert!(
        matches!(outcome, Ok(StartUp::Ready(Some(200)))),
        "{outcome:?}"
    );
    assert!(
        written.lines().count() == 1 && written.contains("\"model\":\"m\""),
        "the log after rotation holds the prediction's record: {written:?}"
    );
}

/// `INFERD_PREDLOG_MAX_BYTES=0` validates, and then every write rotates
/// first; rotating a log file that does not exist yet fails (the final
/// `rename` in `JsonlSink::rotate`), so every batch is dropped (counted as
/// `jsonl_write`) and the file is never created.
#[test]
fn predlog_max_bytes_zero_is_refused_or_keeps_every_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (outcome, written) = predict_with_log(tmp.path(), |c| c.predlog.predlog_max_bytes = 0);
    let refused = matches!(outcome, Ok(StartUp::Refused(_)));
    assert!(
        refused || written.lines().count() == 1,
        "{outcome:?}; log: {written:?}"
    );
}

/// `INFERD_IDLE_TIMEOUT_MS=18446744073709551615`: the accept loop's deadline
/// (`ConnState::deadline`, src/listen.rs) adds it to the connection's age in
/// ms and overflows, so every connection's task panics (debug) or, wrapped,
/// is closed at once (release): nothing is ever answered.
#[test]
fn an_idle_timeout_near_u64_max_is_refused_and_a_day_works() {
    let outcome = start_edited(Probe::Predict, |c| c.net.idle_timeout_ms = u64::MAX);
    assert!(matches!(outcome, Ok(StartUp::Refused(_))), "{outcome:?}");
    let outcome = start_edited(Probe::Predict, |c| c.net.idle_timeout_ms = DAY_MS);
    assert!(
        matches!(outcome, Ok(StartUp::Ready(Some(200)))),
        "{outcome:?}"
    );
}

/// `INFERD_HEADER_READ_TIMEOUT_MS=18446744073709551615`: the same overflow,
/// on the header deadline, for a request whose header comes in parts (one
/// sent at once is usually parsed before the deadline is computed).
#[test]
fn a_header_read_timeout_near_u64_max_is_refused_and_a_day_works() {
    let outcome = start_edited(Probe::SlowHeader, |c| {
        c.net.header_read_timeout_ms = u64::MAX
    });
    assert!(matches!(outcome, Ok(StartUp::Refused(_))), "{outcome:?}");
    let outcome = start_edited(Probe::SlowHeader, |c| c.net.header_read_timeout_ms = DAY_MS);
    assert!(
        matches!(outcome, Ok(StartUp::Ready(Some(200)))),
        "{outcome:?}"
    );
}

/// `INFERD_WARMUP_RUNS=18446744073709551615`: `load_models` multiplies it by
/// the pool size (src/server.rs), which overflows: a panic in the loader
/// (debug), or a wrapped count that warms up for ever (release). Any count
/// large enough never becomes ready either; a bound belongs in `validate`.
#[test]
fn warmup_runs_past_the_bound_are_a_start_up_error() {
    let outcome = start_edited(Probe::Predict, |c| {
        c.limits.max_concurrency = Some(2);
        c.models.warmup_runs = usize::MAX;
    });
    assert!(matches!(outcome, Ok(StartUp::Refused(_))), "{outcome:?}");
}

/// serde builds a struct from a JSON array too (`["text-classifier", null,
/// ["hi"]]` is a valid `/predict` body); one element too many is then
/// "malformed JSON: trailing characters" (400), though the document is JSON
/// of the wrong shape (422 `invalid_input`). Both front doors.
#[test]
fn a_request_sent_as_an_array_with_extra_elements_is_invalid_not_malformed() {
    let e = parse::<PredictRequest>(b"[null,null,[],null]").expect_err("four fields");
    assert_eq!(
        (e.code(), e.status().as_u16()),
        ("invalid_input", 422),
        "{e}"
    );
    let e = parse::<InferRequest>(b"[null,null,[],null,null]").expect_err("five fields");
    assert_eq!(
        (e.code(), e.status().as_u16()),
        ("invalid_input", 422),
        "{e}"
    );
}

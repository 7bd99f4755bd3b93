//! Shadow runs: a copy of a request run on another version of its model, off
//! the request path, to compare the two on live traffic.
//!
//! Shadows never touch the primaries' capacity: they do not enter the
//! admission queue, the batchers or the inference slots, so they can be
//! neither the reason for a primary's 429 nor ahead of it in a queue. They
//! run on one thread of their own in the kernel's idle class (`SCHED_IDLE`),
//! which runs only when the primaries leave a core idle, from a
//! short lane of their own (`LANE`); a copy that finds the lane full is
//! dropped and counted, never waited for. Measured: at half capacity on one
//! core, the slot threads' way (a shadow ran as a second request) raised the
//! primary's p99 by 60%; see the book's quality chapter for this way's figure.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use uuid::Uuid;

use super::state::AppState;
use inferd_core::deployment::Target;
use inferd_core::instances::Instances;
use inferd_core::quality::Arm;
use inferd_core::repository::Model;
use inferd_predlog::{JsonText, Record};
use inferd_telemetry::trace::TraceRef;

/// Shadow copies waiting for the shadow thread; past this they are dropped.
const LANE: usize = 32;

struct Job {
    /// Where the results are recorded: on the server's runtime, at normal
    /// priority, because recording takes locks the primaries take too, and an
    /// idle-class thread preempted while holding one would stall them
    /// (measured: p99 at half capacity 1.2 ms without a shadow, 23-37 ms with
    /// one recorded on the shadow thread).
    runtime: tokio::runtime::Handle,
    st: Arc<AppState>,
    shadow: Target,
    instances: Instances,
    request_id: String,
    labels: [String; 3],
    /// Made here, on the runtime: a version's first use takes the books'
    /// write lock, which an idle-class thread must never hold.
    book: Arc<inferd_core::quality::VersionBook>,
}

/// The shadow thread's lane, started on first use (one per process: every
/// server in it shares the one idle-priority thread).
fn lane() -> Option<&'static SyncSender<Job>> {
    static LANE_TX: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    LANE_TX
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<Job>(LANE);
            let spawned = std::thread::Builder::new()
                .name("inferd-shadow".into())
                .spawn(move || {
                    inferd_core::slots::idle_priority_current_thread();
                    while let Ok(job) = rx.recv() {
                        run(job);
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "could not start the shadow thread; shadows are dropped");
                    None
                }
            }
        })
        .as_ref()
}

/// Queues a copy of `instances` for `shadow`, or drops it (counted) when the
/// lane is full.
pub(crate) fn spawn(
    st: &Arc<AppState>,
    primary: &Model,
    shadow: Target,
    instances: Instances,
    request_id: &str,
) {
    let labels = [
        primary.manifest.name.clone(),
        primary.manifest.version.clone(),
        shadow.model.manifest.version.clone(),
    ];
    let job = Job {
        book: st.quality.book(&shadow.model),
        runtime: tokio::runtime::Handle::current(),
        st: st.clone(),
        shadow,
        instances,
        request_id: request_id.to_string(),
        labels,
    };
    let Some(tx) = lane() else {
        count(&job, "dropped");
        return;
    };
    match tx.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => count(&job, "dropped"),
    }
}

fn count(job: &Job, outcome: &str) {
    let [m, v, s] = &job.labels;
    job.st.quality.count_shadow(m, v, s, outcome);
}

/// On the shadow thread: decode for the shadow's own preprocessing, run its
/// graph directly, record and log the predictions.
fn run(job: Job) {
    let st = &job.st;
    let model = &job.shadow.model;
    let Ok(decoded) = st.pipeline.decode(&job.shadow, &job.instances) else {
        let runtime = job.runtime.clone();
        runtime.spawn(async move { count(&job, "failed") });
        return;
    };
    let book = job.book.clone();
    let features = st.quality.features(&book, &decoded.batch);
    // Model time, as the primary's is counted (queue and inference, not
    // decoding), so that the two compare.
    let started = Instant::now();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.backend.infer(&decoded.batch)
    }));
    let Ok(Ok(out)) = ran else {
        let runtime = job.runtime.clone();
        runtime.spawn(async move { count(&job, "failed") });
        return;
    };
    let predictions = model.task.encode(&out);
    let took = started.elapsed();
    let runtime = job.runtime.clone();
    runtime.spawn(async move { record(job, book, predictions, features, took) });
}

fn record(
    job: Job,
    book: Arc<inferd_core::quality::VersionBook>,
    predictions: Vec<inferd_core::task::Prediction>,
    features: Option<inferd_core::quality::Features>,
    took: std::time::Duration,
) {
    let st = &job.st;
    let model = &job.shadow.model;
    count(&job, "ran");
    st.quality.record(
        &book,
        Arm::Shadow,
        &job.request_id,
        &predictions,
        features,
        took,
    );
    if !st.predlog.enabled() {
        return;
    }
    let ts = chrono::Utc::now();
    let latency_ms = took.as_secs_f32() * 1e3;
    for (i, p) in predictions.iter().enumerate() {
        st.predlog.log(Record {
            id: Uuid::new_v4(),
            ts,
            request_id: job.request_id.clone(),
            model: model.manifest.name.clone(),
            version: model.manifest.version.clone(),
            status: 200,
            instance: None,
            instance_sha256: None,
            input_sha256: None,
            prediction: JsonText::of(p),
            cached: false,
            latency_ms,
            client: None,
            error: None,
            trace_id: None,
            instance_index: Some(i as u32),
            role: Some(Arm::Shadow.as_str().to_string()),
            trace: TraceRef::default(),
        });
    }
}

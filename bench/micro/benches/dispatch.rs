//! The hand-off between a request's task and the model, on the LSTM with ONNX
//! Runtime: one call made in place (no hand-off at all), through a tokio
//! blocking-pool task per call (how batches ran before the slot threads), and
//! through the batcher onto a slot thread (how they run now); then 64 requests
//! submitted at once, where the batcher merges them.
//!
//! `ORT_DYLIB_PATH=$PWD/.ort/lib/libonnxruntime.so.1.31.1 cargo bench -p inferd-microbench --bench dispatch`

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inferd_core::admission::Admission;
use inferd_core::backend::InputBatch;
use inferd_core::batcher::Batcher;
use inferd_core::metrics::Metrics;
use inferd_telemetry::trace::TraceRef;

const MODEL: &str = "lstm-forecaster";

fn bench(c: &mut Criterion) {
    let repo = inferd_microbench::load_models(2).expect("models load");
    let model = repo.get(MODEL, None).expect("model").clone();
    let instance = inferd_microbench::golden_inputs(MODEL).expect("golden inputs")[0].clone();
    let input: InputBatch = model.task.decode(&[instance]).expect("decode").batch;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Arc::new(Metrics::default());
    let admission = Admission::new(2, 4096, metrics.clone());
    let batcher = Batcher::start(
        model.clone(),
        admission.slots(),
        metrics,
        32,
        Duration::ZERO,
        10_000,
        // Dispatch cost alone: a burst of 64 must never be refused by time.
        inferd_core::governor::Tuning {
            adaptive: false,
            target: None,
            ..Default::default()
        },
    );
    let deadline = || tokio::time::Instant::now() + Duration::from_secs(10);

    let mut one = c.benchmark_group(format!("dispatch/{MODEL}/one_request"));
    one.bench_function("in_place", |b| {
        b.iter(|| model.backend.infer(&input).expect("infer"))
    });
    one.bench_function("blocking_pool_task", |b| {
        b.iter(|| {
            let (m, x) = (model.clone(), input.clone());
            rt.block_on(rt.spawn_blocking(move || m.backend.infer(&x)))
                .expect("joined")
                .expect("infer")
        })
    });
    one.bench_function("slot_thread", |b| {
        b.iter(|| {
            let ticket = admission.enter().expect("room");
            let rx = batcher
                .submit(input.clone(), deadline(), ticket, TraceRef::default())
                .expect("the queue has room");
            rt.block_on(rx).expect("answered").expect("infer")
        })
    });
    one.finish();

    // 64 requests from 64 tasks at once: what a burst of connections does.
    let mut burst = c.benchmark_group(format!("dispatch/{MODEL}/64_requests"));
    burst.throughput(Throughput::Elements(64));
    burst.bench_function("blocking_pool_task_each", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let (m, x) = (model.clone(), input.clone());
                        tokio::spawn(async move {
                            tokio::task::spawn_blocking(move || m.backend.infer(&x)).await
                        })
                    })
                    .collect();
                for t in futures::future::join_all(tasks).await {
                    t.expect("task").expect("joined").expect("infer");
                }
            })
        })
    });
    burst.bench_function("batched_on_slot_threads", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let ticket = admission.enter().expect("room");
                        let rx = batcher
                            .submit(input.clone(), deadline(), ticket, TraceRef::default())
                            .expect("the queue has room");
                        tokio::spawn(rx)
                    })
                    .collect();
                for t in futures::future::join_all(tasks).await {
                    t.expect("task").expect("answered").expect("infer");
                }
            })
        })
    });
    burst.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! ONNX Runtime against libtorch on the same LSTM (`lstm-forecaster` and its
//! TorchScript twin `lstm-forecaster-torch`, one set of trained weights), in
//! process through the `Backend` trait the server uses: batch 1 and 32, one
//! intra-op thread each, the held-out windows as inputs.
//!
//! `scripts/with-torch.sh cargo bench -p inferd-microbench --features torch --bench backends`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use inferd_core::backend::InputBatch;
use serde_json::Value;

fn bench(c: &mut Criterion) {
    let repo = inferd_microbench::load_models(1).expect("models load");
    let windows = inferd_microbench::golden_inputs("lstm-forecaster").expect("golden inputs");
    let mut group = c.benchmark_group("lstm");
    for batch in [1usize, 32] {
        let instances: Vec<Value> = windows.iter().cycle().take(batch).cloned().collect();
        group.throughput(Throughput::Elements(batch as u64));
        for (runtime, name) in [
            ("onnxruntime", "lstm-forecaster"),
            ("libtorch", "lstm-forecaster-torch"),
        ] {
            let model = repo
                .get(name, None)
                .expect("both twins load in a torch build");
            let input: InputBatch = model.task.decode(&instances).expect("decode").batch;
            group.bench_with_input(BenchmarkId::new(runtime, batch), &input, |b, input| {
                b.iter(|| model.backend.infer(input).expect("infer"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

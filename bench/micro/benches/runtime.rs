//! Raw in-process ONNX Runtime time per call for the shipped models, through the
//! same `Backend` the server uses (no HTTP, no JSON, no admission): the floor
//! that serving overhead is measured against. Then the serving hot path around
//! that call: body parsing, instance decoding, the cache key, batch assembly and
//! prediction encoding; and the email preprocessing of raw messages.
//!
//! `ORT_DYLIB_PATH=$PWD/.ort/lib/libonnxruntime.so.1.31.1 cargo bench -p inferd-microbench --bench runtime`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use inferd_core::backend::InputBatch;
use inferd_core::{batcher, cache};
use serde_json::Value;

use inferd_microbench::root;

fn golden(model: &str) -> Vec<Value> {
    inferd_microbench::golden_inputs(model).expect("golden inputs")
}

fn bench(c: &mut Criterion) {
    let repo = inferd_microbench::load_models(1).expect("models load");

    for (name, cases) in [
        ("text-classifier", golden("text-classifier")),
        ("lstm-forecaster", golden("lstm-forecaster")),
    ] {
        let model = repo.get(name, None).expect("model");
        let mut group = c.benchmark_group(format!("ort/{name}"));
        for batch in [1usize, 8, 32] {
            let instances: Vec<Value> = cases.iter().cycle().take(batch).cloned().collect();
            let input: InputBatch = model.task.decode(&instances).expect("decode").batch;
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new("batch", batch), &input, |b, input| {
                b.iter(|| model.backend.infer(input).expect("infer"))
            });
        }
        group.finish();

        // The serving hot path around the ORT call, per request of one instance.
        let mut hot = c.benchmark_group(format!("hot/{name}"));
        let one = vec![cases[0].clone()];
        let body = serde_json::to_vec(&serde_json::json!({"model": name, "instances": one}))
            .expect("json");
        // How the server parses a body (untracked first), and the path-tracking
        // parse it falls back to for an error that must name its field.
        hot.bench_function("parse_request_body", |b| {
            b.iter(|| {
                inferd_api::testing::parse::<inferd_api::testing::PredictRequest>(&body)
                    .expect("parse")
            })
        });
        hot.bench_function("parse_request_body_tracking_paths", |b| {
            b.iter(|| {
                let de = &mut serde_json::Deserializer::from_slice(&body);
                serde_path_to_error::deserialize::<_, inferd_api::testing::PredictRequest>(de)
                    .expect("parse")
            })
        });
        hot.bench_function("decode_instance", |b| {
            b.iter(|| model.task.decode(&one).expect("decode"))
        });
        let input = model.task.decode(&one).expect("decode").batch;
        hot.bench_function("cache_key", |b| {
            b.iter(|| cache::instance_key(name, "1", &input, 0))
        });
        let parts: Vec<InputBatch> = (0..32)
            .map(|i| {
                model
                    .task
                    .decode(&[cases[i % cases.len()].clone()])
                    .expect("decode")
                    .batch
            })
            .collect();
        hot.bench_function("assemble_batch_of_32", |b| {
            b.iter(|| batcher::merge(parts.iter()))
        });
        let out = model.backend.infer(&input).expect("infer");
        hot.bench_function("encode_prediction", |b| {
            b.iter(|| serde_json::to_vec(&model.task.encode(&out)).expect("encode"))
        });
        hot.finish();
    }
}

/// The email preprocessing of `text-classifier` 2, which runs on every raw
/// message: the median and the largest raw message of its golden set.
fn bench_preprocess(c: &mut Criterion) {
    let p = root().join("models/text-classifier/2/golden.json");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(p).expect("golden")).expect("json");
    let mut raws: Vec<String> = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["input"].as_str().expect("raw message").to_string())
        .collect();
    raws.sort_by_key(String::len);
    let mut group = c.benchmark_group("preprocess/email");
    for (label, raw) in [
        ("median", &raws[raws.len() / 2]),
        ("largest", &raws[raws.len() - 1]),
    ] {
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_with_input(BenchmarkId::new(label, raw.len()), raw, |b, raw| {
            b.iter(|| inferd_core::preprocess::email::clean(raw, 4000))
        });
    }
    group.finish();

    // Hostile messages, whose tests check only the answer: how long the
    // answer takes is reported here.
    let nested_multiparts = {
        let mut raw = String::new();
        for i in 0..10_000 {
            raw += &format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n");
        }
        raw + "Content-Type: text/plain\n\ndeep\n"
    };
    let nested_messages = "Subject: m\nContent-Type: message/rfc822\n\n".repeat(10_000)
        + "Subject: inner\n\ninnermost\n";
    let unclosed = {
        let mut raw =
            String::from("Subject: w\nContent-Type: multipart/mixed; boundary=\"top\"\n\n");
        for i in 0..10_000 {
            raw += &format!("--top\nContent-Type: multipart/mixed; boundary=\"gone{i}\"\n\nx\n");
        }
        raw + "--top--\n"
    };
    let mut group = c.benchmark_group("preprocess/hostile");
    group.sample_size(10);
    for (label, raw) in [
        ("10k nested multiparts", &nested_multiparts),
        ("10k nested messages", &nested_messages),
        ("10k unclosed containers", &unclosed),
    ] {
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_with_input(BenchmarkId::new(label, raw.len()), raw, |b, raw| {
            b.iter(|| inferd_core::preprocess::email::clean(raw, 4000))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_preprocess);
criterion_main!(benches);

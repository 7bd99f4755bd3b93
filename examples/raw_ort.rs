//! Raw in-process ONNX Runtime throughput: the ceiling for the serving figures.
//! `threads` OS threads each call `Backend::infer` in a loop on batches of
//! `batch` held-out instances for `secs` seconds; prints instances per second.
//!
//! `cargo run --release --example raw_ort -- <model> <threads> <batch> <secs>`

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferd::config::Device;
use inferd::core::backend::onnx::{self as runtime, OrtLoader};
use inferd::core::backend::BackendOptions;
use inferd::core::repository::Repository;
use serde_json::Value;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("text-classifier")
        .to_string();
    let threads: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(2);
    let batch: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1);
    let secs: f64 = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(5.0);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dylib = runtime::resolve_dylib(
        std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    runtime::init(&dylib).map_err(anyhow::Error::msg)?;
    let opts = BackendOptions {
        intra_threads: 1,
        device: Device::Cpu,
        pool_size: threads,
    };
    let repo = Repository::load(&root.join("models"), &OrtLoader(opts.clone()))?;
    let m = repo
        .get(&model, None)
        .ok()
        .ok_or_else(|| anyhow::anyhow!("no model {model}"))?
        .clone();
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("models").join(&model).join("1/golden.json"),
    )?)?;
    let cases: Vec<Value> = golden["cases"]
        .as_array()
        .map(|c| c.iter().map(|x| x["input"].clone()).collect())
        .unwrap_or_default();
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (m, done, cases) = (m.clone(), done.clone(), cases.clone());
            s.spawn(move || {
                // Cycle through every held-out input, as the load generator does.
                let inputs: Vec<_> = (0..cases.len())
                    .map(|k| {
                        let inst: Vec<Value> = (0..batch)
                            .map(|i| cases[(t * 7 + k + i) % cases.len()].clone())
                            .collect();
                        m.task.decode(&inst).expect("decode").batch
                    })
                    .collect();
                let mut k = 0;
                while Instant::now() < end {
                    m.backend.infer(&inputs[k % inputs.len()]).expect("infer");
                    k += 1;
                    done.fetch_add(batch as u64, Ordering::Relaxed);
                }
            });
        }
    });
    let n = done.load(Ordering::Relaxed) as f64;
    println!(
        "{model} threads={threads} batch={batch}: {:.0} instances/s",
        n / secs
    );
    Ok(())
}

//! Raw in-process ONNX Runtime throughput: the ceiling for the serving figures.
//! `threads` OS threads each call `Backend::infer` in a loop on batches of
//! `batch` held-out instances for `secs` seconds; prints instances per second.
//!
//! `cargo run --release -p inferd-microbench --example raw_ort -- <model> <threads> <batch> <secs>`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let repo = inferd_microbench::load_models(threads)?;
    let m = repo
        .get(&model, None)
        .ok()
        .ok_or_else(|| anyhow::anyhow!("no model {model}"))?
        .clone();
    let cases = inferd_microbench::golden_inputs(&model)?;
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

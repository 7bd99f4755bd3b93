//! What the criterion benches and `examples/raw_ort.rs` share: ONNX Runtime
//! found as the server finds it (`ORT_DYLIB_PATH`, else the default search),
//! the shipped models loaded as the server loads them (one intra-op thread per
//! session), and a model's held-out golden inputs.

use std::path::PathBuf;

use inferd::config::Device;
use inferd::core::backend::onnx as runtime;
use inferd::core::backend::BackendOptions;
use inferd::core::repository::Repository;
use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Initialises ONNX Runtime and loads `models/` with `pool_size` sessions per
/// model version, through the server's runtimes (TorchScript versions too in a
/// `torch` build; skipped, with a warning, in others).
pub fn load_models(pool_size: usize) -> anyhow::Result<Repository> {
    let configured = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let dylib = runtime::resolve_dylib(configured.as_deref()).map_err(anyhow::Error::msg)?;
    runtime::init(&dylib).map_err(anyhow::Error::msg)?;
    let opts = BackendOptions {
        intra_threads: 1,
        device: Device::Cpu,
        pool_size,
        arena_shrink_rows: 8,
    };
    let runtimes = inferd::server::runtimes(opts)?;
    Ok(Repository::load(&root().join("models"), &runtimes)?)
}

/// The inputs of `models/<model>/1/golden.json`, in file order.
pub fn golden_inputs(model: &str) -> anyhow::Result<Vec<Value>> {
    let path = root().join("models").join(model).join("1/golden.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    Ok(golden["cases"]
        .as_array()
        .map(|c| c.iter().map(|x| x["input"].clone()).collect())
        .unwrap_or_default())
}

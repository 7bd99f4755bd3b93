//! Request bodies: the model's held-out golden inputs
//! (`<models>/<model>/<version or 1>/golden.json`) turned into ready-to-send
//! `/predict` JSON bodies.

use std::path::Path;

use serde_json::{json, Value};

/// One body per golden case; body `i` carries `instances` inputs starting at case `i`
/// (wrapping), so every input is sent and consecutive bodies differ.
pub fn payloads(
    models_dir: &Path,
    model: &str,
    version: Option<&str>,
    field: &str,
    instances: usize,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let path = models_dir
        .join(model)
        .join(version.unwrap_or("1"))
        .join("golden.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let golden: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?;
    let inputs: Vec<&Value> = golden["cases"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{}: no cases", path.display()))?
        .iter()
        .map(|c| &c[field])
        .collect();
    anyhow::ensure!(!inputs.is_empty(), "{}: no cases", path.display());
    anyhow::ensure!(
        inputs.iter().all(|v| !v.is_null()),
        "{}: not every case has `{field}`",
        path.display()
    );
    let n = instances.max(1);
    (0..inputs.len())
        .map(|i| {
            let batch: Vec<&Value> = (0..n).map(|k| inputs[(i + k) % inputs.len()]).collect();
            let body = match version {
                Some(v) => json!({"model": model, "version": v, "instances": batch}),
                None => json!({"model": model, "instances": batch}),
            };
            Ok(serde_json::to_vec(&body)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_cycle_through_the_golden_inputs() {
        let dir =
            std::env::temp_dir().join(format!("inferd-bench-payloads-{}", std::process::id()));
        let model_dir = dir.join("m").join("1");
        std::fs::create_dir_all(&model_dir).expect("mkdir");
        std::fs::write(
            model_dir.join("golden.json"),
            r#"{"cases": [{"input": "a"}, {"input": "b"}, {"input": "c"}]}"#,
        )
        .expect("write");
        let bodies = payloads(&dir, "m", None, "input", 2).expect("payloads");
        let parsed: Vec<Value> = bodies
            .iter()
            .map(|b| serde_json::from_slice(b).expect("JSON"))
            .collect();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0], json!({"model": "m", "instances": ["a", "b"]}));
        assert_eq!(parsed[2], json!({"model": "m", "instances": ["c", "a"]}));
        assert!(payloads(&dir, "missing", None, "input", 1).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Start-up refuses broken model repositories with a message naming the file.

mod common;

use std::process::Command;

use common::{config, copy_dir, root};

fn broken_repo(edit: impl FnOnce(&std::path::Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("models"), dir.path());
    edit(dir.path());
    dir
}

fn set_sha(manifest: &std::path::Path, onnx: &std::path::Path) {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(onnx).unwrap()));
    let text = std::fs::read_to_string(manifest).unwrap();
    let fixed: String = text
        .lines()
        .map(|l| {
            if l.starts_with("onnx_sha256") {
                format!("onnx_sha256 = \"{sha}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(manifest, fixed).unwrap();
}

async fn start_error(models: &std::path::Path) -> String {
    let mut cfg = config();
    cfg.models_dir = models.to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = inferd::run(cfg, listener, std::future::pending()).await;
    format!("{:#}", r.expect_err("start-up must fail"))
}

#[tokio::test]
async fn manifest_that_does_not_match_the_graph() {
    let d = broken_repo(|p| {
        let m = p.join("lstm-forecaster/1/model.toml");
        let t = std::fs::read_to_string(&m)
            .unwrap()
            .replace("shape = [-1, 26, 1]", "shape = [-1, 30, 1]");
        std::fs::write(m, t).unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("lstm-forecaster/1/model.onnx") && e.contains("[-1, 30, 1]"),
        "{e}"
    );

    let d = broken_repo(|p| {
        let m = p.join("text-classifier/1/model.toml");
        let t = std::fs::read_to_string(&m).unwrap().replace(
            "labels = [\"ham\", \"spam\"]",
            "labels = [\"ham\", \"spam\", \"eggs\"]",
        );
        std::fs::write(m, t).unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("text-classifier/1/model.onnx") && e.contains("3 labels"),
        "{e}"
    );

    let d = broken_repo(|p| {
        let m = p.join("text-classifier/1/model.toml");
        let t = std::fs::read_to_string(&m)
            .unwrap()
            .replace("name = \"text\"", "name = \"body\"");
        std::fs::write(m, t).unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("manifest inputs [\"body\"]") && e.contains("[\"text\"]"),
        "{e}"
    );
}

#[tokio::test]
async fn corrupt_or_tampered_onnx() {
    let d = broken_repo(|p| {
        std::fs::write(p.join("lstm-forecaster/1/model.onnx"), b"not a model").unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("lstm-forecaster/1/model.onnx") && e.contains("sha256"),
        "{e}"
    );

    let d = broken_repo(|p| {
        let onnx = p.join("lstm-forecaster/1/model.onnx");
        let mut bytes = std::fs::read(&onnx).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&onnx, bytes).unwrap();
        set_sha(&p.join("lstm-forecaster/1/model.toml"), &onnx);
    });
    let e = start_error(d.path()).await;
    assert!(
        e.contains("lstm-forecaster/1/model.onnx") && e.contains("cannot load the graph"),
        "{e}"
    );

    let d = broken_repo(|p| {
        std::fs::remove_file(p.join("text-classifier/1/model.toml")).unwrap();
    });
    let e = start_error(d.path()).await;
    assert!(e.contains("text-classifier/1/model.toml"), "{e}");
}

#[test]
fn the_binary_exits_non_zero_naming_the_file() {
    let d = broken_repo(|p| {
        std::fs::write(p.join("text-classifier/1/model.onnx"), b"garbage").unwrap();
    });
    let cfg = config();
    let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--models-dir"])
        .arg(d.path())
        .env("ORT_DYLIB_PATH", cfg.ort_dylib_path.unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("text-classifier/1/model.onnx") && stderr.contains("sha256"),
        "{stderr}"
    );
}

#[test]
fn missing_onnx_runtime_says_how_to_install_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(["--listen", "127.0.0.1:0", "--models-dir"])
        .arg(root().join("models"))
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ORT_DYLIB_PATH") && stderr.contains("make ort"),
        "{stderr}"
    );
}

#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (ONNX
# Runtime from its PyPI wheel, a Python venv for the model checks), then runs
# the model checks, formatting and lint gates, and every Rust test.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }

step "ONNX Runtime"
ORT_DYLIB_PATH="$(./scripts/install-ort.sh | tail -n 1)"
export ORT_DYLIB_PATH
echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"

step "Python venv for the model checks"
VENV="$ROOT/.venv-test"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s tests/python/requirements.txt "$VENV/.requirements"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q --find-links "$ROOT/.ort/wheel" -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$VENV/.requirements"
fi

step "Model checks (manifest vs graph, sha256, golden outputs)"
"$VENV/bin/python" -m pytest -q tests/python

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test"
cargo test --all-targets

echo
echo "all test steps passed"

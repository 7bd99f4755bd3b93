#!/usr/bin/env bash
# `make check`: the quick tier, for the edit-compile-test loop (under five
# minutes once built, on two cores). Formatting, lints and the crates' layers;
# the docs checks that need no server (links and anchors, the configuration
# reference against the flags); the unit tests of every crate and the
# integration tests that run the server in process without Redis, PostgreSQL,
# nginx or a release build. `make test` runs all of this and everything else.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/steps.sh

ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.ort/lib/libonnxruntime.so.1.31.1}"
export ORT_DYLIB_PATH

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "Layers (cargo tree)"
scripts/check-layers.sh

step "Docs: links and anchors resolve; every chapter in SUMMARY.md"
python3 tests/docs/check_docs.py --links

step "Unit tests of every crate"
cargo test --workspace --lib --bins

step "In-process integration tests (no outside service, no release build)"
cargo test --test docs --test server --test batching --test cancel --test connections \
  --test grpc --test model_control --test preprocess --test properties --test protocols \
  --test bench_tool

done_steps

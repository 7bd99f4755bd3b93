#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Redis,
# PostgreSQL and nginx from Debian packages when missing; ONNX Runtime from its
# PyPI wheel; libtorch from PyPI's torch wheel for the libtorch backend; Python
# venvs for the model checks, the deployment checks and the trace receiver),
# then runs the model checks, formatting and lint gates, every Rust test
# (property tests at a fixed case count; the `torch` feature's too), the static
# checks of the deployment files, the KServe v2 conformance tests (tritonclient,
# schemathesis), the OpenTelemetry tests against a real OTLP receiver, the
# process-level checks (model lifecycle, 20,000 connections, memory bounds and
# a short soak, logging), the loopback stack's up/down cycles, the loopback
# end-to-end test of the compose topology, and the fault campaign (CI profile).
# The integration tests start their own Redis, PostgreSQL and nginx servers on
# free loopback ports and stop them by PID.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

# `step NAME` times each step; a table of them is printed at the end, or at
# the failed one.
source scripts/steps.sh

# The property tests try the same cases on every run (one seed, each
# property's own case count), so that a failure here replays anywhere from
# the seed it prints; `make fuzz` explores with fresh seeds.
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20261206}"

# A CI run builds from a clean clone once: incremental caches and full debug
# info would only take disk (a CI machine's disk has run out before) and time.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only
fi
disk() { df -h --output=avail,target "$ROOT" | tail -n 1 | awk '{print "disk free: " $1 " on " $2}'; }
disk

# venv DIR REQUIREMENTS [pip options]: (re)creates DIR when the requirements file
# changed since it was built.
venv() {
  local dir="$1" req="$2"
  shift 2
  if [ ! -x "$dir/bin/python" ] || ! cmp -s "$req" "$dir/.requirements"; then
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --upgrade pip
    "$dir/bin/pip" install -q "$@" -r "$req"
    cp "$req" "$dir/.requirements"
  fi
}

step "System packages (Redis, PostgreSQL, nginx, docker-compose, promtool) for the tests"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# Offline validators: `docker-compose config` parses compose files without an
# engine; promtool checks and unit-tests the Prometheus config and rules.
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "present"
fi

step "ONNX Runtime"
ORT_DYLIB_PATH="$(./scripts/install-ort.sh | tail -n 1)"
export ORT_DYLIB_PATH
echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"

step "Python venv for the model checks"
VENV="$ROOT/.venv-test"
venv "$VENV" tests/python/requirements.txt --find-links "$ROOT/.ort/wheel"

step "Model checks (manifest vs graph, sha256, golden outputs)"
"$VENV/bin/python" -m pytest -q tests/python

step "Layers: the core and the adapters free of the wire, the command line and database clients (cargo tree)"
scripts/check-layers.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc --workspace --no-deps (no warnings; missing docs on the library crates fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "Docs: links and anchors resolve, every chapter in docs/SUMMARY.md"
python3 tests/docs/check_docs.py --links

step "cargo test (every crate of the workspace; property tests at a fixed case count)"
cargo test --workspace --all-targets

step "libtorch backend (--features torch): libtorch 2.13.0 unpacked from PyPI wheels into .libtorch (kept while scripts/torch-requirements.txt is unchanged), clippy, unit and server tests"
disk
# No `-p`: every member is a default member, so these resolve dependency
# features as the steps above did and rebuild only what the feature changes
# (tch, inferd-torch, the server, the micro benchmarks), not the whole tree.
scripts/with-torch.sh cargo clippy --features torch --all-targets -- -D warnings
scripts/with-torch.sh cargo test --features torch --lib --test torch

step "Release build (the binaries the deployment, conformance and lifecycle tests run)"
cargo build --release --workspace --bins

step "Python venv for the deployment checks (hash-pinned)"
DVENV="$ROOT/.venv-deploy"
venv "$DVENV" tests/deploy/requirements.txt --require-hashes

step "Deployment files: hadolint, docker-compose config, nginx -t, helm lint/render, kubernetes-validate, yamllint, promtool, k6 inspect"
"$DVENV/bin/python" -m pytest -q tests/deploy/test_static.py

step "Python venv for the KServe v2 conformance tests (hash-pinned)"
CVENV="$ROOT/.venv-conformance"
venv "$CVENV" tests/conformance/requirements.txt --require-hashes

step "Conformance: tritonclient (JSON and binary), schemathesis, and the whole SpamAssassin corpus raw (npm package) against a live server"
INFERD_BIN="$ROOT/target/release/inferd" "$CVENV/bin/python" -m pytest -q -s tests/conformance

step "Docs: every command the README and the book show, run against a live server (or marked not runnable, with the reason)"
INFERD_BIN="$ROOT/target/release/inferd" DOCS_PYTHON="$CVENV/bin/python" python3 tests/docs/check_docs.py

step "Python venv for the OpenTelemetry tests (hash-pinned)"
TVENV="$ROOT/.venv-tracing"
venv "$TVENV" tests/tracing/requirements.txt --require-hashes

step "OpenTelemetry traces against a real OTLP receiver (gRPC and HTTP): span tree and batch links, traceparent, trace id in the log row, gRPC ModelInfer, samplers, collector down"
INFERD_BIN="$ROOT/target/release/inferd" "$TVENV/bin/python" -m pytest -q -s tests/tracing

step "Process-level checks: swap under load (inferd-bench), RSS over load/unload cycles, refused versions, auth; 20,000 idle and half-sent connections; memory bounds and a short soak; logging of expected states and repeated faults"
INFERD_BIN="$ROOT/target/release/inferd" INFERD_BENCH_BIN="$ROOT/target/release/inferd-bench" \
  "$DVENV/bin/python" -m pytest -q -s tests/lifecycle

step "Loopback stack lifecycle: up/down cycles in one STACK_DIR (database kept, then reset), a crashed stack, ups that fail part-way"
INFERD_BIN="$ROOT/target/release/inferd" "$DVENV/bin/python" -m pytest -q tests/deploy/test_stack_cycles.py

step "Loopback topology end to end: nginx + 3 workers + Redis + PostgreSQL, k6 through nginx, rolling restart"
INFERD_BIN="$ROOT/target/release/inferd" "$DVENV/bin/python" -m pytest -q tests/deploy/test_stack.py

step "Fault campaign (CI profile): Redis killed and frozen, PostgreSQL stopped and frozen, spill disk full, SIGTERM with and without nginx, SIGKILL behind nginx, SIGTERM while PostgreSQL hangs, each under load; table in target/faults/campaign.md"
INFERD_BIN="$ROOT/target/release/inferd" "$DVENV/bin/python" -m pytest -q -s tests/faults

done_steps
echo
echo "all test steps passed"

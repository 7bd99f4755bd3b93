#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Redis,
# PostgreSQL and nginx from Debian packages when missing; ONNX Runtime from its
# PyPI wheel; Python venvs for the model checks and the deployment checks), then
# runs the model checks, formatting and lint gates, every Rust test, the static
# checks of the deployment files, the KServe v2 conformance tests (tritonclient,
# schemathesis), and the loopback end-to-end test of the compose topology. The integration tests start their own Redis, PostgreSQL and
# nginx servers on free loopback ports and stop them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }

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

step "Release build (the binary the deployment and conformance tests run)"
cargo build --release --bin inferd

step "Python venv for the deployment checks (hash-pinned)"
DVENV="$ROOT/.venv-deploy"
if [ ! -x "$DVENV/bin/python" ] || ! cmp -s tests/deploy/requirements.txt "$DVENV/.requirements"; then
  python3 -m venv "$DVENV"
  "$DVENV/bin/pip" install -q --upgrade pip
  "$DVENV/bin/pip" install -q --require-hashes -r tests/deploy/requirements.txt
  cp tests/deploy/requirements.txt "$DVENV/.requirements"
fi

step "Deployment files: hadolint, docker-compose config, nginx -t, helm lint/render, kubernetes-validate, yamllint, promtool, k6 inspect"
"$DVENV/bin/python" -m pytest -q tests/deploy/test_static.py

step "Python venv for the KServe v2 conformance tests (hash-pinned)"
CVENV="$ROOT/.venv-conformance"
if [ ! -x "$CVENV/bin/python" ] || ! cmp -s tests/conformance/requirements.txt "$CVENV/.requirements"; then
  python3 -m venv "$CVENV"
  "$CVENV/bin/pip" install -q --upgrade pip
  "$CVENV/bin/pip" install -q --require-hashes -r tests/conformance/requirements.txt
  cp tests/conformance/requirements.txt "$CVENV/.requirements"
fi

step "Conformance: tritonclient (JSON and binary) and schemathesis against a live server"
INFERD_BIN="$ROOT/target/release/inferd" "$CVENV/bin/python" -m pytest -q -s tests/conformance

step "Loopback topology end to end: nginx + 3 workers + Redis + PostgreSQL, k6 through nginx, rolling restart"
INFERD_BIN="$ROOT/target/release/inferd" "$DVENV/bin/python" -m pytest -q tests/deploy/test_stack.py

echo
echo "all test steps passed"

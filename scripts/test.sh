#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Redis,
# PostgreSQL and nginx from Debian packages when missing; ONNX Runtime from its
# PyPI wheel; a Python venv for the model checks), then runs the model checks,
# formatting and lint gates, and every Rust test. The integration tests start
# their own Redis and PostgreSQL servers on free loopback ports and stop them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }

step "System packages (Redis, PostgreSQL, nginx) for the integration tests"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
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

echo
echo "all test steps passed"

#!/usr/bin/env bash
# Runs a command with libtorch available for the `torch` feature:
#
#   scripts/with-torch.sh cargo test --features torch --test torch
#   scripts/with-torch.sh cargo run --release --features torch -- serve
#
# Creates .venv-torch from scripts/torch-requirements.txt when it is missing or
# the requirements changed (pip's cache makes a rebuild quick), then sets what
# tch's build script and the binary need: LIBTORCH_USE_PYTORCH=1 with the venv
# first on PATH (torch-sys asks that Python where libtorch is), and
# LD_LIBRARY_PATH=<site-packages>/torch/lib for running. Everything comes from
# PyPI; nothing is downloaded from anywhere else.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${INFERD_TORCH_VENV:-$ROOT/.venv-torch}"
REQ="$ROOT/scripts/torch-requirements.txt"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/.requirements"; then
  echo "== creating $VENV (PyTorch from PyPI, ~2.8 GB with its CUDA libraries)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  "$VENV/bin/pip" install -q -r "$REQ" >&2
  cp "$REQ" "$VENV/.requirements"
fi
TORCH_DIR="$("$VENV/bin/python" -W ignore -c 'import pathlib, torch; print(pathlib.Path(torch.__file__).parent)')"
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"

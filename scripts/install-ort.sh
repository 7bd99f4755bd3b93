#!/usr/bin/env bash
# Installs libonnxruntime.so from the `onnxruntime` PyPI wheel into .ort/ (no
# binary downloads from anywhere else: PyPI is the registry this project can
# reach). Idempotent; prints the absolute library path on its last line.
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$ROOT/.ort"
LIB="$DIR/lib/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$LIB" ]; then
  mkdir -p "$DIR/wheel" "$DIR/lib"
  if ! ls "$DIR"/wheel/onnxruntime-"$ORT_VERSION"-*.whl >/dev/null 2>&1; then
    echo "installing ONNX Runtime $ORT_VERSION from the PyPI wheel into $DIR" >&2
    python3 -m pip download -q --no-deps --only-binary=:all: "onnxruntime==$ORT_VERSION" -d "$DIR/wheel" >&2
  fi
  python3 - "$DIR" "$ORT_VERSION" <<'PY'
import glob, sys, zipfile
d, v = sys.argv[1], sys.argv[2]
whl = glob.glob(f"{d}/wheel/onnxruntime-{v}-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    data = z.read(f"onnxruntime/capi/libonnxruntime.so.{v}")
open(f"{d}/lib/libonnxruntime.so.{v}", "wb").write(data)
PY
fi
echo "$LIB"

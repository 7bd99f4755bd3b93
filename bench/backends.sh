#!/usr/bin/env bash
# ONNX Runtime against libtorch on the same LSTM, one run: criterion in process
# (batch 1 and 32), then HTTP through one server serving both twins (cache and
# prediction log off, so every request runs its model): req/s and p99 at 1 and
# 64 connections for each. Prints a markdown table; raw reports in
# bench/out/backends/.
#
#   bench/backends.sh [DURATION]     (default 10s per HTTP run)
#
# Needs libtorch (scripts/with-torch.sh unpacks it) and ONNX Runtime (make ort).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DUR="${1:-10s}"
OUT="$ROOT/bench/out/backends"
mkdir -p "$OUT"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.ort/lib/libonnxruntime.so.1.31.1}"
WT=scripts/with-torch.sh

$WT cargo build --release --features torch --bin inferd >&2
cargo build --release --bin inferd-bench >&2

echo "== criterion (in process, one intra-op thread)" >&2
$WT cargo bench -p inferd-microbench --features torch --bench backends -- --noplot 2>&1 | tee "$OUT/criterion.txt" >&2

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$WT ./target/release/inferd serve --listen 127.0.0.1:$port --grpc-listen 127.0.0.1:0 --cache off --predlog off \
  --models-dir "$ROOT/models" >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null

for m in lstm-forecaster lstm-forecaster-torch; do
  for c in 1 64; do
    ./target/release/inferd-bench --url "http://127.0.0.1:$port" --model "$m" -c "$c" -d "$DUR" \
      --warmup 1s --quiet --json "$OUT/$m-c$c.json" >&2
  done
done

python3 - "$OUT" <<'PY'
import json, re, sys, pathlib
out = pathlib.Path(sys.argv[1])
crit = (out / "criterion.txt").read_text()
def est(runtime, batch):
    m = re.search(rf"lstm/{runtime}/{batch}\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", crit)
    return f"{m.group(1)} {m.group(2)}" if m else "?"
print("| | ONNX Runtime | libtorch |")
print("|---|---|---|")
for b in (1, 32):
    print(f"| criterion, batch {b} (median) | {est('onnxruntime', b)} | {est('libtorch', b)} |")
for c in (1, 64):
    row = []
    for m in ("lstm-forecaster", "lstm-forecaster-torch"):
        r = json.loads((out / f"{m}-c{c}.json").read_text())
        row.append(f"{r['rps']:,.0f} req/s, p50 {r['latency_ms']['p50']:.2f} ms, p99 {r['latency_ms']['p99']:.2f} ms")
    print(f"| HTTP, {c} connection{'s' if c > 1 else ''} | {row[0]} | {row[1]} |")
PY

#!/usr/bin/env bash
# What a shadow version costs the primary (issue 28): text-classifier 3 as the
# default, with and without version 2 as a shadow of every request
# (`fraction = 1.0`). The server is pinned to core 0, inferd-bench to core 1.
#   1. capacity: closed loop, 16 connections, no shadow;
#   2. half of it, open loop: the primary's p99 with and without the shadow;
#   3. full load, closed loop at 64 connections: refusals with and without it.
#
#   bench/shadow.sh [DURATION] [ROUNDS]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DUR="${1:-10s}"; ROUNDS="${2:-2}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(./scripts/install-ort.sh | tail -n 1)}"
cargo build --release --bin inferd --bin inferd-bench >&2
WORK="$(mktemp -d /tmp/inferd-shadow.XXXXXX)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for variant in plain shadow; do
  mkdir -p "$WORK/$variant/text-classifier"
  cp -r models/text-classifier/2 models/text-classifier/3 "$WORK/$variant/text-classifier/"
  echo "default_version = 3" > "$WORK/$variant/text-classifier/policy.toml"
done
printf '[shadow]\nversion = 2\nfraction = 1.0\n' >> "$WORK/shadow/text-classifier/policy.toml"

start() {
  taskset -c 0 target/release/inferd --listen 127.0.0.1:18790 --grpc-listen 127.0.0.1:0 \
    --models-dir "$WORK/$1" --cache off --predlog off >"$WORK/$1.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do curl -sf http://127.0.0.1:18790/readyz >/dev/null && return; sleep 0.2; done
  echo "the $1 server did not start" >&2; exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
bench() { # out, bench args...
  local out="$1"; shift
  taskset -c 1 target/release/inferd-bench --url http://127.0.0.1:18790 --model text-classifier \
    --models-dir models --model-version 3 --warmup 1s --quiet --json "$out" "$@" >/dev/null
}
row() { # label, json
  python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
l = r["latency_ms"]
print(f"| {sys.argv[1]} | {r['ok'] / r['duration_s']:,.0f} | {l['p50']:.2f} | {l['p99']:.2f} | "
      f"{sum(r['errors_by_status'].values())} |")
PY
}
shadows() {
  curl -s http://127.0.0.1:18790/metrics | awk '/^inferd_shadow_runs_total/ {sub(/.*outcome="/, ""); sub(/"}/, ""); printf "%s ", $0}'
}

start plain
bench "$WORK/cap.json" -c 16 -d "$DUR"
stop
CAP=$(python3 -c "import json; print(int(json.load(open('$WORK/cap.json'))['ok'] / json.load(open('$WORK/cap.json'))['duration_s']))")
HALF=$((CAP / 2))
echo "capacity (no shadow, 16 connections): $CAP req/s; half: $HALF req/s"
for round in $(seq 1 "$ROUNDS"); do
  echo
  echo "Round $round, $DUR per point"
  echo
  echo "| server, load | req/s | p50 ms | p99 ms | refused |"
  echo "|---|---|---|---|---|"
  for variant in plain shadow; do
    start "$variant"
    bench "$WORK/half.json" --rate "$HALF" -d "$DUR"
    row "$variant, open loop $HALF req/s" "$WORK/half.json"
    bench "$WORK/full.json" -c 64 -d "$DUR"
    row "$variant, closed loop 64 connections" "$WORK/full.json"
    [ "$variant" = shadow ] && echo && echo "shadow runs: $(shadows)" && echo
    stop
  done
done

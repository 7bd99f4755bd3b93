#!/usr/bin/env bash
# Before and after, back to back in one run: the release server of an earlier
# commit beside this tree's, pinned to core 0 with the load tool on core 1, on
# the LSTM's miss path (cache and prediction log off), closed loop at 1, 16, 64
# and 256 connections, with each server's CPU per request from /proc.
#
#   bench/ab.sh REV [DURATION] [ROUNDS]        builds REV in target/ab/REV first (minutes)
#   bench/ab.sh --before-bin PATH [DURATION] [ROUNDS]
#
# Another path: AB_SERVER_FLAGS replaces the servers' "--cache off --predlog off", e.g.
# AB_SERVER_FLAGS="--cache on --predlog jsonl" for the logged cache-hit path (each server
# logs to a file of its own under target/ab).
# Extra servers: AB_VARIANTS="INFERD_X=1 INFERD_Y=2,INFERD_Z=3" adds this tree's
# server once per word, with its variables (comma-separated) set. Prints a Markdown table per round; at each
# connection count the servers run back to back, so that a slow spell of a
# shared machine falls on all of them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [ "${1:-}" = --before-bin ]; then
  BEFORE="$2"; shift 2
else
  REV="${1:?usage: bench/ab.sh REV|--before-bin PATH [DURATION] [ROUNDS]}"; shift
  WT="$ROOT/target/ab/$REV"
  [ -d "$WT" ] || git worktree add -q --detach "$WT" "$REV"
  echo "== building $REV (release) in $WT" >&2
  (cd "$WT" && cargo build --release --bin inferd >&2)
  BEFORE="$WT/target/release/inferd"
fi
DUR="${1:-4s}"; ROUNDS="${2:-2}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(./scripts/install-ort.sh | tail -n 1)}"
cargo build --release --bin inferd --bin inferd-bench >&2
AFTER="$ROOT/target/release/inferd"
mkdir -p target/ab

names=(before after); bins=("$BEFORE" "$AFTER"); envs=("" "")
for v in ${AB_VARIANTS:-}; do names+=("after $v"); bins+=("$AFTER"); envs+=("${v//,/ }"); done
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
ports=()
for i in "${!bins[@]}"; do
  port=$((18700 + i)); ports+=("$port")
  # shellcheck disable=SC2086
  env ${envs[$i]} INFERD_PREDLOG_PATH="$ROOT/target/ab/predictions-$i.jsonl" \
    taskset -c 0 "${bins[$i]}" --listen "127.0.0.1:$port" --grpc-listen 127.0.0.1:0 \
    ${AB_SERVER_FLAGS:---cache off --predlog off} >/dev/null 2>&1 &
  PIDS+=($!)
done
for port in "${ports[@]}"; do
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
  echo
  echo "Round $round: LSTM, server flags ${AB_SERVER_FLAGS:---cache off --predlog off}, server on core 0, inferd-bench on core 1, $DUR per point"
  echo
  echo "| conns | server | req/s | p50 ms | p99 ms | CPU per request us |"
  echo "|---|---|---|---|---|---|"
  for c in 1 16 64 256; do
    for i in "${!bins[@]}"; do
      t0=$(ticks "${PIDS[$i]}")
      taskset -c 1 ./target/release/inferd-bench --url "http://127.0.0.1:${ports[$i]}" --model lstm-forecaster \
        -c "$c" -d "$DUR" --warmup 1s --quiet --json target/ab/last.json >/dev/null
      t1=$(ticks "${PIDS[$i]}")
      # The ticks cover the 1 s warm-up too, at the measured rate.
      python3 - "$c" "${names[$i]}" "$((t1 - t0))" "$HZ" <<'PY'
import json, sys
c, name, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = json.load(open("target/ab/last.json"))
rate = r["ok"] / r["duration_s"]
cpu = ticks / hz / (rate * (r["duration_s"] + 1)) * 1e6
print(f"| {c} | {name} | {rate:,.0f} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {cpu:.0f} |")
PY
    done
  done
done

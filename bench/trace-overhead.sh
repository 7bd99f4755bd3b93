#!/usr/bin/env bash
# What OpenTelemetry tracing costs: the same server and load with tracing off,
# at 1% (traceidratio 0.01) and at 100% (always_on), exporting over OTLP/gRPC
# to `otlp-sink` (a receiver that only counts spans, so the collector is never
# the limit). The settings take turns, ROUNDS times (a shared VM drifts by
# 10-20% from one run to the next), and each row is the median of its runs:
# req/s, p50/p99, spans the server exported and dropped per run.
#
#   bench/trace-overhead.sh [DURATION] [CONNECTIONS] [ROUNDS]   (default 8s, 64, 3)
#
# Needs the release binaries: cargo build --release --workspace --bins.
# Loopback only; every process it starts is stopped by PID.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DURATION="${1:-8s}"
CONNS="${2:-64}"
ROUNDS="${3:-3}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.ort/lib/libonnxruntime.so.1.31.1}"
BIN="$ROOT/target/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { grep -E "^$2(\{[^}]*\})? " <<<"$1" | awk '{s+=$2} END {printf "%d", s}'; }

SINK_PORT="$(free_port)"
"$BIN/otlp-sink" --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")

for round in $(seq "$ROUNDS"); do
  for model in lstm-forecaster text-classifier; do
    for setting in off 1% 100%; do
      port="$(free_port)"
      env_args=(INFERD_LISTEN="127.0.0.1:$port" INFERD_GRPC_LISTEN=off INFERD_CACHE=off INFERD_PREDLOG=off)
      otlp=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_EXPORTER_OTLP_PROTOCOL=grpc)
      case "$setting" in
        off) ;;
        1%) env_args+=("${otlp[@]}" OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.01) ;;
        100%) env_args+=("${otlp[@]}" OTEL_TRACES_SAMPLER=always_on) ;;
      esac
      env "${env_args[@]}" "$BIN/inferd" serve >"$WORK/inferd.log" 2>&1 &
      pid=$!
      PIDS+=("$pid")
      for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
        sleep 0.1
      done
      "$BIN/inferd-bench" --url "http://127.0.0.1:$port" --model "$model" -c "$CONNS" -d "$DURATION" \
        --warmup 2s --quiet --json "$WORK/report.json" >/dev/null
      sleep 1.5 # one more export interval's worth of spans
      m="$(curl -s "http://127.0.0.1:$port/metrics")"
      kill "$pid"
      wait "$pid" 2>/dev/null || true
      python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"model": sys.argv[2], "tracing": sys.argv[3], "rps": r["rps"],
                  "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
                  "exported": int(sys.argv[4]), "dropped": int(sys.argv[5])}))' \
        "$WORK/report.json" "$model" "$setting" "$(metric "$m" inferd_trace_spans_exported_total)" \
        "$(metric "$m" inferd_trace_spans_dropped_total)" >>"$WORK/runs.jsonl"
      echo "round $round: $(tail -n 1 "$WORK/runs.jsonl")" >&2
    done
  done
done

cat >"$WORK/summary.py" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print("| model | tracing | req/s | vs off | p50 ms | p99 ms | spans exported | dropped |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for model in ("lstm-forecaster", "text-classifier"):
    med = {}
    for setting in ("off", "1%", "100%"):
        rs = [r for r in runs if r["model"] == model and r["tracing"] == setting]
        med[setting] = {k: statistics.median(r[k] for r in rs)
                        for k in ("rps", "p50", "p99", "exported", "dropped")}
    for setting, m in med.items():
        delta = "" if setting == "off" else f"{(m['rps'] / med['off']['rps'] - 1) * 100:+.0f}%"
        print(f"| {model} | {setting} | {m['rps']:,.0f} | {delta} | {m['p50']:.2f} | {m['p99']:.2f} "
              f"| {m['exported']:,.0f} | {m['dropped']:,.0f} |")
PY
python3 "$WORK/summary.py" "$WORK/runs.jsonl"
kill "$SINK_PID"
wait "$SINK_PID" 2>/dev/null || true
echo
echo "otlp-sink: $(tail -n 1 "$WORK/sink.log")"

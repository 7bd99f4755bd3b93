#!/usr/bin/env bash
# Instructions per request on the LSTM path (or CALLGRIND_MODEL's), counted by callgrind: repeatable whatever else
# the machine is doing (a shared 2-core VM moves wall-clock figures by 10-20% between runs).
# The release server runs under valgrind with instrumentation off; after start-up and a
# 3 s warm-up it is switched on for 15 s of `inferd-bench -c 4` (golden windows, round
# robin: with the cache on, every request after the first pass is a hit), then dumped.
#
#   bench/callgrind.sh LABEL [SERVER FLAGS...]
#   bench/callgrind.sh hit-logged --predlog jsonl          # defaults: cache hits, JSON-lines log
#   bench/callgrind.sh hit --predlog off
#   bench/callgrind.sh miss --cache off --predlog off
#   CALLGRIND_MODEL=text-classifier bench/callgrind.sh text-miss --cache off --predlog off
#
# Prints LABEL, the requests counted and instructions per request; the profile is
# target/callgrind/LABEL.out.1 (`callgrind_annotate --inclusive=yes` reads it). Under
# valgrind, SHA-256 runs in software (valgrind hides the CPU's SHA extensions), so hashing
# weighs more here than on the machine itself. Needs valgrind (`apt-get install valgrind`).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
label="${1:?usage: bench/callgrind.sh LABEL [SERVER FLAGS...]}"; shift
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(./scripts/install-ort.sh | tail -n 1)}"
cargo build --release --bin inferd --bin inferd-bench >&2
out="$ROOT/target/callgrind"
mkdir -p "$out"
rm -f "$out/$label".out* "$out/$label.jsonl"
port="${CALLGRIND_PORT:-18790}"
INFERD_PREDLOG_PATH="$out/$label.jsonl" valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$out/$label.out" ./target/release/inferd --listen "127.0.0.1:$port" \
  --grpc-listen 127.0.0.1:0 "$@" >"$out/$label.server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
requests() {
  curl -s "http://127.0.0.1:$port/metrics" | awk '/^inferd_requests_total/ {s += $2} END {print s + 0}'
}
bench() { ./target/release/inferd-bench --url "http://127.0.0.1:$port" --model "${CALLGRIND_MODEL:-lstm-forecaster}" -c 4 "$@"; }
bench --duration 3s >/dev/null 2>&1
callgrind_control -i on "$pid" >/dev/null 2>&1
before=$(requests)
bench --duration 15s >"$out/$label.bench" 2>&1
after=$(requests)
callgrind_control -i off "$pid" >/dev/null 2>&1
callgrind_control -d "$pid" >/dev/null 2>&1
kill -INT "$pid"
wait "$pid" || true
trap - EXIT
n=$((after - before))
# No early exit in awk: callgrind_annotate would die of SIGPIPE, and pipefail end the script.
total=$(callgrind_annotate "$out/$label.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
echo "$label: $n requests, $((total / n)) instructions per request (target/callgrind/$label.out.1)"

#!/usr/bin/env bash
# Cache and prediction-log benchmarks (not tests). Starts its own Redis and
# PostgreSQL on free loopback ports in a temp dir, runs the release inferd in
# several configurations, and drives it with wrk at 64 connections.
#   bench/cache-load.sh [DURATION]   (default 10s; needs wrk, redis-server, postgresql)
set -euo pipefail
DUR="${1:-10s}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/release/inferd"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.ort/lib/libonnxruntime.so.1.31.1}"
TMP="$(mktemp -d /tmp/inferd-bench.XXXXXX)"; chmod 755 "$TMP"
PORT=18181; RPORT=18182; PGPORT=18183
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort | tail -n 1)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  redis-cli -p $RPORT shutdown nosave >/dev/null 2>&1 || true
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pg/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

redis-server --port $RPORT --bind 127.0.0.1 --daemonize yes --save '' --dir "$TMP" --pidfile "$TMP/redis.pid" >/dev/null
install -d -o postgres -g postgres "$TMP/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$TMP/pg/data" -A trust -U postgres --no-sync >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/log" -w start \
  -o "-p $PGPORT -k $TMP/pg -c listen_addresses=127.0.0.1 -c fsync=off" >/dev/null
DB="postgres://postgres@127.0.0.1:$PGPORT/postgres"

start() { # args: extra inferd flags
  "$BIN" --listen 127.0.0.1:$PORT --grpc-listen 127.0.0.1:0 --models-dir "$ROOT/models" "$@" >"$TMP/inferd.log" 2>&1 &
  SPID=$!; PIDS+=("$SPID")
  for _ in $(seq 1 200); do curl -sf localhost:$PORT/readyz >/dev/null && return; sleep 0.05; done
  echo "server did not start"; cat "$TMP/inferd.log"; exit 1
}
stop() { kill "$SPID"; wait "$SPID" 2>/dev/null || true; }
run() { # label, wrk args...
  local label="$1"; shift
  wrk -t2 -c64 -d"$DUR" --latency "$@" > "$TMP/wrk.txt"
  printf '| %s | %s | %s | %s | %s |\n' "$label" \
    "$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk.txt")" \
    "$(awk '$1=="50%" {print $2}' "$TMP/wrk.txt")" "$(awk '$1=="99%" {print $2}' "$TMP/wrk.txt")" \
    "$(awk '/Non-2xx/ {n=$5} END {print n+0}' "$TMP/wrk.txt")"
}
hit() { run "$1" -s "$ROOT/bench/post.lua" "http://127.0.0.1:$PORT/predict"; }
miss() { run "$1" -s "$ROOT/bench/miss.lua" "http://127.0.0.1:$PORT/predict"; }
export BODY="$ROOT/bench/hit.json"

echo "| workload (text-classifier, 64 connections) | req/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
start --predlog off --cache off;                         hit "no cache, same text";   stop
start --predlog off;                                      hit "in-process cache, hit"; miss "in-process cache, miss"; stop
start --predlog off --redis-url "redis://127.0.0.1:$RPORT/0"; hit "Redis cache, hit"; miss "Redis cache, miss"; stop
start --predlog jsonl --predlog-path "$TMP/p.jsonl";     hit "in-process hit, log to JSONL"; stop
start --database-url "$DB";                               hit "in-process hit, log to Postgres"; stop

# Writer throughput: 64 cached LSTM windows per request, so rows are offered far
# faster than a request rate; count what reaches Postgres.
python3 - "$ROOT" "$TMP/lstm64.json" <<'PY'
import json, sys
g = json.load(open(f"{sys.argv[1]}/models/lstm-forecaster/1/golden.json"))["cases"]
json.dump({"model": "lstm-forecaster", "instances": [g[i % 32]["input"] for i in range(64)]}, open(sys.argv[2], "w"))
PY
start --database-url "$DB" --predlog-spill-path "$TMP/spill.jsonl"
q() { runuser -u postgres -- psql -h 127.0.0.1 -p $PGPORT -U postgres -Atc "$1"; }
before=$(q "SELECT count(*) FROM predictions")
t0=$(date +%s.%N)
BODY="$TMP/lstm64.json" wrk -t2 -c16 -d"$DUR" -s "$ROOT/bench/post.lua" "http://127.0.0.1:$PORT/predict" > "$TMP/wrk.txt"
t_load=$(date +%s.%N)
reqs=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
want=$((before + reqs * 64))
# The server keeps running: wait until every row is in (spills replayed).
last=-1; same=0
for _ in $(seq 1 600); do
  now=$(q "SELECT count(*) FROM predictions")
  [ "$now" -ge "$want" ] && break
  if [ "$now" = "$last" ]; then same=$((same + 1)); [ $same -ge 10 ] && break; else same=0; fi
  last=$now; sleep 0.5
done
t1=$(date +%s.%N)
after=$(q "SELECT count(*) FROM predictions")
spilled=$(curl -s localhost:$PORT/metrics | awk '/^inferd_predlog_spilled_total/ {print $2}')
dropped=$(curl -s localhost:$PORT/metrics | awk '/^inferd_predlog_dropped_total/ {n+=$2} END {print n+0}')
stop
python3 -c "
rows=$after-$before; secs=$t1-$t0; load=$t_load-$t0
print(f'\nlog writer: {$reqs} requests x 64 instances = {$reqs*64:,} rows offered in {load:.1f} s ({$reqs*64/load:,.0f} rows/s offered);')
print(f'{rows:,} rows in Postgres after {secs:.1f} s: {rows/secs:,.0f} rows/s sustained; {$spilled:,.0f} went through the spill file; {$dropped:,.0f} dropped (channel full)')"

#!/usr/bin/env bash
# Load benchmark of a running inferd with wrk: both models, single-instance
# requests, closed loop at 1, 16, 64 and 256 connections.
#   bench/http-load.sh [URL] [DURATION]   (default http://127.0.0.1:8080, 10s)
# Prints one Markdown table row per run. Needs wrk (apt-get install wrk).
set -euo pipefail
URL="${1:-http://127.0.0.1:8080}"
DUR="${2:-10s}"
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/out"
python3 "$HERE/payloads.py" "$OUT" >&2
echo "| model | connections | req/s | p50 | p90 | p99 | non-2xx |"
echo "|---|---|---|---|---|---|---|"
for model in text lstm; do
  for c in 1 16 64 256; do
    t=$(( c < 2 ? 1 : 2 ))
    log="$OUT/wrk-$model-$c.txt"
    BODY="$OUT/$model.json" wrk -t"$t" -c"$c" -d"$DUR" --latency -s "$HERE/post.lua" "$URL/predict" > "$log"
    rps=$(awk '/Requests\/sec/ {print $2}' "$log")
    p50=$(awk '$1=="50%" {print $2}' "$log")
    p90=$(awk '$1=="90%" {print $2}' "$log")
    p99=$(awk '$1=="99%" {print $2}' "$log")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$log")
    name=$([ "$model" = text ] && echo text-classifier || echo lstm-forecaster)
    echo "| $name | $c | $rps | $p50 | $p90 | $p99 | ${non2xx:-0} |"
  done
done

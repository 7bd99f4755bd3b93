#!/usr/bin/env bash
# Side-by-side comparison in one run on one machine, from a fresh clone:
#   raw in-process ONNX Runtime (the ceiling), inferd direct, inferd behind nginx,
#   and the Python peer (FastAPI + uvicorn + onnxruntime, bench/peers/), for both
#   models at 1, 16, 64, 100 and 256 connections, single-instance requests.
#   Then the request path against its HTTP ceilings (bench/micro/examples/ceiling.rs: a bare axum
#   route parsing the same JSON into values, and a typed one), for the LSTM at 1, 16, 64 and 256
#   connections, with the miss path's server CPU per request: inferd
#   with cache and log off (every request runs the model) and with its defaults (every
#   request a cache hit, JSON-lines log), as shares of the ceiling, measured back to back.
#   Then the text classifier pinned (server on core 0, load generator on core 1, one
#   inference slot, --max-queue 64, cache and log off): its miss path against raw ONNX
#   Runtime on one thread of the same core, and overload at 10x and 64x the connections
#   that saturate it, with the runtime's workers at normal priority and at nice 10
#   (INFERD_REACTOR_NICE).
#   bench/compare.sh [DURATION]   (default 5s per point; output also in bench/out/compare.md)
set -euo pipefail
DUR="${1:-5s}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/bench/out"; mkdir -p "$OUT"
TMP="$(mktemp -d /tmp/inferd-compare.XXXXXX)"
P_INFERD=18301; P_NGINX=18302; P_PEER=18303; P_CEIL=18304; P_DEFAULTS=18305; P_PIN=18306; P_TYPED=18307
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
  sleep 0.5; rm -rf "$TMP"
}
trap cleanup EXIT

command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || {
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null
}
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
export ORT_DYLIB_PATH="$(./scripts/install-ort.sh | tail -n 1)"
echo "== building (release)" >&2
cargo build --release --bin inferd >&2
cargo build --release --example raw_ort --example ceiling >&2
cargo build --release --bin inferd-bench >&2
if [ ! -x .venv-peer/bin/uvicorn ] || ! cmp -s bench/peers/requirements.txt .venv-peer/.requirements; then
  echo "== installing the Python peer's venv" >&2
  python3 -m venv .venv-peer
  .venv-peer/bin/pip install -q --find-links .ort/wheel -r bench/peers/requirements.txt
  cp bench/peers/requirements.txt .venv-peer/.requirements
fi

wait_up() { for _ in $(seq 1 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "not up: $1" >&2; exit 1; }
./target/release/inferd --listen 127.0.0.1:$P_INFERD --grpc-listen 127.0.0.1:0 --cache off --predlog off >"$TMP/inferd.log" 2>&1 &
PIDS+=($!)
MISS_PID=$!
cat > "$TMP/nginx.conf" <<NGX
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy;
  fastcgi_temp_path $TMP/fcgi; uwsgi_temp_path $TMP/uwsgi; scgi_temp_path $TMP/scgi;
  upstream inferd { least_conn; server 127.0.0.1:$P_INFERD; keepalive 256; }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / {
      proxy_pass http://inferd;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGX
"$NGINX" -c "$TMP/nginx.conf" -p "$TMP/" 2>/dev/null
./target/release/examples/ceiling 127.0.0.1:$P_CEIL >"$TMP/ceiling.log" 2>&1 &
PIDS+=($!)
./target/release/examples/ceiling 127.0.0.1:$P_TYPED typed >"$TMP/typed.log" 2>&1 &
PIDS+=($!)
./target/release/inferd --listen 127.0.0.1:$P_DEFAULTS --grpc-listen 127.0.0.1:0 --predlog jsonl --predlog-path "$TMP/predictions.jsonl" \
  >"$TMP/inferd-defaults.log" 2>&1 &
PIDS+=($!)
.venv-peer/bin/uvicorn app:app --app-dir bench/peers --host 127.0.0.1 --port $P_PEER --workers 2 --log-level warning >"$TMP/peer.log" 2>&1 &
PIDS+=($!)
wait_up http://127.0.0.1:$P_CEIL/readyz; wait_up http://127.0.0.1:$P_TYPED/readyz; wait_up http://127.0.0.1:$P_DEFAULTS/readyz
wait_up http://127.0.0.1:$P_INFERD/readyz; wait_up http://127.0.0.1:$P_NGINX/readyz; wait_up http://127.0.0.1:$P_PEER/healthz

echo "== raw ONNX Runtime ceiling (2 threads = max_concurrency)" >&2
secs="${DUR%s}"
declare -A RAW
for m in text-classifier lstm-forecaster; do
  RAW[$m]=$(./target/release/examples/raw_ort "$m" 2 1 "$secs" | awk '{print $(NF-1)}')
  mb=$(awk -F' = ' '/max_batch_size/ {print $2}' models/$m/1/model.toml)
  RAW[$m-batch]=$(./target/release/examples/raw_ort "$m" 2 "$mb" "$secs" | awk '{print $(NF-1)}')
  echo "$m: ${RAW[$m]} instances/s at batch 1, ${RAW[$m-batch]} at batch $mb" >&2
done

for m in text-classifier lstm-forecaster; do
  for c in 1 16 64 100 256; do
    for t in inferd:$P_INFERD nginx:$P_NGINX peer:$P_PEER; do
      name=${t%%:*}; port=${t##*:}
      echo "== $m c=$c $name" >&2
      ./target/release/inferd-bench --url http://127.0.0.1:$port --model "$m" -c "$c" -d "$DUR" --warmup 1s --quiet \
        --json "$TMP/$name-$m-$c.json" >/dev/null || true
    done
  done
done

# The server's CPU time (user + system, clock ticks) from /proc: the miss
# path's CPU per request, the load generator's not counted.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for c in 1 16 64 256; do
  for t in ceiling:$P_CEIL typed:$P_TYPED miss:$P_INFERD defaults:$P_DEFAULTS; do
    name=${t%%:*}; port=${t##*:}
    echo "== lstm-forecaster c=$c $name" >&2
    before=$(cpu_ticks "$MISS_PID")
    ./target/release/inferd-bench --url http://127.0.0.1:$port --model lstm-forecaster -c "$c" -d "$DUR" --warmup 1s --quiet \
      --json "$TMP/$name-lstm-forecaster-$c.json" >/dev/null || true
    [ "$name" = miss ] && echo "$(( $(cpu_ticks "$MISS_PID") - before )) $(getconf CLK_TCK)" >"$TMP/cpu-miss-$c"
  done
done

# Pinned runs: stop the unpinned servers first so core 0 holds only the server.
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
PIDS=()
[ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null && rm -f "$TMP/nginx.pid"
sleep 1
echo "== raw ONNX Runtime, text-classifier, 1 thread pinned to core 0" >&2
RAW_PIN=$(taskset -c 0 ./target/release/examples/raw_ort text-classifier 1 1 "$secs" | awk '{print $(NF-1)}')
for nice in 0 10; do
  taskset -c 0 ./target/release/inferd --listen 127.0.0.1:$P_PIN --grpc-listen 127.0.0.1:0 --cache off --predlog off \
    --max-concurrency 1 --max-queue 64 --reactor-nice $nice >"$TMP/inferd-pin-$nice.log" 2>&1 &
  pin=$!
  wait_up http://127.0.0.1:$P_PIN/readyz
  for c in 1 8 16 160 1024; do
    echo "== pinned text-classifier nice=$nice c=$c" >&2
    taskset -c 1 ./target/release/inferd-bench --url http://127.0.0.1:$P_PIN --model text-classifier -c "$c" -d "$DUR" \
      --warmup 1s --quiet --json "$TMP/pin$nice-text-classifier-$c.json" >/dev/null || true
  done
  kill "$pin"; wait "$pin" 2>/dev/null || true
done

python3 - "$TMP" "${RAW[text-classifier]}" "${RAW[text-classifier-batch]}" "${RAW[lstm-forecaster]}" "${RAW[lstm-forecaster-batch]}" "$RAW_PIN" <<'PY' | tee "$OUT/compare.md"
import json, os, sys, platform
tmp = sys.argv[1]
raw = {"text-classifier": (float(sys.argv[2]), float(sys.argv[3])), "lstm-forecaster": (float(sys.argv[4]), float(sys.argv[5]))}
def load(name, m, c):
    p = f"{tmp}/{name}-{m}-{c}.json"
    return json.load(open(p)) if os.path.exists(p) else None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"Machine: {os.cpu_count()} vCPUs ({cpu}); load generator on the same cores.\n")
for m in raw:
    r1, rb = raw[m]
    print(f"### {m}\n\nRaw ONNX Runtime ceiling, 2 threads: {r1:,.0f} instances/s at batch 1, {rb:,.0f} at the model's max batch.\n")
    print("| conns | inferd req/s | p99 ms | behind nginx req/s | p99 ms | Python peer req/s | p99 ms | inferd / peer | inferd / raw (batch 1) | errors (inferd/nginx/peer) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in (1, 16, 64, 100, 256):
        a, n, p = load("inferd", m, c), load("nginx", m, c), load("peer", m, c)
        def f(x, k):
            return "-" if x is None else (f"{x['rps']:,.0f}" if k == "rps" else f"{x['latency_ms']['p99']:.2f}")
        ratio = f"{a['rps'] / p['rps']:.1f}x" if a and p and p["rps"] > 0 else "-"
        ceil = f"{100 * a['rps'] / r1:.0f}%" if a else "-"
        errs = "/".join(str(x["requests"] - x["ok"]) if x else "-" for x in (a, n, p))
        print(f"| {c} | {f(a,'rps')} | {f(a,'p99')} | {f(n,'rps')} | {f(n,'p99')} | {f(p,'rps')} | {f(p,'p99')} | {ratio} | {ceil} | {errs} |")
    print()
m = "lstm-forecaster"
print(f"### The request path against the HTTP ceilings ({m})\n")
print("Two ceilings from bench/micro/examples/ceiling.rs: `values` parses the same body into JSON values and checks each "
      "instance (issue 14's); `typed` is a bare axum route taking `Json<{model, instances: Vec<Vec<Vec<f32>>>}>` and "
      "answering `Json<{model, predictions: Vec<f32>}>` (issue 27's). All four servers are measured back to back at each "
      "connection count; shares are of the typed ceiling.\n")
print("| conns | values ceiling req/s | typed ceiling req/s | p50 ms | p99 ms | miss path (cache, log off) req/s | p50 ms | p99 ms | share | defaults (cache hits, JSONL log) req/s | p99 ms | share |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
def rate(x):
    return x["ok"] / x["duration_s"]
def pct(v):
    return "-" if v is None else f"{100 * v:.0f}%"
checks = []
for c in (1, 16, 64, 256):
    ce, ty, a, d = (load(n, m, c) for n in ("ceiling", "typed", "miss", "defaults"))
    def g(x, k):
        return "-" if x is None else (f"{rate(x):,.0f}" if k == "rps" else f"{x['latency_ms'][k]:.2f}")
    def share(x):
        return rate(x) / rate(ty) if x and ty and ty["ok"] else None
    print(f"| {c} | {g(ce,'rps')} | {g(ty,'rps')} | {g(ty,'p50')} | {g(ty,'p99')} | {g(a,'rps')} | {g(a,'p50')} | {g(a,'p99')} | "
          f"{pct(share(a))} | {g(d,'rps')} | {g(d,'p99')} | {pct(share(d))} |")
    if c == 1:
        p50r = a["latency_ms"]["p50"] / ty["latency_ms"]["p50"] if a and ty else None
        checks.append(("LSTM miss path p50 at 1 connection <= 2x the typed ceiling's", p50r, lambda v: v <= 2.0,
                       lambda v: f"{v:.2f}x"))
        continue
    checks.append((f"LSTM miss path >= 50% of the typed ceiling at {c} connections", share(a), lambda v: v >= 0.50, pct))
    checks.append((f"cache-hit path (JSONL log) >= 65% of the typed ceiling at {c} connections", share(d),
                   lambda v: v >= 0.65, pct))
cpu = os.path.join(tmp, "cpu-miss-64")
a = load("miss", m, 64)
if os.path.exists(cpu) and a:
    ticks, hz = (int(v) for v in open(cpu).read().split())
    # The ticks cover the 1 s warm-up too, at the measured rate.
    sent = rate(a) * (a["duration_s"] + 1.0)
    per = ticks / hz / sent * 1e6
    print(f"\nServer CPU per LSTM miss-path request at 64 connections: {per:.1f} us "
          f"({ticks} ticks of 1/{hz} s over about {sent:,.0f} requests, warm-up included; /proc/PID/stat).")
    checks.append(("CPU per LSTM miss-path request (64 connections) <= 30 us", per, lambda v: v <= 30, lambda v: f"{v:.1f} us"))
a, p = load("inferd", m, 64), load("peer", m, 64)
checks.append(("LSTM >= 20x the Python peer at 64 connections", a["rps"] / p["rps"] if a and p and p["rps"] else None,
               lambda v: v >= 20, lambda v: f"{v:.1f}x"))
print()

raw_pin = float(sys.argv[6])
t = "text-classifier"
print(f"### {t} pinned: server on core 0, load generator on core 1\n")
print("One inference slot, `--max-queue 64`, cache and log off. Raw ONNX Runtime on one thread of core 0, "
      f"same texts, batch 1: {raw_pin:,.0f} instances/s. Capacity is the 2xx rate at 16 connections; "
      "1 connection gives the unloaded p99.\n")
print("| reactor nice | conns | 2xx/s | of capacity | of raw ORT | 200 p99 ms | 429/s | 429 p99 ms | 5xx | 2xx p99 less queue wait ms |")
print("|---|---|---|---|---|---|---|---|---|---|")
for nice in (0, 10):
    cap = load(f"pin{nice}", t, 16)
    unl = load(f"pin{nice}", t, 1)
    for c in (1, 8, 16, 160, 1024):
        x = load(f"pin{nice}", t, c)
        if x is None:
            print(f"| {nice} | {c} | - | - | - | - | - | - | - | - |")
            continue
        bs = x["latency_ms_by_status"]
        refused = x["errors_by_status"].get("429", 0) / x["duration_s"]
        five = sum(v for k, v in x["errors_by_status"].items() if not k.startswith("4"))
        lq = x.get("admitted_ms_less_queue")
        print(f"| {nice} | {c} | {rate(x):,.0f} | {100 * rate(x) / rate(cap):.0f}% | {100 * rate(x) / raw_pin:.0f}% | "
              f"{bs.get('200', {}).get('p99', float('nan')):.2f} | {refused:,.0f} | "
              f"{bs['429']['p99'] if '429' in bs else float('nan'):.2f} | {five} | {lq['p99'] if lq else float('nan'):.2f} |")
        if c in (160, 1024) and cap and unl:
            k = "10x" if c == 160 else "64x"
            need = 0.90 if c == 160 else 0.75
            checks.append((f"nice {nice}: 2xx/s at {k} the saturating connections >= {need:.0%} of capacity",
                           rate(x) / rate(cap), lambda v, n=need: v >= n, pct))
            if "429" in bs:
                checks.append((f"nice {nice}: refusals' p99 at {k} <= 5 ms", bs["429"]["p99"], lambda v: v <= 5,
                               lambda v: f"{v:.1f} ms"))
            checks.append((f"nice {nice}: no 5xx or transport errors at {k}", float(five), lambda v: v == 0, lambda v: f"{v:.0f}"))
            if lq:
                ratio = lq["p99"] / unl["latency_ms"]["p99"]
                checks.append((f"nice {nice}: admitted p99 less queue wait <= 2x the unloaded p99 at {k}", ratio,
                               lambda v: v <= 2, lambda v: f"{v:.2f}x"))
    if cap:
        checks.append((f"nice {nice}: text miss path (16 conns) >= 85% of raw ORT on one thread", rate(cap) / raw_pin,
                       lambda v: v >= 0.85, pct))
    print()
print("### Targets\n")
print("| target | measured | met |")
print("|---|---|---|")
for name, v, ok, fmt in checks:
    print(f"| {name} | {'-' if v is None else fmt(v)} | {'-' if v is None else ('yes' if ok(v) else 'no')} |")
print()
PY

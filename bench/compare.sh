#!/usr/bin/env bash
# Side-by-side comparison in one run on one machine, from a fresh clone:
#   raw in-process ONNX Runtime (the ceiling), inferd direct, inferd behind nginx,
#   and the Python peer (FastAPI + uvicorn + onnxruntime, bench/peers/), for both
#   models at 1, 16, 64, 100 and 256 connections, single-instance requests.
#   Then the request path against its HTTP ceiling (examples/ceiling.rs: a bare axum
#   route parsing the same JSON), for the LSTM at 16, 64 and 256 connections: inferd
#   with cache and log off (every request runs the model) and with its defaults (every
#   request a cache hit, JSON-lines log), as shares of the ceiling.
#   bench/compare.sh [DURATION]   (default 5s per point; output also in bench/out/compare.md)
set -euo pipefail
DUR="${1:-5s}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/bench/out"; mkdir -p "$OUT"
TMP="$(mktemp -d /tmp/inferd-compare.XXXXXX)"
P_INFERD=18301; P_NGINX=18302; P_PEER=18303; P_CEIL=18304; P_DEFAULTS=18305
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
cargo build --release --bin inferd --example raw_ort --example ceiling >&2
cargo build --release -p inferd-bench >&2
if [ ! -x .venv-peer/bin/uvicorn ] || ! cmp -s bench/peers/requirements.txt .venv-peer/.requirements; then
  echo "== installing the Python peer's venv" >&2
  python3 -m venv .venv-peer
  .venv-peer/bin/pip install -q --find-links .ort/wheel -r bench/peers/requirements.txt
  cp bench/peers/requirements.txt .venv-peer/.requirements
fi

wait_up() { for _ in $(seq 1 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "not up: $1" >&2; exit 1; }
./target/release/inferd --listen 127.0.0.1:$P_INFERD --cache off --predlog off >"$TMP/inferd.log" 2>&1 &
PIDS+=($!)
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
./target/release/inferd --listen 127.0.0.1:$P_DEFAULTS --predlog jsonl --predlog-path "$TMP/predictions.jsonl" \
  >"$TMP/inferd-defaults.log" 2>&1 &
PIDS+=($!)
.venv-peer/bin/uvicorn app:app --app-dir bench/peers --host 127.0.0.1 --port $P_PEER --workers 2 --log-level warning >"$TMP/peer.log" 2>&1 &
PIDS+=($!)
wait_up http://127.0.0.1:$P_CEIL/readyz; wait_up http://127.0.0.1:$P_DEFAULTS/readyz
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

for c in 16 64 256; do
  for t in ceiling:$P_CEIL defaults:$P_DEFAULTS; do
    name=${t%%:*}; port=${t##*:}
    echo "== lstm-forecaster c=$c $name" >&2
    ./target/release/inferd-bench --url http://127.0.0.1:$port --model lstm-forecaster -c "$c" -d "$DUR" --warmup 1s --quiet \
      --json "$TMP/$name-lstm-forecaster-$c.json" >/dev/null || true
  done
done

python3 - "$TMP" "${RAW[text-classifier]}" "${RAW[text-classifier-batch]}" "${RAW[lstm-forecaster]}" "${RAW[lstm-forecaster-batch]}" <<'PY' | tee "$OUT/compare.md"
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
print(f"### The request path against the HTTP ceiling ({m})\n")
print("The ceiling is examples/ceiling.rs: a bare axum route that parses the same body and answers the same shape.\n")
print("| conns | ceiling req/s | p99 ms | miss path (cache, log off) req/s | p99 ms | share | defaults (cache hits, JSONL log) req/s | p99 ms | share |")
print("|---|---|---|---|---|---|---|---|---|")
for c in (16, 64, 256):
    ce, a, d = load("ceiling", m, c), load("inferd", m, c), load("defaults", m, c)
    def g(x, k):
        return "-" if x is None else (f"{x['ok'] / x['duration_s']:,.0f}" if k == "rps" else f"{x['latency_ms']['p99']:.2f}")
    def share(x):
        return f"{100 * x['ok'] / ce['ok']:.0f}%" if x and ce and ce["ok"] else "-"
    print(f"| {c} | {g(ce,'rps')} | {g(ce,'p99')} | {g(a,'rps')} | {g(a,'p99')} | {share(a)} | {g(d,'rps')} | {g(d,'p99')} | {share(d)} |")
print()
PY

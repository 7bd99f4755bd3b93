#!/usr/bin/env bash
# The docker-compose topology as plain processes on loopback: nginx (the
# project's nginx/nginx.conf, least_conn) in front of N inferd workers, sharing
# one Redis (cache) and one PostgreSQL (prediction log). For machines without a
# Docker engine, and for the end-to-end test.
#
#   scripts/stack.sh up                 start everything; prints the URLs
#   scripts/stack.sh status             which processes are alive
#   scripts/stack.sh restart-worker I   SIGTERM worker I, wait for its exit, start it again
#   scripts/stack.sh down               stop everything this script started (by PID)
#   scripts/stack.sh nginx-conf OUT PORT W1 [W2...]
#                                       write the loopback copy of nginx.conf
#                                       (listening on PORT, workers on W1...)
#
# Environment: STACK_DIR (state, logs, pids; default .stack), WORKERS (3),
# INFERD_BIN (default target/release/inferd), ORT_DYLIB_PATH, and any INFERD_*
# setting, passed on to every worker. Ports are picked free at `up` and written to
# $STACK_DIR/stack.env.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
WORKERS="${WORKERS:-3}"
INFERD_BIN="${INFERD_BIN:-$ROOT/target/release/inferd}"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# PostgreSQL refuses to run as root: run its tools as `postgres` then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The loopback copy of nginx/nginx.conf: the upstream server line becomes one line
# per worker, the listen address moves to loopback, and temp files go under the
# prefix. Everything else (least_conn, keepalive, retries, timeouts, limits,
# logs) is the file docker compose runs.
nginx_conf() {
  local out="$1"; shift
  local listen="$1"; shift
  python3 - "$ROOT/nginx/nginx.conf" "$out" "$listen" "$STACK_DIR/nginx" "$@" <<'PY'
import re, sys
src, out, listen, prefix, *ports = sys.argv[1:]
conf = open(src).read()
line = re.search(r"^(\s*)server inferd:8080( [^;]*);$", conf, re.M)
assert line, "nginx.conf: no `server inferd:8080 ...;` line in the upstream"
indent, params = line.group(1), line.group(2)
conf = conf.replace(line.group(0), "\n".join(f"{indent}server 127.0.0.1:{p}{params};" for p in ports))
conf, n = re.subn(r"listen 8080 ", f"listen 127.0.0.1:{listen} ", conf)
assert n == 1, "nginx.conf: expected one `listen 8080` line"
temp = "".join(f"    {k}_temp_path {prefix}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
conf = conf.replace("http {\n", "http {\n" + temp, 1)
open(out, "w").write(conf)
PY
}

start_worker() {
  local i="$1"
  # shellcheck disable=SC1091
  . "$STACK_DIR/stack.env"
  local port_var="WORKER_${i}_PORT"
  local port="${!port_var}"
  mkdir -p "$STACK_DIR/worker-$i"
  INFERD_LISTEN="127.0.0.1:$port" \
  INFERD_REDIS_URL="$REDIS_URL" \
  INFERD_DATABASE_URL="$DATABASE_URL" \
  INFERD_PREDLOG="${INFERD_PREDLOG:-postgres}" \
  INFERD_PREDLOG_SPILL_PATH="$STACK_DIR/worker-$i/spill.jsonl" \
  INFERD_DRAIN_DELAY_MS="${INFERD_DRAIN_DELAY_MS:-500}" \
  INFERD_MODELS_DIR="${INFERD_MODELS_DIR:-$ROOT/models}" \
    nohup "$INFERD_BIN" serve >>"$STACK_DIR/worker-$i.log" 2>&1 &
  echo $! >"$STACK_DIR/worker-$i.pid"
}

wait_ready() {
  local url="$1" deadline=$((SECONDS + 60))
  until "$INFERD_BIN" healthcheck --url "$url" --timeout-ms 1000 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$url not ready after 60 s"
    sleep 0.2
  done
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid_file() {
  local f="$1" sig="${2:-TERM}"
  if alive "$f"; then
    local pid
    pid="$(cat "$f")"
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$f"
}

up() {
  [ -x "$INFERD_BIN" ] || die "no inferd binary at $INFERD_BIN (cargo build --release)"
  command -v redis-server >/dev/null || die "redis-server missing (apt-get install redis-server)"
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || die "nginx missing (apt-get install nginx)"
  [ -n "$PG_BIN" ] || die "PostgreSQL missing (apt-get install postgresql)"
  [ ! -f "$STACK_DIR/stack.env" ] || die "$STACK_DIR already holds a stack: scripts/stack.sh down first"
  export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$("$ROOT/scripts/install-ort.sh" | tail -n 1)}"
  mkdir -p "$STACK_DIR/nginx"
  chmod 755 "$STACK_DIR"

  read -r -a ports <<<"$(free_ports $((WORKERS + 3)))"
  local nginx_port="${ports[0]}" redis_port="${ports[1]}" pg_port="${ports[2]}"
  {
    echo "STACK_DIR=$STACK_DIR"
    echo "WORKERS=$WORKERS"
    echo "NGINX_URL=http://127.0.0.1:$nginx_port"
    echo "REDIS_PORT=$redis_port"
    echo "REDIS_URL=redis://127.0.0.1:$redis_port/0"
    echo "PG_PORT=$pg_port"
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/postgres"
    for i in $(seq 1 "$WORKERS"); do
      echo "WORKER_${i}_PORT=${ports[$((i + 2))]}"
      echo "WORKER_${i}_URL=http://127.0.0.1:${ports[$((i + 2))]}"
    done
  } >"$STACK_DIR/stack.env"

  log "redis on :$redis_port"
  redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --save '' \
    --appendonly no --dir "$STACK_DIR" --pidfile "$STACK_DIR/redis.pid" \
    --logfile "$STACK_DIR/redis.log"

  log "postgresql on :$pg_port"
  local pg="$STACK_DIR/pg"
  install -d -m 700 "$pg"
  [ "$(id -u)" != 0 ] || chown postgres:postgres "$pg"
  as_pg "$PG_BIN/initdb" -D "$pg/data" -A trust -U postgres --no-sync >"$STACK_DIR/initdb.log"
  as_pg "$PG_BIN/pg_ctl" -D "$pg/data" -l "$pg/log" -w start \
    -o "-p $pg_port -k $pg -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null
  head -n 1 "$pg/data/postmaster.pid" >"$STACK_DIR/postgres.pid"

  for i in $(seq 1 "$WORKERS"); do
    start_worker "$i"
  done
  # shellcheck disable=SC1091
  . "$STACK_DIR/stack.env"
  local worker_ports=()
  for i in $(seq 1 "$WORKERS"); do
    local url_var="WORKER_${i}_URL" port_var="WORKER_${i}_PORT"
    wait_ready "${!url_var}/readyz"
    worker_ports+=("${!port_var}")
    log "worker $i ready on :${!port_var} (pid $(cat "$STACK_DIR/worker-$i.pid"))"
  done

  nginx_conf "$STACK_DIR/nginx.conf" "$nginx_port" "${worker_ports[@]}"
  local nginx_bin
  nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
  "$nginx_bin" -c "$STACK_DIR/nginx.conf" -p "$STACK_DIR/nginx/" -g "pid $STACK_DIR/nginx.pid;" \
    >>"$STACK_DIR/nginx-access.log" 2>>"$STACK_DIR/nginx-error.log"
  wait_ready "$NGINX_URL/readyz"
  log "nginx on :$nginx_port (least_conn over ${WORKERS} workers)"
  echo "$NGINX_URL"
}

down() {
  [ -f "$STACK_DIR/stack.env" ] || { log "no stack in $STACK_DIR"; return 0; }
  # shellcheck disable=SC1091
  . "$STACK_DIR/stack.env"
  stop_pid_file "$STACK_DIR/nginx.pid" QUIT
  for i in $(seq 1 "$WORKERS"); do stop_pid_file "$STACK_DIR/worker-$i.pid" TERM; done
  if alive "$STACK_DIR/redis.pid"; then
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || stop_pid_file "$STACK_DIR/redis.pid"
  fi
  if alive "$STACK_DIR/postgres.pid"; then
    as_pg "$PG_BIN/pg_ctl" -D "$STACK_DIR/pg/data" -m fast -w stop >/dev/null || true
  fi
  rm -f "$STACK_DIR/stack.env" "$STACK_DIR/postgres.pid" "$STACK_DIR/redis.pid"
  log "stopped"
}

status() {
  for f in "$STACK_DIR"/*.pid; do
    [ -e "$f" ] || continue
    if alive "$f"; then echo "$(basename "$f" .pid) up (pid $(cat "$f"))"; else echo "$(basename "$f" .pid) down"; fi
  done
}

restart_worker() {
  local i="$1"
  [ -f "$STACK_DIR/worker-$i.pid" ] || die "no worker $i"
  export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$("$ROOT/scripts/install-ort.sh" | tail -n 1)}"
  local pid
  pid="$(cat "$STACK_DIR/worker-$i.pid")"
  log "worker $i: SIGTERM to $pid"
  stop_pid_file "$STACK_DIR/worker-$i.pid" TERM
  ! kill -0 "$pid" 2>/dev/null || die "worker $i (pid $pid) did not exit"
  start_worker "$i"
  # shellcheck disable=SC1091
  . "$STACK_DIR/stack.env"
  local url_var="WORKER_${i}_URL"
  wait_ready "${!url_var}/readyz"
  log "worker $i: back (pid $(cat "$STACK_DIR/worker-$i.pid"))"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  restart-worker) restart_worker "${2:?worker number}" ;;
  nginx-conf) shift; out="$1"; shift; nginx_conf "$out" "$@" ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The docker-compose topology as plain processes on loopback: nginx (the
# project's nginx/nginx.conf, least_conn) in front of N inferd workers, sharing
# one Redis (cache) and one PostgreSQL (prediction log). For machines without a
# Docker engine, and for the end-to-end tests.
#
#   scripts/stack.sh up [--reset]       start everything; prints nginx's URL
#   scripts/stack.sh status             which processes are alive
#   scripts/stack.sh restart-worker I   SIGTERM worker I, wait for its exit, start it again,
#                                       and return once nginx sends it requests again
#   scripts/stack.sh down               stop everything this script started (by PID)
#   scripts/stack.sh nginx-conf OUT PORT W1 [W2...]
#                                       write the loopback copy of nginx.conf
#                                       (listening on PORT, workers on W1...;
#                                       gRPC from GRPC_LISTEN and GRPC_PORTS)
#
# up, down, up... works any number of times in one STACK_DIR. Like
# `docker compose down` (whose pgdata volume survives), `down` keeps the
# PostgreSQL data directory, and the next `up` starts on it: the prediction log
# and the workers' spill files carry over, no initdb runs, and the database the
# workers use is created again if it went missing. `up --reset` (or
# STACK_RESET=1) deletes the database and the spill files first and starts from
# an empty cluster. Redis keeps nothing: every `up` starts with an empty cache.
#
# An `up` that fails part-way stops whatever it had started and removes
# stack.env, then exits non-zero. A stack.env or PID files whose processes have
# all died (a crash, a reboot) do not block `up`; a live process of the stack
# does. Only processes that name this STACK_DIR are ever signalled, so a PID
# reused by some other program is left alone.
#
# Environment: STACK_DIR (state, logs, pids; default .stack), WORKERS (3),
# INFERD_BIN (default target/release/inferd), ORT_DYLIB_PATH, NGINX_PORT (default:
# a free port), STACK_RESET (0), STACK_READY_TIMEOUT_S (120, per component),
# PG_BIN (default: the newest /usr/lib/postgresql/*/bin), and any INFERD_*
# setting, passed on to every worker. Other ports are picked free at `up`; all
# are written to $STACK_DIR/stack.env.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# Absolute and free of symlinks, because every process `up` starts carries this
# exact path on its command line: that is how `down` and `up` tell the stack's
# processes from strangers that inherited a recycled PID.
STACK_DIR="$(realpath -m -- "${STACK_DIR:-$ROOT/.stack}")"
WORKERS="${WORKERS:-3}"
INFERD_BIN="${INFERD_BIN:-$ROOT/target/release/inferd}"
READY_TIMEOUT_S="${STACK_READY_TIMEOUT_S:-120}"
# A worker's SIGTERM waits out its drain delay and up to INFERD_SHUTDOWN_GRACE_MS
# of in-flight work before it exits: only past both is it killed.
ms_or() { if [[ "${1:-}" =~ ^[0-9]+$ ]]; then echo "$1"; else echo "$2"; fi; }
WORKER_STOP_S=$((($(ms_or "${INFERD_SHUTDOWN_GRACE_MS:-}" 30000) + $(ms_or "${INFERD_DRAIN_DELAY_MS:-}" 500)) / 1000 + 15))

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

pg_bin_dir() {
  local d newest=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] || continue
    if [ -z "$newest" ] || [ "$(basename "$(dirname "$d")")" -gt "$(basename "$(dirname "$newest")")" ]; then
      newest="$d"
    fi
  done
  if [ -z "$newest" ] && command -v initdb >/dev/null; then newest="$(dirname "$(command -v initdb)")"; fi
  echo "$newest"
}
PG_BIN="${PG_BIN:-$(pg_bin_dir)}"

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

# ---- processes ---------------------------------------------------------------

# Alive and not a zombie: a process that has exited stays a zombie until its
# parent (this shell, or init for an orphan) reaps it, and must count as dead.
running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != [ZX] ]]
}

# Whether PID is a process of this stack. Everything `up` starts names
# $STACK_DIR/ on its command line. Two older forms are recognised too, so that a
# stack started by an earlier version of this script (or a Redis restarted by
# hand) can still be stopped: a worker whose environment puts its spill file in
# $STACK_DIR, and a Redis or PostgreSQL server, which retitle themselves but
# chdir into $STACK_DIR.
ours() {
  local pid="$1" cmd env cwd
  running "$pid" || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" != *"$STACK_DIR/"* ]] || return 0
  env="$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null)" || env=""
  [[ $'\n'"$env" != *$'\n'"INFERD_PREDLOG_SPILL_PATH=$STACK_DIR/"* ]] || return 0
  case "$cmd" in
    redis-server* | */redis-server* | postgres\ * | */postgres\ *) ;;
    *) return 1 ;;
  esac
  cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null)" || return 1
  [[ "$cwd" == "$STACK_DIR" || "$cwd" == "$STACK_DIR/"* ]]
}

# The PID a PID file names (postmaster.pid too: its first line), if that process
# is running and ours.
live_pid() {
  local pid
  pid="$(head -n 1 "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" || return 1
  echo "$pid"
}

wait_gone() {
  local pid="$1" deadline=$((SECONDS + $2))
  while running "$pid"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# After a signal already sent: wait, then SIGKILL the process and its children
# (nginx's workers outlive a killed master). Fails only if it survives that.
await_exit() {
  local pid="$1" timeout="$2" name="$3" kids
  wait_gone "$pid" "$timeout" && return 0
  log "$name (pid $pid) still running after ${timeout} s: SIGKILL"
  mapfile -t kids < <(pgrep -P "$pid" || true)
  kill -KILL "$pid" "${kids[@]}" 2>/dev/null || true
  wait_gone "$pid" 10 || { log "$name (pid $pid) survived SIGKILL"; return 1; }
}

# Stops the process a PID file names, if it is running and ours, and removes the
# file unless the process survived.
stop_file() {
  local f="$1" sig="$2" timeout="$3" pid
  if pid="$(live_pid "$f")"; then
    kill "-$sig" "$pid" 2>/dev/null || true
    await_exit "$pid" "$timeout" "$(basename "$f" .pid)" || return 1
  fi
  rm -f "$f"
}

stop_postgres() {
  local data="$STACK_DIR/pg/data" pid
  # postmaster.pid names the running server even after a restart behind this
  # script's back; postgres.pid is the copy `up` took.
  if pid="$(live_pid "$data/postmaster.pid" || live_pid "$STACK_DIR/postgres.pid")"; then
    as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    if running "$pid"; then
      log "postgres (pid $pid) did not stop: immediate shutdown"
      kill -QUIT "$pid" 2>/dev/null || true
      await_exit "$pid" 10 postgres || return 1
    fi
  fi
  rm -f "$STACK_DIR/postgres.pid"
}

# Everything the PID files name, front to back: nginx first, so that no request
# reaches a stopping worker; the workers before Redis and PostgreSQL, which they
# still write to while they drain. Fails if any process survived (its PID file
# stays, and blocks the next `up`).
stop_all() {
  local rc=0 f pid
  stop_file "$STACK_DIR/nginx.pid" QUIT 15 || rc=1
  # All workers drain at once, not one after the other.
  local -A draining=()
  for f in "$STACK_DIR"/worker-*.pid; do
    [ -e "$f" ] || continue
    if pid="$(live_pid "$f")"; then
      kill -TERM "$pid" 2>/dev/null || true
      draining[$f]="$pid"
    else
      rm -f "$f"
    fi
  done
  for f in "${!draining[@]}"; do
    if await_exit "${draining[$f]}" "$WORKER_STOP_S" "$(basename "$f" .pid)"; then rm -f "$f"; else rc=1; fi
  done
  stop_file "$STACK_DIR/redis.pid" TERM 15 || rc=1
  stop_postgres || rc=1
  return "$rc"
}

# One stack.sh at a time per STACK_DIR. Every process started while holding it
# gets `9>&-`, or it would hold the lock for its whole life.
lock() {
  exec 9>>"$STACK_DIR/.lock"
  flock -n 9 || die "another stack.sh is working in $STACK_DIR"
}

# ---- start-up ----------------------------------------------------------------

# The loopback copy of nginx/nginx.conf: the upstream server line becomes one line
# per worker, the listen address moves to loopback, and temp files go under the
# prefix. Everything else (least_conn, keepalive, retries, timeouts, limits,
# logs) is the file docker compose runs.
nginx_conf() {
  local out="$1"; shift
  local listen="$1"; shift
  # gRPC: GRPC_LISTEN and GRPC_PORTS (space-separated, one per worker); by
  # default each port plus 10000, for a configuration that is only checked.
  python3 - "$ROOT/nginx/nginx.conf" "$out" "$listen" "$STACK_DIR/nginx" "$@" <<'PY'
import os, re, sys
src, out, listen, prefix, *ports = sys.argv[1:]
grpc_listen = os.environ.get("GRPC_LISTEN") or str(int(listen) + 10000)
grpc_ports = os.environ.get("GRPC_PORTS", "").split() or [str(int(p) + 10000) for p in ports]
assert len(grpc_ports) == len(ports), "GRPC_PORTS: one per worker"
conf = open(src).read()
for upstream, listen_port, ps in (("8080", listen, ports), ("8081", grpc_listen, grpc_ports)):
    line = re.search(rf"^(\s*)server inferd:{upstream}( [^;]*);$", conf, re.M)
    assert line, f"nginx.conf: no `server inferd:{upstream} ...;` line in an upstream"
    indent, params = line.group(1), line.group(2)
    conf = conf.replace(line.group(0), "\n".join(f"{indent}server 127.0.0.1:{p}{params};" for p in ps))
    conf, n = re.subn(rf"listen {upstream} ", f"listen 127.0.0.1:{listen_port} ", conf)
    assert n == 1, f"nginx.conf: expected one `listen {upstream}` line"
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
  local grpc_var="WORKER_${i}_GRPC_PORT"
  local port="${!port_var}" grpc="${!grpc_var}" spill="$STACK_DIR/worker-$i/spill.jsonl"
  mkdir -p "$STACK_DIR/worker-$i"
  # The spill path goes on the command line as well, where `ours` finds it.
  INFERD_LISTEN="127.0.0.1:$port" \
  INFERD_GRPC_LISTEN="127.0.0.1:$grpc" \
  INFERD_REDIS_URL="$REDIS_URL" \
  INFERD_DATABASE_URL="$DATABASE_URL" \
  INFERD_PREDLOG="${INFERD_PREDLOG:-postgres}" \
  INFERD_PREDLOG_SPILL_PATH="$spill" \
  INFERD_DRAIN_DELAY_MS="${INFERD_DRAIN_DELAY_MS:-500}" \
  INFERD_MODELS_DIR="${INFERD_MODELS_DIR:-$ROOT/models}" \
    nohup "$INFERD_BIN" serve --predlog-spill-path "$spill" >>"$STACK_DIR/worker-$i.log" 2>&1 9>&- &
  echo $! >"$STACK_DIR/worker-$i.pid"
}

# Waits until URL answers 200, failing at once if the process behind it exits.
wait_ready() {
  local url="$1" pid="$2" name="$3" logfile="$4" deadline=$((SECONDS + READY_TIMEOUT_S))
  until "$INFERD_BIN" healthcheck --url "$url" --timeout-ms 1000 >/dev/null 2>&1; do
    if ! running "$pid"; then
      log "$name (pid $pid) exited during start-up; the end of $logfile:"
      tail -n 15 "$logfile" >&2 || true
      exit 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "$name: $url not ready after $READY_TIMEOUT_S s (see $logfile)"
    sleep 0.2
  done
}

start_redis() {
  local port="$1" pid deadline=$((SECONDS + READY_TIMEOUT_S))
  log "redis on :$port"
  # In the foreground of a background job, so that its PID is known before it
  # can fail; set-proc-title no keeps its arguments (which name $STACK_DIR) on
  # its command line.
  nohup redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$STACK_DIR" --logfile "$STACK_DIR/redis.log" --set-proc-title no \
    >/dev/null 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$STACK_DIR/redis.pid"
  until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; do
    if ! running "$pid"; then
      log "redis (pid $pid) exited during start-up; the end of $STACK_DIR/redis.log:"
      tail -n 15 "$STACK_DIR/redis.log" >&2 || true
      exit 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "redis not answering on :$port after $READY_TIMEOUT_S s"
    sleep 0.1
  done
}

# Whether a running process works in directory $1: every PostgreSQL server
# process, postmaster and backends alike, has its data directory as its cwd.
dir_in_use() {
  local p cwd
  for p in /proc/[0-9]*; do
    cwd="$(readlink "$p/cwd" 2>/dev/null)" || continue
    [[ "$cwd" == "$1" || "$cwd" == "$1/"* ]] || continue
    running "${p#/proc/}" && return 0
  done
  return 1
}

# After a crash, postmaster.pid outlives the postmaster. PostgreSQL clears it
# itself unless its PID is still taken: by the dead postmaster as a zombie not
# yet reaped (seconds, here), or by an unrelated process after PID reuse; then
# it refuses to start. Once no process works in the data directory (the dead
# server's backends exit on their own), no server can be running on it, and
# the file goes.
clear_stale_postmaster_pid() {
  local data="$1" deadline=$((SECONDS + 15))
  [ -f "$data/postmaster.pid" ] || return 0
  while dir_in_use "$data"; do
    [ "$SECONDS" -lt "$deadline" ] ||
      die "processes of an earlier PostgreSQL still work in $data: stop them first"
    sleep 0.2
  done
  log "removing the stale postmaster.pid of a PostgreSQL that is gone"
  rm -f "$data/postmaster.pid"
}

start_postgres() {
  local port="$1" pg="$STACK_DIR/pg" data="$STACK_DIR/pg/data" have want
  install -d -m 700 "$pg"
  [ "$(id -u)" != 0 ] || chown postgres:postgres "$pg"
  want="$("$PG_BIN/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)*.*/\1/')"
  if [ -f "$data/PG_VERSION" ]; then
    have="$(cat "$data/PG_VERSION")"
    [ "$have" = "$want" ] ||
      die "$data is a PostgreSQL $have cluster and $PG_BIN is PostgreSQL $want: up --reset starts an empty one"
    log "postgresql on :$port, keeping the database in $data (up --reset starts empty)"
  else
    # initdb removes what it made when it fails, so anything here without a
    # PG_VERSION is the remains of an interrupted run.
    [ ! -e "$data" ] || { log "$data is not a complete cluster: removing it"; rm -rf "$data"; }
    log "postgresql on :$port, new cluster in $data"
    as_pg "$PG_BIN/initdb" -D "$data" -A trust -U postgres --no-sync >"$STACK_DIR/initdb.log" 2>&1 ||
      { tail -n 15 "$STACK_DIR/initdb.log" >&2; die "initdb failed (see $STACK_DIR/initdb.log)"; }
  fi
  clear_stale_postmaster_pid "$data"
  if ! as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$pg/log" -w -t "$READY_TIMEOUT_S" start \
    -o "-p $port -k $pg -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null 9>&-; then
    tail -n 15 "$pg/log" >&2 || true
    die "PostgreSQL did not start (see $pg/log)"
  fi
  head -n 1 "$data/postmaster.pid" >"$STACK_DIR/postgres.pid"
  # A kept cluster may have lost the workers' database (dropped by hand); initdb
  # made the role, which as the bootstrap superuser cannot be dropped.
  local psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -Atq)
  have="$("${psql[@]}" -d template1 -c "SELECT count(*) FROM pg_database WHERE datname = 'postgres'")" ||
    die "PostgreSQL in $data refuses the role postgres: up --reset starts an empty cluster"
  if [ "$have" != 1 ]; then
    log "database postgres missing: creating it"
    "${psql[@]}" -d template1 -c "CREATE DATABASE postgres" >/dev/null
  fi
}

# A live process of this stack refuses `up`; the state files of a stack whose
# processes have all died (stack.env, PID files) are cleared.
claim() {
  local f pid live=() seen=" "
  for f in "$STACK_DIR"/*.pid "$STACK_DIR/pg/data/postmaster.pid"; do
    [ -e "$f" ] || continue
    if pid="$(live_pid "$f")" && [[ "$seen" != *" $pid "* ]]; then
      live+=("$(basename "$f" .pid) (pid $pid)")
      seen+="$pid "
    fi
  done
  [ "${#live[@]}" -eq 0 ] ||
    die "$STACK_DIR already holds a running stack (${live[*]}): scripts/stack.sh down first"
  if [ -e "$STACK_DIR/stack.env" ] || compgen -G "$STACK_DIR/*.pid" >/dev/null; then
    log "clearing the state of an earlier stack whose processes are all gone"
  fi
  rm -f "$STACK_DIR"/*.pid "$STACK_DIR/stack.env"
}

# The EXIT trap of `up`: on failure, stop what was started, so that neither a
# process nor a stack.env is left claiming a stack.
up_exit() {
  local rc="$1"
  trap - EXIT INT TERM HUP
  [ "$rc" != 0 ] || return 0
  set +e
  log "up failed (exit $rc): stopping what it started"
  stop_all || log "some processes did not stop: their PID files are kept in $STACK_DIR"
  rm -f "$STACK_DIR/stack.env"
  exit "$rc"
}

up() {
  local reset="${STACK_RESET:-0}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --reset) reset=1 ;;
      *) die "up: unknown argument $1" ;;
    esac
    shift
  done
  [ -x "$INFERD_BIN" ] || die "no inferd binary at $INFERD_BIN (cargo build --release)"
  command -v redis-server >/dev/null || die "redis-server missing (apt-get install redis-server)"
  command -v redis-cli >/dev/null || die "redis-cli missing (apt-get install redis-tools)"
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || die "nginx missing (apt-get install nginx)"
  [ -n "$PG_BIN" ] || die "PostgreSQL missing (apt-get install postgresql)"
  if [ -z "${ORT_DYLIB_PATH:-}" ]; then
    ORT_DYLIB_PATH="$("$ROOT/scripts/install-ort.sh" | tail -n 1)"
  fi
  export ORT_DYLIB_PATH
  mkdir -p "$STACK_DIR/nginx"
  # PostgreSQL runs as `postgres` when this runs as root, and must reach pg/.
  chmod 755 "$STACK_DIR"
  lock
  claim

  trap 'up_exit $?' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP

  if [ "$reset" = 1 ]; then
    log "reset: deleting the database and the spill files"
    rm -rf "$STACK_DIR/pg"
    rm -f "$STACK_DIR"/worker-*/spill.jsonl*
  fi

  local ports_line
  ports_line="$(free_ports $((2 * WORKERS + 4)))"
  read -r -a ports <<<"$ports_line"
  local nginx_port="${NGINX_PORT:-${ports[0]}}" redis_port="${ports[1]}" pg_port="${ports[2]}"
  {
    echo "STACK_DIR=$STACK_DIR"
    echo "WORKERS=$WORKERS"
    echo "NGINX_PORT=$nginx_port"
    echo "NGINX_URL=http://127.0.0.1:$nginx_port"
    echo "REDIS_PORT=$redis_port"
    echo "REDIS_URL=redis://127.0.0.1:$redis_port/0"
    echo "PG_PORT=$pg_port"
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/postgres"
    echo "NGINX_GRPC_PORT=${ports[$((2 * WORKERS + 3))]}"
    for i in $(seq 1 "$WORKERS"); do
      echo "WORKER_${i}_PORT=${ports[$((i + 2))]}"
      echo "WORKER_${i}_URL=http://127.0.0.1:${ports[$((i + 2))]}"
      echo "WORKER_${i}_GRPC_PORT=${ports[$((i + 2 + WORKERS))]}"
    done
  } >"$STACK_DIR/stack.env"

  start_redis "$redis_port"
  start_postgres "$pg_port"

  for i in $(seq 1 "$WORKERS"); do
    start_worker "$i"
  done
  # shellcheck disable=SC1091
  . "$STACK_DIR/stack.env"
  local worker_ports=() grpc_ports=()
  for i in $(seq 1 "$WORKERS"); do
    local url_var="WORKER_${i}_URL" port_var="WORKER_${i}_PORT" grpc_var="WORKER_${i}_GRPC_PORT" pid
    pid="$(cat "$STACK_DIR/worker-$i.pid")"
    wait_ready "${!url_var}/readyz" "$pid" "worker $i" "$STACK_DIR/worker-$i.log"
    worker_ports+=("${!port_var}")
    grpc_ports+=("${!grpc_var}")
    log "worker $i ready on :${!port_var} (pid $pid)"
  done

  GRPC_LISTEN="$NGINX_GRPC_PORT" GRPC_PORTS="${grpc_ports[*]}" \
    nginx_conf "$STACK_DIR/nginx.conf" "$nginx_port" "${worker_ports[@]}"
  local nginx_bin nginx_pid
  nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
  # Not daemonised, for the same reason as Redis; its own pid file goes under
  # the prefix so that nginx.pid has one writer.
  nohup "$nginx_bin" -c "$STACK_DIR/nginx.conf" -p "$STACK_DIR/nginx/" \
    -g "daemon off; pid $STACK_DIR/nginx/nginx.pid;" \
    >>"$STACK_DIR/nginx-access.log" 2>>"$STACK_DIR/nginx-error.log" 9>&- &
  nginx_pid=$!
  echo "$nginx_pid" >"$STACK_DIR/nginx.pid"
  wait_ready "$NGINX_URL/readyz" "$nginx_pid" nginx "$STACK_DIR/nginx-error.log"
  log "nginx on :$nginx_port, gRPC on :$NGINX_GRPC_PORT (least_conn over ${WORKERS} workers)"

  trap - EXIT INT TERM HUP
  echo "$NGINX_URL"
}

down() {
  if [ ! -d "$STACK_DIR" ]; then log "no stack in $STACK_DIR"; return 0; fi
  lock
  if [ ! -e "$STACK_DIR/stack.env" ] && ! compgen -G "$STACK_DIR/*.pid" >/dev/null &&
    ! live_pid "$STACK_DIR/pg/data/postmaster.pid" >/dev/null; then
    log "no stack in $STACK_DIR"
    return 0
  fi
  if ! stop_all; then
    die "some processes did not stop: their PID files are kept in $STACK_DIR"
  fi
  rm -f "$STACK_DIR/stack.env"
  log "stopped"
}

status() {
  local f pid
  for f in "$STACK_DIR"/*.pid; do
    [ -e "$f" ] || continue
    if pid="$(live_pid "$f")"; then
      echo "$(basename "$f" .pid) up (pid $pid)"
    else
      echo "$(basename "$f" .pid) down"
    fi
  done
}

restart_worker() {
  local i="$1" pid
  [ -f "$STACK_DIR/stack.env" ] || die "no stack in $STACK_DIR"
  [ -f "$STACK_DIR/worker-$i.pid" ] || die "no worker $i"
  lock
  if [ -z "${ORT_DYLIB_PATH:-}" ]; then
    ORT_DYLIB_PATH="$("$ROOT/scripts/install-ort.sh" | tail -n 1)"
  fi
  export ORT_DYLIB_PATH
  if pid="$(live_pid "$STACK_DIR/worker-$i.pid")"; then
    log "worker $i: SIGTERM to $pid"
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" "$WORKER_STOP_S" || die "worker $i (pid $pid) did not exit"
  fi
  start_worker "$i"
  # shellcheck disable=SC1091
  . "$STACK_DIR/stack.env"
  local url_var="WORKER_${i}_URL"
  pid="$(cat "$STACK_DIR/worker-$i.pid")"
  wait_ready "${!url_var}/readyz" "$pid" "worker $i" "$STACK_DIR/worker-$i.log"
  # nginx counts the drain's 503s and the refused connections as failures and
  # leaves the worker out for fail_timeout after the last one, which can come
  # as late as the moment the new process started listening. Returning before
  # that lets the next step of a rolling restart take out the workers nginx
  # still uses, and then it has none ("no live upstreams").
  if live_pid "$STACK_DIR/nginx.pid" >/dev/null; then
    local wait_s
    wait_s="$(sed -nE 's/.*fail_timeout=([0-9]+)s?.*/\1/p' "$STACK_DIR/nginx.conf" | head -n 1)"
    wait_s="${wait_s:-10}"
    log "worker $i: ready (pid $pid); waiting ${wait_s} s, nginx's fail_timeout, until nginx sends it requests again"
    sleep "$wait_s"
  fi
  log "worker $i: back (pid $pid)"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  restart-worker) restart_worker "${2:?worker number}" ;;
  nginx-conf) shift; out="$1"; shift; nginx_conf "$out" "$@" ;;
  *) sed -n '2,36p' "$0" >&2; exit 2 ;;
esac

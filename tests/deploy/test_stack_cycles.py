"""`scripts/stack.sh` brought up and down again and again in one STACK_DIR, and
`up`s that fail part-way.

- up, down, up, down... in one directory: every `up` serves a prediction through
  nginx, the database is kept across a plain `up` (earlier requests' rows are
  still there) and emptied by `up --reset` / STACK_RESET=1, and every `down`
  leaves no process of the stack running, nginx's workers and PostgreSQL's
  backends included. A second `up` over a live stack is refused and leaves that
  stack serving.
- A stack whose processes were all SIGKILLed (a crash) leaves a stack.env and PID
  files behind; the next `up` clears them and starts, and a PID file naming a
  live process that is not the stack's (a recycled PID) neither blocks `up` nor
  gets that process signalled.
- An `up` that fails in PostgreSQL (a data directory from another major
  version), in the workers (an invalid INFERD_* value) or in nginx (its port
  taken) exits non-zero, stops what it had started (Redis, PostgreSQL and ready
  workers, by the evidence of their own logs), leaves no stack.env and no
  process of the stack, and the next plain `up` works.

Every wait is bounded, and a finalizer runs `stack.sh down` and then SIGKILLs
any process still naming the test's directory, whatever failed. Like the rest of
tests/deploy, a missing service (nginx, Redis, PostgreSQL) fails the test, in CI
or not; nothing is skipped."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, inferd_bin, tool

SCRIPT = ROOT / "scripts/stack.sh"
# One `up` on this 2-core machine takes seconds; the script's own bound is 120 s
# per component.
UP_TIMEOUT_S = 300
DOWN_TIMEOUT_S = 150
GONE_TIMEOUT_S = 20


# ---------------------------------------------------------------- processes


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) from /proc, None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def running(pid: int, start: int | None = None) -> bool:
    """Alive, not a zombie (nobody may reap an orphan at once), and, given its
    start time, the same process rather than a later one with a recycled PID."""
    s = stat(pid)
    return s is not None and s[0] not in "ZX" and (start is None or s[2] == start)


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def stack_processes(d: Path) -> dict[int, str]:
    """Running processes that belong to the stack in `d`: their command line
    names it (everything stack.sh starts), their working directory is in it
    (PostgreSQL's backends), or they inherited STACK_DIR=d from the test."""
    mark, env_mark = f"{d}/".encode(), f"STACK_DIR={d}".encode()
    found = {}
    for pid in all_pids():
        if pid == os.getpid() or not running(pid):
            continue
        proc = Path(f"/proc/{pid}")
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        hit = mark in cmd
        try:
            cwd = os.readlink(proc / "cwd")
            hit = hit or cwd == str(d) or cwd.startswith(str(d) + "/")
        except OSError:
            pass
        try:
            hit = hit or env_mark in (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            pass
        if hit:
            found[pid] = cmd.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def recorded_pids(d: Path) -> dict[str, int]:
    """The PIDs stack.sh recorded, and PostgreSQL's own postmaster.pid."""
    out = {}
    for f in [*d.glob("*.pid"), d / "pg/data/postmaster.pid"]:
        try:
            out[f.name] = int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def process_tree(roots) -> dict[int, int]:
    """The roots and all their descendants, running, as {pid: start time}."""
    parents = {}
    for pid in all_pids():
        s = stat(pid)
        if s and s[0] not in "ZX":
            parents.setdefault(s[1], []).append(pid)
    tree, todo = {}, [p for p in roots if running(p)]
    while todo:
        pid = todo.pop()
        s = stat(pid)
        if s is None or pid in tree:
            continue
        tree[pid] = s[2]
        todo.extend(parents.get(pid, []))
    return tree


def still_running(tree: dict[int, int]) -> list[int]:
    return [pid for pid, start in tree.items() if running(pid, start)]


def wait_until(cond, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def kill_leftovers(d: Path):
    for pid in stack_processes(d):
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not stack_processes(d), GONE_TIMEOUT_S)


# ---------------------------------------------------------------- the stack


def script(env: dict, *args, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def up(env: dict, *args, **extra) -> dict:
    r = script({**env, **extra}, "up", *args)
    assert r.returncode == 0, f"stack.sh up {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    d = Path(env["STACK_DIR"])
    info = dict(line.split("=", 1) for line in (d / "stack.env").read_text().split())
    assert r.stdout.strip() == info["NGINX_URL"]
    pids = recorded_pids(d)
    expected = {"nginx.pid", "redis.pid", "postgres.pid",
                *(f"worker-{i}.pid" for i in range(1, int(info["WORKERS"]) + 1))}
    assert expected <= set(pids), pids
    for name in expected:
        assert running(pids[name]), (name, pids[name])
    info["stderr"] = r.stderr
    return info


def down(env: dict, d: Path, tree: dict[int, int]):
    roots = {pid: tree[pid] for pid in recorded_pids(d).values() if pid in tree}
    r = script(env, "down", timeout=DOWN_TIMEOUT_S)
    assert r.returncode == 0, f"stack.sh down exited {r.returncode}\n{r.stderr}"
    # `down` returns only once every process it recorded has exited.
    assert not still_running(roots), still_running(roots)
    assert not (d / "stack.env").exists()
    assert not list(d.glob("*.pid")), list(d.glob("*.pid"))
    assert_nothing_left(d, tree)


def assert_nothing_left(d: Path, tree: dict[int, int] | None = None):
    """No process of the stack runs. The script waits for each process it
    recorded; their children (nginx's workers, PostgreSQL's backends) get a
    moment to follow."""
    def left():
        return {**{p: "(from the snapshot)" for p in still_running(tree or {})}, **stack_processes(d)}

    wait_until(lambda: not left(), GONE_TIMEOUT_S)
    assert not left(), f"still running: {left()}"


def snapshot(d: Path) -> dict[int, int]:
    """Every process of the running stack: the recorded ones and their children
    (nginx's workers, PostgreSQL's backends)."""
    return process_tree(recorded_pids(d).values())


def post_predict(info: dict, n: int) -> str:
    rid = f"stack-cycles-{uuid.uuid4()}"
    body = {"model": "text-classifier",
            "instances": [f"Cycle {n}: you have won a prize, claim it before midnight {rid}"]}
    req = urllib.request.Request(f"{info['NGINX_URL']}/predict", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", "X-Request-Id": rid})
    with urllib.request.urlopen(req, timeout=15) as r:
        assert r.status == 200
        got = json.loads(r.read())
    assert len(got["predictions"]) == 1 and got["predictions"][0]["label"] in ("spam", "ham"), got
    return rid


def psql(info: dict, sql: str) -> str:
    r = subprocess.run([tool("psql"), "-h", "127.0.0.1", "-p", info["PG_PORT"], "-U", "postgres", "-At",
                        "-v", "ON_ERROR_STOP=1", "-c", sql, "postgres"],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, f"psql: {sql}\n{r.stderr}"
    return r.stdout.strip()


def rows(info: dict, rid: str) -> int:
    return int(psql(info, f"SELECT count(*) FROM predictions WHERE request_id = '{rid}'"))


def wait_row(info: dict, rid: str):
    """The writer batches every 200 ms."""
    assert wait_until(lambda: rows(info, rid) == 1, 20, 0.2), f"no log row for {rid}"


def served(info: dict, n: int) -> str:
    rid = post_predict(info, n)
    wait_row(info, rid)
    return rid


@pytest.fixture
def stack_dir():
    for t in ("nginx", "redis-server", "redis-cli", "psql", *(("runuser",) if os.getuid() == 0 else ())):
        tool(t)
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) and not shutil.which("initdb"):
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
    # Not under pytest's tmp dir: PostgreSQL runs as `postgres` and must reach it.
    # Resolved: the script names the directory without symlinks.
    d = Path(tempfile.mkdtemp(prefix="inferd-cycles-")).resolve()
    d.chmod(0o755)
    try:
        yield d
    finally:
        try:
            script(env_for(d), "down", timeout=DOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        kill_leftovers(d)
        shutil.rmtree(d, ignore_errors=True)


def env_for(d: Path) -> dict:
    env = dict(os.environ, STACK_DIR=str(d), INFERD_BIN=str(inferd_bin()), WORKERS="2",
               INFERD_DRAIN_DELAY_MS="200", STACK_READY_TIMEOUT_S="120")
    for k in ("STACK_RESET", "NGINX_PORT"):
        env.pop(k, None)
    return env


# ---------------------------------------------------------------- the tests


def test_up_down_again_and_again_keeps_the_database_until_reset(stack_dir):
    d, env = stack_dir, env_for(stack_dir)
    kept = []
    for cycle in range(3):
        info = up(env)
        tree = snapshot(d)
        if cycle == 0:
            assert "new cluster" in info["stderr"], info["stderr"]
        else:
            assert "keeping the database" in info["stderr"], info["stderr"]
            assert "initdb" not in info["stderr"]
        # Rows written by every earlier cycle are still there.
        for rid in kept:
            assert rows(info, rid) == 1, (cycle, rid)
        kept.append(served(info, cycle))
        if cycle == 0:
            # A second `up` over a live stack is refused, and its failure does not
            # take the live stack down with it.
            again = script(env, "up")
            assert again.returncode != 0
            assert "already holds a running stack" in again.stderr, again.stderr
            assert (d / "stack.env").exists()
            assert set(still_running(tree)) == set(tree), "the refused `up` stopped something"
            served(info, cycle)
        down(env, d, tree)

    for how in ("--reset", "STACK_RESET=1"):
        info = up(env, "--reset") if how == "--reset" else up(env, STACK_RESET="1")
        tree = snapshot(d)
        assert "new cluster" in info["stderr"], (how, info["stderr"])
        for rid in kept:
            assert rows(info, rid) == 0, (how, rid)
        rid = served(info, 99)
        assert psql(info, "SELECT count(*) FROM predictions") == "1", how
        kept = [rid]
        down(env, d, tree)

    # A `down` with nothing up is a no-op.
    r = script(env, "down", timeout=DOWN_TIMEOUT_S)
    assert r.returncode == 0 and "no stack" in r.stderr, r.stderr


def test_a_crashed_stack_does_not_block_up_and_strangers_are_left_alone(stack_dir):
    d, env = stack_dir, env_for(stack_dir)
    info = up(env)
    rid = served(info, 1)
    tree = snapshot(d)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert wait_until(lambda: not still_running(tree), GONE_TIMEOUT_S), still_running(tree)
    assert (d / "stack.env").exists() and (d / "nginx.pid").exists()

    # A recycled PID: nginx.pid now names a live process that is not the stack's.
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        (d / "nginx.pid").write_text(f"{stranger.pid}\n")
        info = up(env)
        assert "clearing the state of an earlier stack" in info["stderr"], info["stderr"]
        assert stranger.poll() is None, "up signalled a process it did not start"
        # Crash recovery kept the row committed before the SIGKILL.
        assert rows(info, rid) == 1
        tree = snapshot(d)
        assert stranger.pid not in tree
        served(info, 2)
        down(env, d, tree)
        assert stranger.poll() is None, "down signalled a process it did not start"
    finally:
        stranger.kill()
        stranger.wait(timeout=10)


def count(path: Path, text: str) -> int:
    try:
        return path.read_text(errors="replace").count(text)
    except OSError:
        return 0


REDIS_BYE = "ready to exit, bye bye"
PG_DOWN = "database system is shut down"


@pytest.mark.parametrize("where", ["postgres", "worker", "nginx"])
def test_an_up_that_fails_part_way_stops_what_it_started(stack_dir, where):
    d, env = stack_dir, env_for(stack_dir)
    kept = None
    if where == "postgres":
        # A cluster to fail on: made by a normal cycle.
        info = up(env)
        kept = served(info, 1)
        down(env, d, snapshot(d))
    before = {"redis": count(d / "redis.log", REDIS_BYE), "pg": count(d / "pg/log", PG_DOWN)}

    busy = None
    extra = {}
    try:
        if where == "postgres":
            # PostgreSQL upgraded under a kept cluster: Redis is up by then.
            version = d / "pg/data/PG_VERSION"
            real_version = version.read_text()
            version.write_text("9\n")
        elif where == "worker":
            # Redis and PostgreSQL are up; every worker exits at start-up.
            extra = {"INFERD_MAX_QUEUE": "lots"}
        else:
            # Redis, PostgreSQL and both workers are up and ready; nginx cannot bind.
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            extra = {"NGINX_PORT": str(busy.getsockname()[1])}
        r = script({**env, **extra}, "up")
    finally:
        if busy is not None:
            busy.close()
        if where == "postgres":
            version.write_text(real_version)

    assert r.returncode != 0, f"up was meant to fail in {where}\n{r.stderr}"
    assert "up failed" in r.stderr and "stopping what it started" in r.stderr, r.stderr
    assert "redis on" in r.stderr, r.stderr
    if where == "postgres":
        assert "is a PostgreSQL 9 cluster" in r.stderr, r.stderr
    if where == "worker":
        assert "exited during start-up" in r.stderr and "'lots'" in r.stderr, r.stderr
    if where == "nginx":
        assert "worker 1 ready" in r.stderr and "worker 2 ready" in r.stderr, r.stderr
        assert "Address already in use" in r.stderr, r.stderr

    # Nothing claims a stack, and nothing of it runs.
    assert not (d / "stack.env").exists()
    for name, pid in recorded_pids(d).items():
        assert not running(pid), f"{name} names running pid {pid}"
    assert_nothing_left(d)
    # What was started was stopped, by the servers' own accounts.
    assert count(d / "redis.log", REDIS_BYE) == before["redis"] + 1
    if where != "postgres":
        assert count(d / "pg/log", PG_DOWN) == before["pg"] + 1

    info = up(env)
    tree = snapshot(d)
    if kept:
        assert rows(info, kept) == 1, "the kept database lost a row"
    served(info, 2)
    down(env, d, tree)

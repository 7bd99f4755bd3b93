"""The stack the fault campaign breaks, and the means to break and mend it.

`scripts/stack.sh up` runs the compose topology as plain processes in a temp
STACK_DIR. The campaign then kills, freezes, stops and restarts those processes
behind the script's back, so this file also keeps the script's state files true
(postgres.pid after a restart) and remembers every process it froze and every
tmpfs it mounted: a failing test must not leave a frozen PostgreSQL that makes
`stack.sh down` hang, nor a mount over a deleted directory.

Nothing is skipped: a missing tool fails the test, in CI or not.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# Readiness on two cores shared with compiles: loads, warm-ups and golden gates
# can take much longer than on an idle machine. Bounds, not expectations.
READY_TIMEOUT_S = 120

# Worker settings for the whole campaign, passed through stack.sh to every worker.
# The defaults buffer 100,000 records in memory, so an outage of a few seconds at a
# few hundred requests per second would never reach the spill file; a bound of 100
# makes every PostgreSQL fault exercise spill and replay, and lets a small tmpfs
# fill within seconds.
WORKER_ENV = {
    "INFERD_PREDLOG_BUFFER_ROWS": "100",
    "INFERD_PREDLOG_BATCH_ROWS": "100",
    "INFERD_DRAIN_DELAY_MS": "500",
    # A SIGTERM while PostgreSQL hangs waits out the whole grace period (see
    # sigterm-pg-frozen); 6 s keeps that fault short. Nothing else comes near it.
    "INFERD_SHUTDOWN_GRACE_MS": "6000",
}


def tool(name: str) -> str:
    for candidate in (VENV_BIN / name, shutil.which(name), Path("/usr/sbin") / name):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"`{name}` is not installed: scripts/test.sh installs it")


def inferd_bin() -> Path:
    b = Path(os.environ.get("INFERD_BIN", ROOT / "target/release/inferd"))
    if not b.is_file():
        pytest.fail(f"no inferd binary at {b}: cargo build --release")
    return b


def ort_dylib() -> str:
    path = os.environ.get("ORT_DYLIB_PATH") or str(ROOT / ".ort/lib/libonnxruntime.so.1.31.1")
    if not Path(path).is_file():
        pytest.fail(f"no ONNX Runtime library at {path}: make ort, or set ORT_DYLIB_PATH")
    return path


def pg_bin() -> Path:
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)) \
        if Path("/usr/lib/postgresql").is_dir() else []
    if not dirs:
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
    return dirs[-1]


def run(cmd, timeout=60, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("cwd", ROOT)
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def as_pg(cmd: list) -> list:
    """PostgreSQL refuses to run as root; stack.sh runs it as `postgres` then."""
    return ["runuser", "-u", "postgres", "--", *map(str, cmd)] if os.getuid() == 0 else list(map(str, cmd))


# ---------------------------------------------------------------- processes


def proc_state(pid: int) -> str | None:
    """The state letter from /proc (R, S, T for stopped, Z...), None when gone.
    A zombie counts as gone: nobody may reap the workers stack.sh left behind."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state = stat[stat.rindex(")") + 2]
    return None if state in "ZX" else state


def alive(pid: int | None) -> bool:
    return pid is not None and proc_state(pid) is not None


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(p.name))
    return out


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


# ---------------------------------------------------------------- HTTP / metrics


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def post_json(url: str, body: dict, timeout: float = 10) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except OSError:
        return 0, {}


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN|[+-]Inf)$", text, re.M):
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def wait_until(cond, timeout: float, step: float = 0.1):
    """Polls `cond` until truthy; returns (value, seconds taken) or (None, None)."""
    t0 = time.monotonic()
    while True:
        v = cond()
        if v:
            return v, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None, None
        time.sleep(step)


class Stack:
    """One `stack.sh up` in its own STACK_DIR, plus the faults' controls."""

    def __init__(self, d: Path, env: dict):
        self.dir, self.env = d, env
        self.frozen: set[int] = set()
        self.mounts: list[Path] = []
        self.pids_seen: set[int] = set()
        self.reload()

    def reload(self):
        self.info = dict(l.split("=", 1) for l in (self.dir / "stack.env").read_text().split())
        self.n = int(self.info["WORKERS"])
        for name in ["nginx", "redis", "postgres", *(f"worker-{i}" for i in range(1, self.n + 1))]:
            pid = self.pid(name)
            if pid:
                self.pids_seen.add(pid)

    @property
    def nginx(self) -> str:
        return self.info["NGINX_URL"]

    def worker(self, i: int) -> str:
        return self.info[f"WORKER_{i}_URL"]

    def workers(self) -> list[str]:
        return [self.worker(i) for i in range(1, self.n + 1)]

    def pid(self, name: str) -> int | None:
        f = self.dir / f"{name}.pid"
        try:
            return int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def script(self, *args, timeout=180, check=True):
        r = run([ROOT / "scripts/stack.sh", *args], env=self.env, timeout=timeout, check=check)
        self.reload()
        return r

    # ---- metrics, fleet-wide

    def metrics(self, url: str) -> dict:
        status, body = get(f"{url}/metrics", timeout=5)
        return parse_metrics(body.decode()) if status == 200 else {}

    def fleet(self) -> list[dict]:
        return [self.metrics(w) for w in self.workers()]

    @staticmethod
    def total(ms, name: str, label_filter: str = "") -> float:
        ms = ms if isinstance(ms, list) else [ms]
        return sum(v for m in ms for (n, labels), v in m.items() if n == name and label_filter in labels)

    @staticmethod
    def by_label(ms, name: str, label: str) -> dict[str, float]:
        ms = ms if isinstance(ms, list) else [ms]
        out: dict[str, float] = {}
        for m in ms:
            for (n, labels), v in m.items():
                if n == name:
                    got = re.search(rf'{label}="([^"]*)"', labels)
                    key = got.group(1) if got else ""
                    out[key] = out.get(key, 0) + v
        return out

    def ready(self) -> bool:
        return all(get(f"{u}/readyz", timeout=2)[0] == 200 for u in [*self.workers(), self.nginx])

    # ---- PostgreSQL

    def psql(self, sql: str, timeout: float = 15) -> str:
        return run(["psql", "-h", "127.0.0.1", "-p", self.info["PG_PORT"], "-U", "postgres", "-At",
                    "-v", "ON_ERROR_STOP=1", "-c", sql, "postgres"], timeout=timeout).stdout.strip()

    def pg_up(self) -> bool:
        r = run([pg_bin() / "pg_isready", "-h", "127.0.0.1", "-p", self.info["PG_PORT"], "-t", "1"],
                timeout=10, check=False)
        return r.returncode == 0

    def pg_postmaster(self) -> int | None:
        """From the data directory's own postmaster.pid, which stays true across
        restarts, unlike the copy stack.sh took at `up`."""
        try:
            pid = int((self.pg_data() / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def pg_data(self) -> Path:
        return self.dir / "pg" / "data"

    def pg_options(self) -> str:
        """The running postmaster's options (postmaster.opts), less -D: restarting
        with them keeps port, socket dir and settings as stack.sh chose them."""
        argv = shlex.split((self.pg_data() / "postmaster.opts").read_text())[1:]
        out, skip = [], False
        for a in argv:
            if skip:
                skip = False
            elif a == "-D":
                skip = True
            else:
                out.append(a)
        return " ".join(shlex.quote(a) for a in out)

    def pg_stop(self):
        run(as_pg([pg_bin() / "pg_ctl", "-D", self.pg_data(), "-m", "fast", "-w", "-t", "60", "stop"]),
            timeout=90)

    def pg_start(self):
        opts = self.pg_options()
        run(as_pg([pg_bin() / "pg_ctl", "-D", self.pg_data(), "-l", self.dir / "pg" / "log", "-w",
                   "-t", "60", "start", "-o", opts]), timeout=90)
        pid = self.pg_postmaster()
        # `stack.sh down` stops PostgreSQL only if this file names a live process.
        (self.dir / "postgres.pid").write_text(f"{pid}\n")
        self.pids_seen.add(pid)

    def pg_processes(self) -> list[int]:
        pm = self.pg_postmaster()
        return [pm, *children(pm)] if pm else []

    # ---- Redis

    def redis_cli(self, *args, timeout=5, check=True):
        return run(["redis-cli", "-p", self.info["REDIS_PORT"], *args], timeout=timeout, check=check)

    def redis_up(self) -> bool:
        r = self.redis_cli("ping", timeout=3, check=False)
        return r.returncode == 0 and "PONG" in r.stdout

    def redis_start(self):
        # The arguments stack.sh starts it with; the pidfile is where `down` looks.
        run(["redis-server", "--port", self.info["REDIS_PORT"], "--bind", "127.0.0.1", "--daemonize", "yes",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--pidfile", self.dir / "redis.pid",
             "--logfile", self.dir / "redis.log"], timeout=30)
        wait_until(self.redis_up, 30, 0.05)
        wait_until(lambda: self.pid("redis"), 10, 0.05)
        self.pids_seen.add(self.pid("redis"))

    # ---- freezing, mounts

    def freeze(self, pids: list[int]):
        for p in pids:
            self.frozen.add(p)
            os.kill(p, signal.SIGSTOP)

    def thaw(self):
        for p in list(self.frozen):
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.frozen.discard(p)

    def mount_tmpfs(self, where: Path, size: str):
        where.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", where])
        self.mounts.append(where)

    def unmount_all(self):
        while self.mounts:
            run(["umount", "-l", self.mounts.pop()], check=False)

    # ---- mending between faults

    def heal(self):
        """Puts back whatever a fault (or a test that failed half-way) left broken,
        so that one fault's failure does not cascade into the next."""
        self.thaw()
        if not self.redis_up():
            self.redis_start()
        if not self.pg_up():
            if not self.pg_postmaster():
                self.pg_start()
            wait_until(self.pg_up, 60, 0.2)
        for i in range(1, self.n + 1):
            if not alive(self.pid(f"worker-{i}")):
                self.script("restart-worker", str(i), timeout=READY_TIMEOUT_S + 30)
                self.pids_seen.add(self.pid(f"worker-{i}"))
        self.unmount_all()
        ok, _ = wait_until(self.ready, READY_TIMEOUT_S, 0.2)
        assert ok, "stack not ready after healing"

    def ours(self, pid: int) -> bool:
        """A PID seen earlier may have been reused by now: only a process that names
        this stack (its directory, or Redis's port) is stopped."""
        marks = [str(self.dir).encode(), f":{self.info['REDIS_PORT']}".encode()]
        for f in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{f}").read_bytes()
            except OSError:
                continue
            if any(m in data for m in marks):
                return True
        return False

    def kill_leftovers(self):
        """After `down`: anything this campaign saw that still runs is stopped by PID."""
        self.thaw()
        if self.pg_postmaster():
            run(as_pg([pg_bin() / "pg_ctl", "-D", self.pg_data(), "-m", "immediate", "-w", "stop"]),
                timeout=60, check=False)
        for pid in self.pids_seen:
            if alive(pid) and self.ours(pid):
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def keep_logs(d: Path):
    """The processes' own logs outlive the temp dir: the evidence for any count in
    the report (nginx's access log stays behind: it is large, and the counts drawn
    from it are in the JSON already)."""
    logs = OUT / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    for f in [*d.glob("worker-*.log"), d / "redis.log", d / "nginx-error.log", d / "pg" / "log"]:
        if f.is_file():
            shutil.copy(f, logs / (f.name if f.parent == d else "postgres.log"))


@pytest.fixture(scope="module")
def stack():
    if os.getuid() != 0:
        pytest.fail("the fault campaign runs as root: it mounts a tmpfs and runs PostgreSQL as `postgres`")
    for t in ("nginx", "redis-server", "redis-cli", "psql", "runuser", "mount", "umount"):
        tool(t)
    pg_bin()
    # Not under pytest's tmp dir: PostgreSQL runs as `postgres` and must reach it.
    d = Path(tempfile.mkdtemp(prefix="inferd-faults-"))
    d.chmod(0o755)
    env = dict(os.environ, STACK_DIR=str(d), INFERD_BIN=str(inferd_bin()), ORT_DYLIB_PATH=ort_dylib(),
               WORKERS="3", **WORKER_ENV)
    s = None
    try:
        run([ROOT / "scripts/stack.sh", "up"], env=env, timeout=READY_TIMEOUT_S * 3)
        s = Stack(d, env)
        yield s
    finally:
        if s is not None:
            s.thaw()
            s.unmount_all()
        run([ROOT / "scripts/stack.sh", "down"], env=env, timeout=180, check=False)
        if s is not None:
            s.kill_leftovers()
        keep_logs(d)
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- the report

TABLE = pytest.StashKey[str]()
OUT = ROOT / "target" / "faults"


def fmt_kinds(d: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items()) if d else "0"


class Campaign:
    """The results of every fault that ran, failed or not."""

    def __init__(self, profile: str):
        self.profile = profile
        self.results: list[dict] = []
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def table(self) -> str:
        head = ("| fault | via | requests | failed (by kind) | 200s / log rows found / lost | lost counted by server "
                "| lost unexplained | rows written twice | spilled / replayed | recovery | |")
        lines = [head, "|---|---|---:|---|---|---|---:|---:|---|---|---|"]
        for r in self.results:
            rec = r.get("recovery_s")
            recovery = (f"{rec:.2f} s ({r.get('recovery_of', '')})" if rec is not None
                        else f"not recovered ({r.get('recovery_of', '')})")
            counted = fmt_kinds(r.get("lost_counted_by_server", {}))
            if r.get("lost_explained"):
                counted += f"; {r['lost_explained']} held by the killed process"
            verdict = "ok" if not r.get("checks_failed") else "FAILED"
            lines.append(
                f"| {r['fault']} | {r['via']} | {r.get('requests', '-')} | {r.get('failed', '-')}"
                f"{' (' + fmt_kinds(r['failed_by_kind']) + ')' if r.get('failed_by_kind') else ''} "
                f"| {r.get('rows_expected', '-')} / {r.get('rows_found', '-')} / {r.get('rows_lost', '-')} "
                f"| {counted} | {r.get('unexplained_lost', '-')} | {r.get('duplicates', '-')} "
                f"| {r.get('spilled', '-')} / {r.get('replayed', '-')} | {recovery} | {verdict} |")
        return "\n".join(lines)

    def write(self) -> str:
        OUT.mkdir(parents=True, exist_ok=True)
        doc = {"profile": self.profile, "started": self.started,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "faults": self.results}
        (OUT / "campaign.json").write_text(json.dumps(doc, indent=2) + "\n")
        md = self.table()
        (OUT / "campaign.md").write_text(md + "\n")
        return md


@pytest.fixture(scope="module")
def campaign(request):
    c = Campaign(os.environ.get("FAULTS_PROFILE", "ci"))
    try:
        yield c
    finally:
        request.config.stash[TABLE] = c.write()


def pytest_terminal_summary(terminalreporter, config):
    md = config.stash.get(TABLE, None)
    if md:
        terminalreporter.write_sep("=", "fault campaign (target/faults/campaign.json)")
        terminalreporter.write_line(md)

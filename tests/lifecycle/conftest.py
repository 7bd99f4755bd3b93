"""Process-level checks of model lifecycle control: the release `inferd` on a free
loopback port over a private copy of models/, driven through the repository API
(`/v2/repository/...`), loaded with the release `inferd-bench`, and stopped by PID.

Nothing here is skipped: a missing binary fails the test (scripts/test.sh builds
both). Every request goes to 127.0.0.1 and every wait is bounded.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
# Figures the tests print are also written here, for quoting.
OUT = ROOT / "target" / "lifecycle"

# Loads verify sha256, build the sessions, warm up and run the golden gate; on
# two busy cores that is seconds, not minutes.
LOAD_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def release_binary(name: str, env_var: str) -> Path:
    b = Path(os.environ.get(env_var, ROOT / "target" / "release" / name))
    if not b.is_file():
        pytest.fail(f"no {name} binary at {b}: cargo build --release --workspace --bins")
    return b


def ort_dylib() -> str:
    path = os.environ.get("ORT_DYLIB_PATH") or str(ROOT / ".ort/lib/libonnxruntime.so.1.31.1")
    if not Path(path).is_file():
        pytest.fail(f"no ONNX Runtime library at {path}: make ort, or set ORT_DYLIB_PATH")
    return path


# ---------------------------------------------------------------- HTTP


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.body[:400]!r}>"


def http(method: str, url: str, body=None, headers=None, timeout: float = 30) -> Reply:
    """One request; any status comes back as a Reply (never raises on 4xx/5xx)."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text format -> [(name, labels, value)]."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


# ---------------------------------------------------------------- the server


class Server:
    """A release `inferd serve` on a free loopback port; stop() ends it by PID."""

    def __init__(self, models_dir: Path, workdir: Path, env: dict, cgroup: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models_dir = models_dir
        self.admin_key = env.get("INFERD_ADMIN_KEYS", "").split(",")[0] or None
        # Hermetic: no INFERD_* setting of the caller's shell leaks in.
        base = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
        full = dict(
            base,
            INFERD_LISTEN=f"127.0.0.1:{self.port}",
            # Several servers run at once: none may take the default gRPC port.
            INFERD_GRPC_LISTEN="127.0.0.1:0",
            INFERD_MODELS_DIR=str(models_dir),
            INFERD_CACHE="off",
            INFERD_PREDLOG="off",
            INFERD_MODEL_POLL_SECS="0",
            INFERD_SHUTDOWN_GRACE_MS="5000",
            ORT_DYLIB_PATH=ort_dylib(),
        )
        full.update(env)
        self.log_path = workdir / f"inferd-{self.port}.log"
        self._log = open(self.log_path, "wb")
        cmd = [str(release_binary("inferd", "INFERD_BIN")), "serve"]
        if cgroup is not None:
            # Joins the cgroup before exec, so the server reads its limits
            # at start-up as it would in a container.
            cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$0" "$1"'] + cmd
        self.proc = subprocess.Popen(cmd, env=full, cwd=workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http("GET", f"{self.url}/readyz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"inferd exited {self.proc.returncode} before ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"inferd not ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    # -- admin API

    def _admin_headers(self, key):
        key = self.admin_key if key is None else key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def load(self, model: str, config=None, key=None, timeout: float = LOAD_TIMEOUT_S,
             config_text=None) -> Reply:
        """config: a policy (sent as the JSON string `parameters.config`);
        config_text: the string itself, as is."""
        if config_text is None and config is not None:
            config_text = json.dumps(config)
        body = {} if config_text is None else {"parameters": {"config": config_text}}
        return http("POST", f"{self.url}/v2/repository/models/{model}/load", body,
                    self._admin_headers(key), timeout)

    def unload(self, model: str, key=None, timeout: float = LOAD_TIMEOUT_S) -> Reply:
        return http("POST", f"{self.url}/v2/repository/models/{model}/unload", {},
                    self._admin_headers(key), timeout)

    def index(self, key=None) -> Reply:
        return http("POST", f"{self.url}/v2/repository/index", {}, self._admin_headers(key))

    def states(self, model: str) -> dict[str, str]:
        """version -> state, from the repository index."""
        r = self.index()
        assert r.status == 200, r
        return {e["version"]: e["state"] for e in r.json() if e["name"] == model}

    # -- traffic and observation

    def predict(self, model: str, instances: list, version=None, headers=None) -> Reply:
        body = {"model": model, "instances": instances}
        if version is not None:
            body["version"] = str(version)
        return http("POST", f"{self.url}/predict", body, headers)

    def metrics(self) -> list[tuple[str, dict, float]]:
        r = http("GET", f"{self.url}/metrics")
        assert r.status == 200, r
        return parse_metrics(r.body.decode())

    def metric_sum(self, name: str, **labels) -> float:
        return sum(v for n, l, v in self.metrics()
                   if n == name and all(l.get(k) == str(w) for k, w in labels.items()))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")


@pytest.fixture
def start_server(tmp_path):
    """start_server(models_dir, cgroup=None, **env) -> a ready Server (in `cgroup`, a v1
    cgroup directory, when given); all are stopped at teardown."""
    started: list[Server] = []

    def start(models_dir: Path, wait: bool = True, cgroup: Path | None = None, **env) -> Server:
        s = Server(models_dir, tmp_path, {k: str(v) for k, v in env.items()}, cgroup)
        started.append(s)
        if wait:
            s.wait_ready()
        return s

    yield start
    for s in started:
        s.stop()


# ---------------------------------------------------------------- model directories


def copy_models(dest: Path, without: tuple = ()) -> Path:
    """A private copy of models/ without the given (model, version) pairs.
    text-classifier 3 (the quality tests' time-split control) and the policy
    that keeps 2 the default are left out: these tests add and remove versions
    and expect the highest to answer."""
    shutil.copytree(MODELS, dest)
    shutil.rmtree(dest / "text-classifier" / "3")
    (dest / "text-classifier" / "policy.toml").unlink()
    for model, version in without:
        shutil.rmtree(dest / model / str(version))
    return dest


def add_version(models_dir: Path, model: str, version, source_version=None) -> Path:
    """Copies models/<model>/<source_version or version> into models_dir as
    <model>/<version>, through a temporary name, so a scan never sees half a
    directory; the manifest's `version` is rewritten to match."""
    src = MODELS / model / str(source_version or version)
    dst = models_dir / model / str(version)
    tmp = models_dir / model / f".incoming-{version}"
    shutil.copytree(src, tmp)
    if source_version is not None and str(source_version) != str(version):
        toml = tmp / "model.toml"
        toml.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', toml.read_text()))
        golden = tmp / "golden.json"
        g = json.loads(golden.read_text())
        if "version" in g:
            g["version"] = str(version)
            golden.write_text(json.dumps(g))
    tmp.rename(dst)
    return dst


@pytest.fixture
def models_without_v2(tmp_path) -> Path:
    """models/ with text-classifier 1 and lstm-forecaster 1 only."""
    return copy_models(tmp_path / "models", without=(("text-classifier", 2),))


def golden_inputs(model: str, version: int = 1) -> list:
    cases = json.loads((MODELS / model / str(version) / "golden.json").read_text())["cases"]
    return [c["input"] for c in cases]


# ---------------------------------------------------------------- load


class Bench:
    """A release `inferd-bench` in the background: closed loop, no version named,
    payloads from models/<model>/1/golden.json `input` (valid for every version)."""

    def __init__(self, server: Server, model: str, duration_s: float, report: Path,
                 connections: int = 8, warmup_s: float = 1.0):
        self.report_path = report
        report.parent.mkdir(parents=True, exist_ok=True)
        if report.exists():
            report.unlink()
        self.out_path = report.with_suffix(".out")
        self._out = open(self.out_path, "wb")
        self.timeout = warmup_s + duration_s + 60
        self.proc = subprocess.Popen(
            [str(release_binary("inferd-bench", "INFERD_BENCH_BIN")),
             "--url", server.url, "--model", model, "--models-dir", str(MODELS),
             "--golden-field", "input", "-c", str(connections),
             "--duration", f"{duration_s}s", "--warmup", f"{warmup_s}s",
             "--json", str(report), "--quiet"],
            stdout=self._out, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        self.measuring_from = self.started + warmup_s

    def wait(self) -> dict:
        try:
            rc = self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail(f"inferd-bench ran past {self.timeout}s")
        finally:
            self._out.close()
        out = self.out_path.read_text(errors="replace")
        # 0: run done, no targets set; 2 would mean a target missed (none are set).
        assert rc == 0, f"inferd-bench exited {rc}:\n{out}"
        return json.loads(self.report_path.read_text())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if not self._out.closed:
            self._out.close()


@pytest.fixture
def benches():
    """Bench(...) factory whose processes are stopped (by PID) at teardown."""
    started: list[Bench] = []

    def start(*args, **kw) -> Bench:
        b = Bench(*args, **kw)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def figures(report: dict) -> dict:
    """The quotable part of an inferd-bench report."""
    lat = report["latency_ms"]
    return {
        "requests": report["requests"],
        "ok": report["ok"],
        "errors": report["errors_by_status"],
        "rps": round(report["rps"], 1),
        "p50_ms": lat["p50"],
        "p90_ms": lat["p90"],
        "p99_ms": lat["p99"],
        "p999_ms": lat["p999"],
        "max_ms": lat["max"],
    }


def write_figures(name: str, data: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


class Traffic:
    """Light background traffic from this process (for phases where the bench is
    not needed): every answer's status and version are kept."""

    def __init__(self, server: Server, model: str, instances: list, threads: int = 2):
        self.server, self.model, self.instances = server, model, instances
        self.statuses: dict[int, int] = {}
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, i: int):
        n = i
        while not self._stop.is_set():
            r = self.server.predict(self.model, [self.instances[n % len(self.instances)]])
            n += 1
            with self._lock:
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                if r.status == 200:
                    v = r.json().get("version")
                    self.versions[v] = self.versions.get(v, 0) + 1

    def stop(self) -> dict[int, int]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=40)
        return dict(self.statuses)


# ---------------------------------------------------------------- CPU accounting


def _system_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How much of the machine's CPU went to processes other than this test,
    its children (the bench processes, once reaped) and the server, over a
    phase. A latency comparison between phases means little when that share is
    large: the machine was busy with something else."""

    def __init__(self, server_pid: int):
        import resource
        self._r = resource
        self.pid = server_pid
        self.t0 = time.monotonic()
        self.busy0 = _system_busy_s()
        self.ours0 = self._ours()

    def _ours(self) -> float:
        r = self._r
        me = r.getrusage(r.RUSAGE_SELF)
        kids = r.getrusage(r.RUSAGE_CHILDREN)
        return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
                + _proc_cpu_s(self.pid))

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        busy = _system_busy_s() - self.busy0
        ours = self._ours() - self.ours0
        cores = os.cpu_count() or 1
        others = max(0.0, busy - ours)
        return {"wall_s": round(wall, 2), "cores": cores,
                "machine_busy_share": round(busy / (wall * cores), 3),
                "ours_cpu_s": round(ours, 2),
                "others_cpu_share": round(others / (wall * cores), 3)}

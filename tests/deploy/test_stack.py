"""End to end on loopback: the docker-compose topology as plain processes
(scripts/stack.sh: nginx with the project's config in front of 3 workers, one
Redis, one PostgreSQL), driven by the k6 scripts through nginx.

Checks: every k6 script's smoke run passes its thresholds, and every 429 the spike
provoked is counted in the workers' metrics; least_conn gives every worker a
share; the cache is shared (a result computed by one worker is a hit on the
others); a rolling restart under load replaces all three workers and fails no
request; and PostgreSQL holds exactly one log row per request the clients sent.

The tests run in order against one stack. Latency thresholds are relaxed here
(P95_MS/P99_MS): this is a 2-core CI machine running nginx, 3 workers, Redis,
PostgreSQL and k6 at once; the README's figures come from full-length runs."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, inferd_bin, run, tool

K6_SCRIPTS = ["lstm-progressive", "text-cache", "spike", "soak"]
RELAXED = {"P95_MS": "1500", "P99_MS": "4000"}
# Requests each test sent, for the one-row-per-request check at the end.
SENT = {}


@pytest.fixture(scope="module")
def stack():
    # Not under pytest's tmp dir: PostgreSQL runs as `postgres` and must reach it.
    d = Path(tempfile.mkdtemp(prefix="inferd-stack-"))
    d.chmod(0o755)
    env = dict(os.environ, STACK_DIR=str(d), INFERD_BIN=str(inferd_bin()), WORKERS="3",
               INFERD_DRAIN_DELAY_MS="500")
    for t in ("nginx", "redis-server"):
        tool(t)
    try:
        run(["scripts/stack.sh", "up"], env=env, timeout=180)
        info = dict(l.split("=", 1) for l in (d / "stack.env").read_text().split())
        info["env"] = env
        info["dir"] = d
        yield info
    finally:
        subprocess.run(["scripts/stack.sh", "down"], cwd=ROOT, env=env, timeout=120)
        shutil.rmtree(d, ignore_errors=True)


def workers(s) -> list[str]:
    return [s[f"WORKER_{i}_URL"] for i in range(1, int(s["WORKERS"]) + 1)]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}/predict", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def metrics(url: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for m in re.finditer(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", text, re.M):
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def total(m, name, label_filter=""):
    return sum(v for (n, labels), v in m.items() if n == name and label_filter in labels)


def k6(s, script, extra=None, background=False):
    summary = s["dir"] / f"k6-{script}-{uuid.uuid4().hex[:6]}.json"
    env = {"PATH": os.environ["PATH"], "BASE_URL": s["NGINX_URL"], "K6_PROFILE": "smoke",
           "K6_NO_USAGE_REPORT": "true", **RELAXED, **(extra or {})}
    cmd = [tool("k6"), "run", "--quiet", "--no-color", "--summary-export", str(summary), f"{script}.js"]
    if background:
        return subprocess.Popen(cmd, cwd=ROOT / "k6", env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True), summary
    r = subprocess.run(cmd, cwd=ROOT / "k6", env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"k6 {script}: thresholds failed or error\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    return json.loads(summary.read_text())


def listener_pid(port: int) -> int | None:
    """The process holding the loopback listening socket on `port` (Linux /proc:
    the socket's inode in /proc/net/tcp, then which process has it open)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == f"0100007F:{port:04X}" and f[3] == "0A":  # 127.0.0.1, LISTEN
            inode = f[9]
    if inode is None:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:  # not ours to read, or gone
            continue
    return None


def psql(s, sql: str) -> str:
    return run(["psql", "-h", "127.0.0.1", "-p", s["PG_PORT"], "-U", "postgres", "-At", "-c", sql,
                "postgres"]).stdout.strip()


def test_stack_is_ready(stack):
    with urllib.request.urlopen(f"{stack['NGINX_URL']}/readyz", timeout=5) as r:
        assert r.status == 200
    for w in workers(stack):
        run([inferd_bin(), "healthcheck", "--url", f"{w}/readyz"])
        # The per-pod series the chart's HPA can scale on.
        assert ("inferd_requests_in_flight", "") in metrics(w)


def test_cache_is_shared_across_workers(stack):
    w1, w2, w3 = workers(stack)
    body = {"model": "text-classifier",
            "instances": [f"Limited offer {uuid.uuid4()}: claim your prize before midnight"]}
    first = post(w1, body)
    assert first["cached"] == [False]
    # Workers 2 and 3 never computed it and their in-process L1 is empty for it:
    # the hit comes from the shared Redis.
    for w in (w2, w3):
        again = post(w, body)
        assert again["cached"] == [True]
        assert again["predictions"] == first["predictions"]
    SENT["direct"] = 3


def test_grpc_through_nginx(stack):
    """KServe v2 over gRPC through nginx's `grpc_pass` least_conn upstream:
    tritonclient.grpc's answers equal /predict's, the calls reach the workers'
    gRPC ports and are counted there as protocol="grpc", the health service
    answers through the proxy, and model control is refused there."""
    import grpc
    import numpy as np
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    target = f"127.0.0.1:{stack['NGINX_GRPC_PORT']}"
    client = tgrpc.InferenceServerClient(target)
    assert client.is_server_live() and client.is_server_ready()
    golden = json.loads((ROOT / "models/lstm-forecaster/1/golden.json").read_text())["cases"]
    before = fleet_total(stack, "inferd_requests_total", 'protocol="grpc"')
    n = 6
    for case in golden[:n]:
        window = np.array([case["input"]], dtype=np.float32)
        inp = tgrpc.InferInput("window", list(window.shape), "FP32")
        inp.set_data_from_numpy(window)
        got = client.infer("lstm-forecaster", [inp]).as_numpy("forecast")[0, 0]
        want = post(stack["NGINX_URL"], {"model": "lstm-forecaster", "instances": [case["input"]]})
        assert got == np.float32(want["predictions"][0]["forecast"]["co2_ppm"])
    SENT["grpc"] = 2 * n
    per_worker = [total(metrics(w), "inferd_requests_total", 'protocol="grpc"') for w in workers(stack)]
    assert sum(per_worker) - before == n, per_worker
    with pytest.raises(InferenceServerException) as e:
        client.get_model_repository_index()
    assert e.value.status() == "StatusCode.PERMISSION_DENIED"
    client.close()
    # grpc.health.v1.Health/Check, hand-encoded: {service = ""} -> {status = SERVING (1)}.
    with grpc.insecure_channel(target) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
        assert check(b"", timeout=5) == b"\x08\x01"


def fleet_total(s, name, label_filter="") -> float:
    """A counter summed over every worker's own /metrics."""
    return sum(total(metrics(w), name, label_filter) for w in workers(s))


def shed_total(s) -> float:
    """Refusals for capacity across the fleet: the global queue bound, a
    model's queue by time, and the memory budget."""
    return sum(fleet_total(s, "inferd_rejections_total", f'reason="{r}"')
               for r in ("queue_full", "queue_time", "memory_budget"))


def check_spike(s, m, before):
    """The spike run held its own thresholds, and every 429 k6 saw was counted by
    a worker: nginx does not retry 429 (proxy_next_upstream) and makes none
    itself, so each one k6 received is one a worker refused and counted. A
    worker may count more than k6 saw (a request abandoned at the scenario's
    graceful stop), never fewer."""
    # --summary-export marks a threshold `true` when it FAILED (k6 #1498).
    wanted = {"http_req_failed": "rate<0.001", "checks": "rate>0.999",
              "http_req_duration{expected_response:true}": "p(99)<"}
    for metric, expr in wanted.items():
        th = m.get(metric, {}).get("thresholds", {})
        got = {k: v for k, v in th.items() if k.startswith(expr)}
        assert got and not any(got.values()), (metric, th)
    assert m["http_req_failed"]["value"] < 0.001, m["http_req_failed"]
    assert m["checks"]["value"] > 0.999 and m["checks"]["fails"] == 0, m["checks"]
    # k6 omits a Counter that never got a sample: then no 429 was seen.
    seen = int(m.get("shed_429", {}).get("count", 0))
    rejected = shed_total(s) - before["rejected"]
    answered = fleet_total(s, "inferd_requests_total", 'status="429"') - before["answered"]
    print(f"spike: k6 saw {seen} x 429 of {m['http_reqs']['count']} requests; workers counted "
          f"{rejected:.0f} capacity rejections, {answered:.0f} requests with status 429")
    assert rejected >= seen, (seen, rejected)
    assert answered >= seen, (seen, answered)


def test_k6_scripts_pass_through_nginx(stack):
    for script in K6_SCRIPTS:
        if script == "spike":
            before = {"rejected": shed_total(stack),
                      "answered": fleet_total(stack, "inferd_requests_total", 'status="429"')}
        summary = k6(stack, script)
        m = summary["metrics"]
        assert m["http_reqs"]["count"] > 0
        assert m["http_req_failed"]["value"] == 0, (script, m["http_req_failed"])
        SENT[script] = m["http_reqs"]["count"]
        if script == "text-cache":
            # 65% of requests repeat one of 32 messages: most of those hit.
            assert m["cache_hits"]["value"] > 0.5, m["cache_hits"]
        if script == "spike":
            check_spike(stack, m, before)


def test_least_conn_gives_every_worker_a_share(stack):
    served = [total(metrics(w), "inferd_requests_total") for w in workers(stack)]
    assert sum(served) >= sum(v for k, v in SENT.items())
    for n in served:
        assert n >= 0.2 * sum(served), served


def test_every_worker_serves_cache_hits(stack):
    for w in workers(stack):
        m = metrics(w)
        assert total(m, "inferd_cache_requests_total", 'result="hit"') > 0, w
        # Redis calls that timed out on this oversubscribed machine fail open and
        # are counted; the k6 run above checked the realised hit rate.
    keys = run(["redis-cli", "-p", stack["REDIS_PORT"], "dbsize"]).stdout.strip()
    assert int(keys) > 32


def test_rolling_restart_fails_no_request(stack):
    pids = [(stack["dir"] / f"worker-{i}.pid").read_text() for i in (1, 2, 3)]
    proc, summary = k6(stack, "text-cache", {"VUS": "16", "DURATION_S": "20"}, background=True)
    try:
        time.sleep(2)
        for i in (1, 2, 3):
            run(["scripts/stack.sh", "restart-worker", str(i)], env=stack["env"], timeout=90)
            time.sleep(1)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    m = json.loads(summary.read_text())["metrics"]
    assert m["http_reqs"]["count"] > 1000
    assert m["http_req_failed"]["value"] == 0 and m["checks"]["fails"] == 0, m["http_req_failed"]
    SENT["rolling"] = m["http_reqs"]["count"]
    # Every worker was replaced, not just one: each pid file names a new process,
    # the old one is gone, the new one holds the worker's listening socket, and it
    # answers /readyz on its own port (not through nginx).
    new_pids = [(stack["dir"] / f"worker-{i}.pid").read_text() for i in (1, 2, 3)]
    for i, old_pid, new_pid, url in zip((1, 2, 3), pids, new_pids, workers(stack)):
        old_pid, new_pid = int(old_pid), int(new_pid)
        assert new_pid != old_pid, f"worker {i} was not restarted (pid {old_pid})"
        assert not Path(f"/proc/{old_pid}").exists(), f"worker {i}: old pid {old_pid} still alive"
        port = int(stack[f"WORKER_{i}_PORT"])
        assert listener_pid(port) == new_pid, f"worker {i}: :{port} not held by new pid {new_pid}"
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
            assert r.status == 200, (i, url)
    # The drains were exercised: nginx moved requests off a draining worker.
    log = (stack["dir"] / "nginx-access.log").read_text()
    assert re.search(r'"upstream_status":"50[23], 200"', log), "no request was retried off a draining worker"


def test_trace_id_reaches_the_access_log_and_the_log_row(stack):
    """A client's W3C traceparent, sent through nginx: the worker continues its
    trace and answers `x-trace-id`, which nginx's access log records, and the
    prediction-log row in PostgreSQL carries the same id."""
    trace = uuid.uuid4().hex
    rid = f"traced-{trace[:8]}"
    req = urllib.request.Request(
        f"{stack['NGINX_URL']}/predict", method="POST",
        data=json.dumps({"model": "text-classifier", "instances": ["Are we still on for Friday?"]}).encode(),
        headers={"content-type": "application/json", "x-request-id": rid,
                 "traceparent": f"00-{trace}-{uuid.uuid4().hex[:16]}-01"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        assert r.headers["x-trace-id"] == trace
    SENT["traced"] = 1
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(l) for l in (stack["dir"] / "nginx-access.log").read_text().splitlines()
                 if rid in l]
        row = psql(stack, f"SELECT trace_id FROM predictions WHERE request_id = '{rid}'")
        if lines and row:
            break
        assert time.monotonic() < deadline, (lines, row)
        time.sleep(0.2)
    assert [l["trace_id"] for l in lines] == [trace], lines
    assert row == trace


def test_one_log_row_per_request(stack):
    expected = sum(SENT.values())
    deadline = time.monotonic() + 30
    rows = -1
    while time.monotonic() < deadline:
        rows = int(psql(stack, "SELECT count(*) FROM predictions"))
        if rows >= expected:
            break
        time.sleep(0.5)
    time.sleep(1)  # a late duplicate would show up now
    rows, ids = psql(stack, "SELECT count(*), count(DISTINCT request_id) FROM predictions").split("|")
    assert int(rows) == expected, (rows, SENT)
    assert int(ids) == expected, (ids, SENT)

"""End to end on loopback: the docker-compose topology as plain processes
(scripts/stack.sh: nginx with the project's config in front of 3 workers, one
Redis, one PostgreSQL), driven by the k6 scripts through nginx.

Checks: every k6 script's smoke run passes its thresholds; least_conn gives every
worker a share; the cache is shared (a result computed by one worker is a hit on
the others); a rolling restart under load fails no request; and PostgreSQL holds
exactly one log row per request the clients sent.

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


def test_k6_scripts_pass_through_nginx(stack):
    for script in K6_SCRIPTS:
        summary = k6(stack, script)
        m = summary["metrics"]
        assert m["http_reqs"]["count"] > 0
        assert m["http_req_failed"]["value"] == 0, (script, m["http_req_failed"])
        SENT[script] = m["http_reqs"]["count"]
        if script == "text-cache":
            # 65% of requests repeat one of 32 messages: most of those hit.
            assert m["cache_hits"]["value"] > 0.5, m["cache_hits"]


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
    assert pids != [(stack["dir"] / f"worker-{i}.pid").read_text() for i in (1, 2, 3)]
    # The drains were exercised: nginx moved requests off a draining worker.
    log = (stack["dir"] / "nginx-access.log").read_text()
    assert re.search(r'"upstream_status":"50[23], 200"', log), "no request was retried off a draining worker"


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

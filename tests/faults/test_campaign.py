"""Fault campaign: the loopback stack (scripts/stack.sh: nginx least_conn in front
of 3 workers, one Redis, one PostgreSQL) under load while its parts fail, with
the counts each fault ends with.

Faults, in order, each against a stack mended after the one before:
  redis-kill         Redis SIGKILLed, restarted after FAULT_S
  redis-freeze       Redis SIGSTOPped (connections accepted, never answered), SIGCONT after FAULT_S
  pg-stop            PostgreSQL fast shutdown, started again after FAULT_S
  pg-freeze          postmaster and every backend SIGSTOPped for PG_FREEZE_S, then SIGCONT
  spill-disk-full    each worker's spill directory on a small tmpfs while PostgreSQL is
                     stopped: records can neither be written nor (once it fills) spilled
  sigterm-nginx      SIGTERM to worker 1 under load through nginx; restarted once it exits
  sigterm-direct     the same with clients on worker 1 itself, nothing in front
  sigkill-nginx      worker 1 SIGKILLed under load through nginx; restarted
  sigterm-pg-frozen  SIGTERM to worker 1 while PostgreSQL is frozen (two faults at once)

For each: requests sent, failed client requests by kind, prediction-log rows lost
(every 200 answer is one instance, so one row: the phase's request ids are
looked up in PostgreSQL once the spill is drained) against the losses the server
counts itself (inferd_predlog_dropped_total, by reason), and the time to recover.
The targets asserted:
  - no failed request while a healthy worker remains behind nginx (every fault
    but sigterm-direct); there, only 503 `draining`, refused connections, 503
    `not_ready` from the restarted process, and requests caught on a keep-alive
    connection the drain closed;
  - no lost row beyond what the server counted, or, for SIGKILL, what the killed
    process still held (answered by it, per nginx's log, within KILL_WINDOW_S of
    the kill): such a process can count nothing;
  - no row written twice, no wrong answer (every LSTM window is a held-out one
    shifted by a unique offset, and the model is shift-equivariant to 1e-4 ppm,
    so a cache answer for another key would show);
  - each fault had an effect (Redis calls failed; records were spilled; the
    tmpfs filled), so a broken fault cannot pass as a healthy server;
  - recovery within a bound (Redis: the breaker's longest back-off plus slack;
    PostgreSQL: the spill drained; workers: ready again).
Three targets were missed when the campaign was first run, and are checks
since the fixes: rows lost uncounted when a worker stopped while PostgreSQL
hung (the writer now bounds its wait for a stuck write by the shutdown budget
and spills that batch); a torn spill line counted as dropped twice (a failed
append is now truncated back); keep-alive requests broken at the end of a
drain (draining 503s now say `Connection: close`).

Time to recover runs from the fault's end: Redis or PostgreSQL back, or the
worker's exit (it is restarted at once with `stack.sh restart-worker`, as a
supervisor would).

The results go to stdout as a markdown table (pytest's terminal summary) and to
target/faults/campaign.json (and .md).

Profiles (FAULTS_PROFILE):
  ci (default)  200 req/s, 1 s before each fault, 3 s faults, 5 s PostgreSQL freeze,
                2 s after; about 1.5 minutes on two cores, for `make test`
  full          300 req/s, 5 s before, 15 s faults, the issue's 30 s PostgreSQL
                freeze, 10 s after; about 5 minutes

  .venv-deploy/bin/python -m pytest -q -s tests/faults
  FAULTS_PROFILE=full .venv-deploy/bin/python -m pytest -q -s tests/faults

Runs as root (tmpfs mounts; PostgreSQL as `postgres`). Nothing is skipped.

Load is a bounded open-loop Python generator (threads, keep-alive http.client
connections, loopback only), alternating text-classifier and lstm-forecaster with
distinct inputs. A slot it cannot keep is skipped, never sent later in a burst.
"""

import http.client
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import ROOT, READY_TIMEOUT_S, get, post_json, wait_gone, wait_until

PROFILES = {
    "ci": dict(rate=200, threads=12, pre_s=1.0, fault_s=3.0, post_s=2.0, pg_freeze_s=5.0,
               tmpfs="64k", drain_bound_s=60.0),
    "full": dict(rate=300, threads=16, pre_s=5.0, fault_s=15.0, post_s=10.0, pg_freeze_s=30.0,
                 tmpfs="256k", drain_bound_s=180.0),
}
PROFILE = os.environ.get("FAULTS_PROFILE", "ci")
if PROFILE not in PROFILES:
    raise RuntimeError(f"FAULTS_PROFILE={PROFILE}: one of {sorted(PROFILES)}")
P = PROFILES[PROFILE]

# The breaker's back-off doubles per failed trial up to 16x INFERD_CACHE_BREAKER_MS
# (1 s): Redis back at any moment is used again within that, plus scheduling slack.
REDIS_RECOVERY_BOUND_S = 16 * 1.0 + 10
# A record waits at most INFERD_PREDLOG_FLUSH_MS (200 ms) for its batch; on two
# busy cores the writer may lag. What a SIGKILLed worker answered this long before
# its death may still have been in its memory.
KILL_WINDOW_S = 2.0
LSTM_TOLERANCE_PPM = 0.01

RUN = uuid.uuid4().hex[:8]
ANSI = re.compile(r"\x1b\[[0-9;]*m")

SUBJECTS = ["Quarterly numbers", "Re: build failure", "Limited offer", "Lunch on Friday?",
            "Your account statement", "WIN a FREE cruise", "Meeting notes", "Invoice overdue"]
BODIES = [
    "The patch fixes the linker error; I will push it after lunch once the tests pass.",
    "Click here to claim your FREE prize. Act now, no credit card required!",
    "Attached are the slides from this morning. Comments welcome before Thursday.",
    "Congratulations! You have been selected for an exclusive reward. Reply with your details.",
    "Can we move the review to 3pm? Something came up with the release schedule.",
    "Lowest prices on meds, no prescription needed, discreet shipping worldwide.",
]


class Inputs:
    """Distinct instances for the whole campaign (one counter across phases), so
    nearly every request misses the cache and runs the model."""

    def __init__(self):
        g = json.loads((ROOT / "models/lstm-forecaster/1/golden.json").read_text())["cases"]
        self.windows = [(c["input"], c["expected"]["forecast"]["co2_ppm"]) for c in g]
        self.n = 0
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            self.n += 1
            n = self.n
        if n % 2:
            text = (f"Subject: {SUBJECTS[n % len(SUBJECTS)]} #{n}\n\n{BODIES[n % len(BODIES)]}\n"
                    f"Reference {RUN}-{n}.")
            return "text-classifier", {"model": "text-classifier", "instances": [text]}, None
        window, base = self.windows[(n // 2) % len(self.windows)]
        # A unique level shift in [-5, 5) ppm, in steps float32 still tells apart.
        shift = ((n // 2) * 7919 % 10000) / 1000.0 - 5.0
        w = [[round(v[0] + shift, 4)] for v in window]
        return "lstm-forecaster", {"model": "lstm-forecaster", "instances": [w]}, base + shift


def error_kind(e: Exception) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, http.client.RemoteDisconnected):
        return "closed without response"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, BrokenPipeError):
        return "broken pipe"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    return type(e).__name__


class Load:
    """Open loop at `rate` over `threads` keep-alive connections. Each request
    records (request id, model, sent, done, outcome, wrong answer?)."""

    def __init__(self, url: str, prefix: str, inputs: Inputs, rate: float, threads: int,
                 max_s: float = 300):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.prefix, self.inputs, self.rate, self.threads = prefix, inputs, rate, threads
        self.max_requests = int(rate * max_s)
        self.deadline = time.monotonic() + max_s
        self.stop_evt = threading.Event()
        self.records: list[tuple] = []
        self.lock = threading.Lock()
        self.pool = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def start(self):
        self.t0 = time.monotonic()
        for t in self.pool:
            t.start()

    def stop(self):
        self.stop_evt.set()
        for t in self.pool:
            t.join(timeout=60)
        if any(t.is_alive() for t in self.pool):
            raise AssertionError("load threads did not finish within 60 s of stop")

    def _run(self, k: int):
        interval = self.threads / self.rate
        next_t = self.t0 + k / self.rate
        seq = k
        conn = None
        mine = []
        while not self.stop_evt.is_set() and seq < self.max_requests and time.monotonic() < self.deadline:
            now = time.monotonic()
            if next_t > now and self.stop_evt.wait(next_t - now):
                break
            # Behind schedule (a slow answer): skip the missed slots, no burst.
            next_t = max(next_t + interval, time.monotonic() - interval)
            rid = f"{self.prefix}-{seq}"
            seq += self.threads
            model, body, expect = self.inputs.next()
            sent = time.monotonic()
            outcome, wrong = "", False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                conn.request("POST", "/predict", json.dumps(body),
                             {"Content-Type": "application/json", "X-Request-Id": rid})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status == 200:
                    outcome = "200"
                    wrong = not answer_ok(model, json.loads(data), expect)
                else:
                    try:
                        err = json.loads(data).get("error")
                        code = err.get("code") if isinstance(err, dict) else str(err)[:40]
                    except ValueError:
                        code = "non-json"
                    outcome = f"{resp.status} {code}"
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure is an outcome to count
                outcome = error_kind(e)
                if conn is not None:
                    conn.close()
                conn = None
            mine.append((rid, model, sent, time.monotonic(), outcome, wrong))
        if conn is not None:
            conn.close()
        with self.lock:
            self.records.extend(mine)


def answer_ok(model: str, body: dict, expect) -> bool:
    try:
        (p,) = body["predictions"]
        if model == "lstm-forecaster":
            return abs(p["forecast"]["co2_ppm"] - expect) < LSTM_TOLERANCE_PPM
        return p["label"] in ("ham", "spam") and abs(sum(p["scores"].values()) - 1) < 1e-3
    except (KeyError, TypeError, ValueError):
        return False


class Phase:
    """One fault: its load, its timeline, and its accounting."""

    def __init__(self, stack, campaign, fault: str, via: str, url: str, inputs: Inputs, what: str):
        self.s, self.fault, self.via, self.url, self.inputs = stack, fault, via, url, inputs
        self.prefix = f"{fault}-{RUN}"
        self.t: dict[str, float] = {}
        # Until finish() says otherwise: a phase that raised half-way shows as failed.
        self.result = {"fault": fault, "via": via, "what": what, "notes": [],
                       "checks_failed": ["did not complete (see the test's error)"]}
        campaign.results.append(self.result)
        self.checks: list[tuple[bool, str]] = []
        self.log_offsets = {i: self._log(i).stat().st_size for i in range(1, stack.n + 1)}
        self.nginx_offset = (stack.dir / "nginx-access.log").stat().st_size
        self.pids0 = {i: stack.pid(f"worker-{i}") for i in range(1, stack.n + 1)}
        self.m0 = {i: stack.metrics(stack.worker(i)) for i in range(1, stack.n + 1)}
        # A worker's last scrape before it dies: counters of a process that is gone.
        self.m_last = dict(self.m0)
        self.recovery_s = None
        self.load = None

    def _log(self, i: int) -> Path:
        return self.s.dir / f"worker-{i}.log"

    def mark(self, name: str):
        self.t[name] = time.monotonic()

    def sleep_until(self, t: float):
        time.sleep(max(0.0, t - time.monotonic()))

    @contextmanager
    def loaded(self):
        self.load = Load(self.url, self.prefix, self.inputs, P["rate"], P["threads"])
        self.load.start()
        self.mark("load")
        try:
            yield
        finally:
            self.load.stop()
            self.mark("load_end")

    def scrape_before_death(self, i: int):
        self.m_last[i] = self.s.metrics(self.s.worker(i))

    def recover(self, what: str, cond, bound: float, since: str = "end"):
        _, took = wait_until(cond, bound, 0.1)
        if took is not None:
            self.recovery_s = time.monotonic() - self.t[since]
        self.result["recovery_of"] = what
        self.result["recovery_s"] = None if self.recovery_s is None else round(self.recovery_s, 2)
        self.check(self.recovery_s is not None, f"{what}: not within {bound:.0f} s")

    def check(self, ok: bool, message: str):
        self.checks.append((bool(ok), message))

    # ---- accounting

    def server_counters(self) -> dict:
        """Fleet deltas over the phase. A worker replaced during it contributes its
        old process's last scrape plus everything the new one counted."""
        now = {i: self.s.metrics(self.s.worker(i)) for i in range(1, self.s.n + 1)}
        out = {"dropped": Counter(), "cache_errors": Counter(), "spilled": 0.0, "replayed": 0.0}
        for i in now:
            replaced = self.s.pid(f"worker-{i}") != self.pids0[i]
            parts = [(self.m_last[i], self.m0[i]), (now[i], {})] if replaced else [(now[i], self.m0[i])]
            for after, before in parts:
                for fam in ("inferd_predlog_dropped_total", "inferd_predlog_lost_total"):
                    a, b = self.s.by_label(after, fam, "reason"), self.s.by_label(before, fam, "reason")
                    for reason in a:
                        out["dropped"][reason] += a[reason] - b.get(reason, 0)
                a, b = (self.s.by_label(x, "inferd_cache_errors_total", "kind") for x in (after, before))
                for kind in a:
                    out["cache_errors"][kind] += a[kind] - b.get(kind, 0)
                out["spilled"] += self.s.total(after, "inferd_predlog_spilled_total") - \
                    self.s.total(before, "inferd_predlog_spilled_total")
                out["replayed"] += self.s.total(after, "inferd_predlog_replayed_total") - \
                    self.s.total(before, "inferd_predlog_replayed_total")
        for k in ("dropped", "cache_errors"):
            out[k] = {kind: int(v) for kind, v in out[k].items() if v}
        return out

    def log_lines(self, pattern: str) -> list[str]:
        out = []
        for i, off in self.log_offsets.items():
            with open(self._log(i), "rb") as f:
                f.seek(off)
                text = ANSI.sub("", f.read().decode(errors="replace"))
            out += [f"worker-{i}: {l}" for l in text.splitlines() if re.search(pattern, l)]
        return out

    def nginx_entries(self) -> list[dict]:
        with open(self.s.dir / "nginx-access.log", "rb") as f:
            f.seek(self.nginx_offset)
            lines = f.read().decode(errors="replace").splitlines()
        out = []
        for l in lines:
            try:
                e = json.loads(l)
            except ValueError:
                continue
            if e.get("request_id", "").startswith(self.prefix + "-"):
                out.append(e)
        return out

    def spill_files(self) -> list[Path]:
        return [p for i in range(1, self.s.n + 1) for p in (self.s.dir / f"worker-{i}").glob("spill.jsonl*")]

    def pg_rows(self) -> dict[str, tuple[int, int]]:
        """request id -> (rows, rows with status 200)."""
        out = self.s.psql(
            f"SELECT request_id, count(*), count(*) FILTER (WHERE status = 200) FROM predictions "
            f"WHERE request_id LIKE '{self.prefix}-%' GROUP BY request_id", timeout=60)
        rows = {}
        for line in out.splitlines():
            rid, n, ok = line.split("|")
            rows[rid] = (int(n), int(ok))
        return rows

    def account(self):
        recs = self.load.records
        ok_ids = {r[0] for r in recs if r[4] == "200"}
        outcomes = Counter(r[4] for r in recs)
        failed = {k: v for k, v in outcomes.items() if k != "200"}
        wrong = sum(1 for r in recs if r[5])

        # The log is complete when every 200 has its row, or, short of that, when
        # nothing is left to write anywhere (no spill file, empty buffers) and the
        # count has stopped moving.
        state = {"last": -1}

        def settled():
            if self.spill_files():
                return False
            rows = self.pg_rows()
            have = sum(1 for rid in ok_ids if rows.get(rid, (0, 0))[1] > 0)
            if have == len(ok_ids):
                return rows
            buffered = self.s.total(self.s.fleet(), "inferd_predlog_buffered_records")
            queued = self.s.total(self.s.fleet(), "inferd_predlog_queue_depth")
            quiet = buffered == 0 and queued == 0 and have == state["last"]
            state["last"] = have
            return rows if quiet else False

        t0 = time.monotonic()
        rows, _ = wait_until(settled, P["drain_bound_s"], 1.0)
        self.result["log_settled_s"] = round(time.monotonic() - t0, 2)
        if rows is None:
            rows = self.pg_rows()
            self.check(False, f"prediction log still moving after {P['drain_bound_s']:.0f} s "
                              f"(spill files: {[str(p) for p in self.spill_files()]})")
        time.sleep(0.5)  # a late duplicate would show now
        rows = self.pg_rows()

        lost = sorted(rid for rid in ok_ids if rows.get(rid, (0, 0))[1] == 0)
        dup = sum(n - 1 for n, _ in rows.values() if n > 1)
        extra = sorted(rid for rid in rows if rid not in ok_ids)
        counters = self.server_counters()
        counted = sum(counters["dropped"].values())
        nginx = self.nginx_entries() if self.via == "nginx" else []
        retried = [e for e in nginx if "," in e.get("upstream_status", "")]
        self.result.update(
            requests=len(recs),
            ok=len(ok_ids),
            failed=sum(failed.values()),
            failed_by_kind=dict(sorted(failed.items())),
            wrong_answers=wrong,
            rows_expected=len(ok_ids),
            rows_found=len(ok_ids) - len(lost),
            rows_lost=len(lost),
            lost_counted_by_server=counters["dropped"],
            duplicates=dup,
            rows_for_failed_requests=len(extra),
            cache_errors=counters["cache_errors"],
            spilled=int(counters["spilled"]),
            replayed=int(counters["replayed"]),
            nginx_retried=len(retried),
            load_s=round(self.t["load_end"] - self.t["load"], 2),
            achieved_rps=round(len(recs) / max(1e-9, self.t["load_end"] - self.t["load"]), 1),
        )
        if "fault" in self.t:
            # When each kind of failure happened, from the fault's start: evidence
            # of which stage of the fault (or the recovery) it belongs to.
            windows: dict[str, list[float]] = {}
            for r in recs:
                if r[4] != "200":
                    w = windows.setdefault(r[4], [r[2] - self.t["fault"]] * 2)
                    w[0], w[1] = min(w[0], r[2] - self.t["fault"]), max(w[1], r[2] - self.t["fault"])
            self.result["failed_window_s"] = {k: [round(a, 3), round(b, 3)] for k, (a, b) in windows.items()}
            self.result["timeline_s"] = {k: round(v - self.t["fault"], 3) for k, v in self.t.items()}
        if "fault" in self.t and "end" in self.t:
            self.result["fault_s"] = round(self.t["end"] - self.t["fault"], 2)
        if lost and nginx:
            upstream = {e["request_id"]: e.get("upstream", "").split(",")[-1].strip() for e in nginx}
            self.result["lost_by_upstream"] = dict(Counter(upstream.get(rid, "?") for rid in lost))
        drop_logs = self.log_lines(r"dropped|unreadable spill")
        if drop_logs:
            self.result["notes"].append(f"{len(drop_logs)} log lines about dropped records, first: "
                                        f"{drop_logs[0][:300]}")
        self.result["unexplained_lost"] = max(0, len(lost) - counted)
        lat = sorted(r[3] - r[2] for r in recs if r[4] == "200")
        if lat:
            self.result["latency_ms_200"] = {q: round(1e3 * lat[min(len(lat) - 1, int(f * len(lat)))], 1)
                                             for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}
        self.check(wrong == 0, f"{wrong} answers that do not belong to their input")
        self.check(dup == 0, f"{dup} rows written twice")
        self.check(len(recs) > 0.5 * P["rate"] * P["pre_s"], f"load sent only {len(recs)} requests")
        return lost, counted

    def finish(self):
        self.result["checks_failed"] = [m for ok, m in self.checks if not ok]
        assert not self.result["checks_failed"], f"{self.fault}: " + "; ".join(self.result["checks_failed"])


@pytest.fixture(scope="module")
def inputs():
    return Inputs()


@pytest.fixture(autouse=True)
def mended(stack):
    """Every fault starts on a whole, ready stack, and leaves it whole even when it
    fails half-way (frozen processes resumed, mounts removed, dead parts restarted)."""
    stack.heal()
    yield
    stack.heal()


# ---------------------------------------------------------------- helpers


def shared_hit(stack, inputs: Inputs) -> bool:
    """A fresh instance computed by worker 1 is a hit on workers 2 and 3: their
    in-process L1 never saw it, so the hit came through Redis."""
    _, body, _ = inputs.next()
    w = stack.workers()
    status, first = post_json(w[0] + "/predict", body, timeout=5)
    if status != 200 or first.get("cached") != [False]:
        return False
    # The leader writes Redis after answering: give the write a moment.
    time.sleep(0.05)
    return all(post_json(u + "/predict", body, timeout=5)[1].get("cached") == [True] for u in w[1:])


def pg_backlog_drained(ph: Phase):
    """Every record a worker spilled during the phase is back in PostgreSQL (or
    counted unreadable), no spill file is left, and no writer is near its buffer
    bound any more."""
    def cond():
        if ph.spill_files():
            return False
        for i in range(1, ph.s.n + 1):
            m, m0 = ph.s.metrics(ph.s.worker(i)), ph.m0[i]
            if not m:
                return False
            delta = lambda name, f="": ph.s.total(m, name, f) - ph.s.total(m0, name, f)
            if (delta("inferd_predlog_replayed_total") + delta("inferd_predlog_dropped_total", "spill_corrupt")
                    < delta("inferd_predlog_spilled_total")):
                return False
            if ph.s.total(m, "inferd_predlog_buffered_records") >= 50:
                return False
        return True
    return cond


def expect_no_failures(ph: Phase):
    r = ph.result
    ph.check(r["failed"] == 0, f"{r['failed']} failed requests with healthy workers behind nginx: "
                               f"{r['failed_by_kind']}")


def expect_no_unexplained_loss(ph: Phase, lost, counted):
    r = ph.result
    ph.check(len(lost) <= counted,
             f"{len(lost)} rows lost, {counted} counted by the server "
             f"({r['lost_counted_by_server']}); first lost: {lost[:5]}")


# ---------------------------------------------------------------- faults


def test_redis_killed_and_restarted(stack, campaign, inputs):
    ph = Phase(stack, campaign, "redis-kill", "nginx", stack.nginx, inputs,
               "Redis SIGKILL, restarted after the fault")
    with ph.loaded():
        time.sleep(P["pre_s"])
        pid = stack.pid("redis")
        ph.mark("fault")
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid, 10)
        time.sleep(P["fault_s"])
        stack.redis_start()
        ph.mark("end")
        ph.recover("shared cache hits via Redis on every worker", lambda: shared_hit(stack, inputs),
                   REDIS_RECOVERY_BOUND_S)
        ph.sleep_until(ph.t["end"] + P["post_s"])
    lost, counted = ph.account()
    expect_no_failures(ph)
    expect_no_unexplained_loss(ph, lost, counted)
    ph.check(ph.result["cache_errors"], "no Redis call failed: the fault tested nothing")
    ph.finish()


def test_redis_frozen_then_resumed(stack, campaign, inputs):
    ph = Phase(stack, campaign, "redis-freeze", "nginx", stack.nginx, inputs,
               "Redis SIGSTOP (connections accepted, never answered), SIGCONT after the fault")
    with ph.loaded():
        time.sleep(P["pre_s"])
        ph.mark("fault")
        stack.freeze([stack.pid("redis")])
        time.sleep(P["fault_s"])
        stack.thaw()
        ph.mark("end")
        ph.recover("shared cache hits via Redis on every worker", lambda: shared_hit(stack, inputs),
                   REDIS_RECOVERY_BOUND_S)
        ph.sleep_until(ph.t["end"] + P["post_s"])
    lost, counted = ph.account()
    expect_no_failures(ph)
    expect_no_unexplained_loss(ph, lost, counted)
    ph.check(ph.result["cache_errors"], "no Redis call failed: the fault tested nothing")
    ph.finish()


def pg_fault(stack, campaign, inputs, fault, what, inject, heal, fault_s, before=None, after=None):
    ph = Phase(stack, campaign, fault, "nginx", stack.nginx, inputs, what)
    if before:
        before(ph)
    try:
        with ph.loaded():
            time.sleep(P["pre_s"])
            ph.mark("fault")
            inject()
            time.sleep(fault_s)
            heal()
            ph.mark("end")
            ph.recover("spill replayed and writers' backlog written", pg_backlog_drained(ph),
                       P["drain_bound_s"])
            ph.sleep_until(ph.t["end"] + P["post_s"])
        lost, counted = ph.account()
    finally:
        if after:
            after(ph)
    expect_no_failures(ph)
    ph.check(ph.result["spilled"] > 0, "the outage never reached the spill file: the fault tested nothing")
    return ph, lost, counted


def test_postgres_stopped_and_started(stack, campaign, inputs):
    ph, lost, counted = pg_fault(stack, campaign, inputs, "pg-stop",
                                 "PostgreSQL fast shutdown, started again after the fault",
                                 stack.pg_stop, stack.pg_start, P["fault_s"])
    ph.check(not lost and counted == 0, f"{len(lost)} rows lost, {counted} dropped: an outage with "
                                       f"disk space must lose nothing")
    ph.finish()


def test_postgres_frozen(stack, campaign, inputs):
    ph, lost, counted = pg_fault(stack, campaign, inputs, "pg-freeze",
                                 f"PostgreSQL postmaster and backends SIGSTOPped for {P['pg_freeze_s']:.0f} s",
                                 lambda: stack.freeze(stack.pg_processes()), stack.thaw, P["pg_freeze_s"])
    ph.check(not lost and counted == 0, f"{len(lost)} rows lost, {counted} dropped: an outage with "
                                       f"disk space must lose nothing")
    ph.finish()


def test_spill_disk_full(stack, campaign, inputs):
    dirs = [stack.dir / f"worker-{i}" for i in range(1, stack.n + 1)]

    def before(ph):
        assert not ph.spill_files(), "a spill file from an earlier phase would hide under the mount"
        for d in dirs:
            stack.mount_tmpfs(d, P["tmpfs"])

    def after(ph):
        # Unmount only once the replay emptied the tmpfs: what is left there is
        # reported, not hidden.
        left = ph.spill_files()
        if left:
            ph.result["notes"].append(f"spill files left on the tmpfs: {[str(p) for p in left]}")
        stack.unmount_all()

    ph, lost, counted = pg_fault(stack, campaign, inputs, "spill-disk-full",
                                 f"spill directory on a {P['tmpfs']} tmpfs while PostgreSQL is stopped",
                                 stack.pg_stop, stack.pg_start, P["fault_s"], before, after)
    r = ph.result
    ph.check(counted > 0 and r["lost_counted_by_server"].get("spill_failed", 0) > 0,
             f"the tmpfs never filled (dropped: {r['lost_counted_by_server']}): the fault tested nothing")
    expect_no_unexplained_loss(ph, lost, counted)
    r["notes"].append(f"{len(lost)} rows lost, {counted} counted as dropped by the server "
                      f"({r['lost_counted_by_server']})")
    # Each lost record is counted once: a count above the loss means records
    # counted as dropped were in fact written (a partial spill append).
    ph.check(counted == len(lost),
                     f"server counted {counted} dropped for {len(lost)} rows actually lost")
    ph.finish()


def worker_fault(stack, campaign, inputs, fault, via, sig, what):
    i = 1
    url = stack.nginx if via == "nginx" else stack.worker(i)
    ph = Phase(stack, campaign, fault, via, url, inputs, what)
    pid = stack.pid(f"worker-{i}")
    port = stack.info[f"WORKER_{i}_PORT"]
    with ph.loaded():
        time.sleep(P["pre_s"])
        ph.scrape_before_death(i)
        ph.mark("fault")
        os.kill(pid, sig)
        exited = wait_gone(pid, 60)
        ph.mark("exit")
        ph.check(exited, f"worker {i} (pid {pid}) still running 60 s after {sig.name}")
        ph.result["exit_after_s"] = round(ph.t["exit"] - ph.t["fault"], 2)
        # Restarted as soon as it is gone, as a supervisor would.
        ph.mark("end")
        stack.script("restart-worker", str(i), timeout=READY_TIMEOUT_S + 30)
        stack.pids_seen.add(stack.pid(f"worker-{i}"))
        if via == "nginx":
            ph.recover(f"worker {i} restarted and ready", lambda: get(stack.worker(i) + "/readyz")[0] == 200,
                       READY_TIMEOUT_S)
        else:
            def answered():
                _, body, _ = inputs.next()
                return post_json(stack.worker(i) + "/predict", body, timeout=5)[0] == 200
            ph.recover(f"worker {i} answering again", answered, READY_TIMEOUT_S)
        ph.sleep_until(time.monotonic() + P["post_s"])
    lost, counted = ph.account()
    ph.result["killed_worker"] = f"127.0.0.1:{port}"
    return ph, lost, counted


def test_sigterm_behind_nginx(stack, campaign, inputs):
    ph, lost, counted = worker_fault(stack, campaign, inputs, "sigterm-nginx", "nginx", signal.SIGTERM,
                                     "SIGTERM to worker 1 under load, clients through nginx")
    expect_no_failures(ph)
    ph.check(not lost and counted == 0, f"{len(lost)} rows lost, {counted} dropped after a graceful stop")
    ph.finish()


def test_sigterm_direct(stack, campaign, inputs):
    ph, lost, counted = worker_fault(stack, campaign, inputs, "sigterm-direct", "direct", signal.SIGTERM,
                                     "SIGTERM to worker 1 under load, clients on the worker itself")
    r = ph.result
    # Nothing in front: clients see the drain (503 `draining`, Retry-After), then
    # a closed port, then the new process warming up (503 `not_ready`).
    clean = {"503 draining", "refused", "503 not_ready"}
    # A request sent on an idle keep-alive connection just as the server closes
    # it at the end of the drain: HTTP/1.1's own race, which no server can
    # close for a direct client (nginx retries it: 0 behind nginx). The
    # draining 503s say `Connection: close` and the accept queue is swept, so
    # it is rare (1 in ~1,700 in one CI run of six): a handful at most, and
    # every one in the report; more would mean the drain itself is wrong.
    keepalive_race = {"broken pipe", "reset", "closed without response"}
    ph.check(set(r["failed_by_kind"]) <= clean | keepalive_race,
             f"failures other than {sorted(clean | keepalive_race)}: {r['failed_by_kind']}")
    raced = {k: v for k, v in r["failed_by_kind"].items() if k in keepalive_race}
    ph.check(sum(raced.values()) <= 3, f"requests failed on keep-alive connections closed at the end of "
                                       f"the drain: {raced}")
    ph.check(not lost and counted == 0, f"{len(lost)} rows lost, {counted} dropped after a graceful stop")
    ph.finish()


def test_sigkill_behind_nginx(stack, campaign, inputs):
    ph, lost, counted = worker_fault(stack, campaign, inputs, "sigkill-nginx", "nginx", signal.SIGKILL,
                                     "SIGKILL to worker 1 under load, clients through nginx")
    r = ph.result
    expect_no_failures(ph)
    # A killed process can count nothing: what it still held in its channel,
    # buffer or unfinished INSERT is gone. Such a row is explained if nginx says
    # the killed worker answered it, within KILL_WINDOW_S before the kill.
    by_id = {rec[0]: rec for rec in ph.load.records}
    upstream = {e["request_id"]: e.get("upstream", "") for e in ph.nginx_entries()}
    explained = [rid for rid in lost
                 if upstream.get(rid, "").split(",")[-1].strip() == r["killed_worker"]
                 and ph.t["fault"] - KILL_WINDOW_S <= by_id[rid][3] <= ph.t["fault"] + 0.05]
    unexplained = sorted(set(lost) - set(explained))
    r["lost_explained"] = len(explained)
    if lost:
        r["lost_age_max_s"] = round(max(ph.t["fault"] - by_id[rid][3] for rid in lost), 3)
    r["unexplained_lost"] = max(0, len(unexplained) - counted)
    if lost:
        r["notes"].append(f"{len(explained)} rows lost with the killed process: answered by it at most "
                          f"{r['lost_age_max_s']} s before SIGKILL, still in its memory")
    ph.check(len(unexplained) <= counted,
             f"{len(unexplained)} lost rows not held by the killed worker: {unexplained[:5]} "
             f"(upstreams {[upstream.get(x) for x in unexplained[:5]]})")
    ph.finish()


def test_sigterm_while_postgres_frozen(stack, campaign, inputs):
    """Not in the issue's list: the two faults at once. The README promises that
    at shutdown the writer writes for a third of the grace period, then spills
    the rest for the next start. A database that hangs (rather than refuses)
    holds the writer's in-flight INSERT, and the spill never comes."""
    i = 1
    ph = Phase(stack, campaign, "sigterm-pg-frozen", "nginx", stack.nginx, inputs,
               "SIGTERM to worker 1 while PostgreSQL is SIGSTOPped, clients through nginx")
    pid = stack.pid(f"worker-{i}")
    with ph.loaded():
        time.sleep(P["pre_s"])
        ph.mark("fault")
        stack.freeze(stack.pg_processes())
        time.sleep(P["fault_s"])
        ph.scrape_before_death(i)
        ph.mark("sigterm")
        os.kill(pid, signal.SIGTERM)
        exited = wait_gone(pid, 60)
        ph.mark("exit")
        ph.check(exited, f"worker {i} (pid {pid}) still running 60 s after SIGTERM")
        ph.result["exit_after_s"] = round(ph.t["exit"] - ph.t["sigterm"], 2)
        stack.thaw()
        ph.mark("end")
        stack.script("restart-worker", str(i), timeout=READY_TIMEOUT_S + 30)
        stack.pids_seen.add(stack.pid(f"worker-{i}"))
        ph.recover("PostgreSQL back, spill replayed, worker 1 ready",
                   lambda: not ph.spill_files() and get(stack.worker(i) + "/readyz")[0] == 200,
                   P["drain_bound_s"])
        ph.sleep_until(time.monotonic() + P["post_s"])
    lost, counted = ph.account()
    expect_no_failures(ph)
    ph.check(len(lost) <= counted,
                     f"{len(lost)} rows lost and {counted} counted: records the stopping worker held "
                     f"were neither written nor spilled (by upstream: {ph.result.get('lost_by_upstream')})")
    ph.finish()

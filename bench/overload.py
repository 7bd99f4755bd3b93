#!/usr/bin/env python3
"""Overload benchmark: static limits beside adaptive admission, same run.

For each model and each admission mode it starts the release server pinned
to core 0 with the binary's defaults (cache and prediction log off, so every
request reaches the model; in static mode, as before adaptive admission, no
pause after a refusal either), and drives it with inferd-bench pinned to core 1:

- capacity: closed loop, 16 connections (measured once per model, in static
  mode; every later rate is a multiple of it);
- low load: open loop at 10% of capacity (p50); the p50 target compares the
  medians of three runs per mode taken in turns against both servers at once;
- open loop at 1.2x, 2x and 5x capacity: 2xx/s, admitted p99, 429 p99,
  connect errors, 5xx, how far the generator fell behind;
- closed loop at 10x and 64x the capacity run's connections (160, 1024).

    bench/overload.py [--seconds 5] [--models text-classifier,lstm-forecaster]
                      [--json bench/out/overload.json]

Prints a Markdown table per model, with each target's verdict. Needs
`cargo build --release --bins` (it runs target/release/inferd and
inferd-bench) and two cores.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "target/release/inferd")
BENCH = os.path.join(ROOT, "target/release/inferd-bench")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The server on core 0 with one model and the binary's defaults."""

    def __init__(self, model, mode, log_dir, extra_env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("INFERD_"):
                del env[k]
        env.update(
            INFERD_LISTEN=f"127.0.0.1:{self.port}",
            # Two servers run at once for the low-load comparison.
            INFERD_GRPC_LISTEN="127.0.0.1:0",
            INFERD_MODELS_DIR=os.path.join(ROOT, "models"),
            INFERD_CACHE="off",
            INFERD_PREDLOG="off",
            INFERD_ADMISSION=mode,
            RUST_LOG="warn",
        )
        env.update(extra_env or {})
        if "ORT_DYLIB_PATH" not in env:
            lib = os.path.join(ROOT, ".ort/lib")
            found = sorted(f for f in os.listdir(lib) if f.startswith("libonnxruntime.so"))
            env["ORT_DYLIB_PATH"] = os.path.join(lib, found[-1])
        self.log = open(os.path.join(log_dir, f"server-{model}-{mode}.log"), "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", SERVER], env=env, stdout=self.log, stderr=self.log
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"server exited early; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"server not ready in 120 s; see {self.log.name}")

    def series(self, name, where=""):
        """The values (as text) of the series whose line starts with `name`
        and contains `where` (a label, say), in /metrics order."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            return [line.rsplit(" ", 1)[1] for line in r.read().decode().splitlines()
                    if line.startswith(name) and where in line]

    def metric(self, name):
        values = self.series(name)
        return values[0] if values else None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def bench(server, model, secs, *, rate=None, connections=None):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = ["taskset", "-c", "1", BENCH, "--url", server.url, "--model", model,
               "--models-dir", os.path.join(ROOT, "models"), "-d", f"{secs}s",
               "--warmup", "1s", "--quiet", "--json", out.name]
        if rate:
            cmd += ["--rate", str(int(rate))]
        else:
            cmd += ["-c", str(connections)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def summary(r):
    by = r.get("latency_ms_by_status", {})
    errs = r.get("errors_by_status", {})
    lag = r.get("send_lag_ms") or {}
    return {
        # 2xx answers received while measuring: an open loop the server fell
        # behind is answered after the run's end, and counting its requests by
        # when they were due would read as the rate asked.
        "ok_rps": r["delivered_goodput_rps"],
        "p50": (by.get("200") or {}).get("p50"),
        "p99": (by.get("200") or {}).get("p99"),
        "p99_429": (by.get("429") or {}).get("p99"),
        "n_429": errs.get("429", 0),
        "connect_errors": errs.get("connect_error", 0),
        "timeouts": errs.get("timeout", 0),
        "n_5xx": sum(v for k, v in errs.items() if k.startswith("5")),
        "lag_p99": lag.get("p99"),
        "lag_max": lag.get("max"),
    }


def prepare(json_path):
    """Checks the binaries are built and makes the output folder, where the
    servers' logs go too; returns it."""
    for exe in (SERVER, BENCH):
        if not os.path.exists(exe):
            sys.exit(f"{exe} missing: run cargo build --release --bins")
    log_dir = os.path.dirname(json_path)
    os.makedirs(log_dir, exist_ok=True)
    return log_dir


# The "before" beside adaptive admission: static limits as they were, with no
# pause after a refusal either (`INFERD_REFUSED_PAUSE_MAX_MS`).
BEFORE_ENV = {"static": {"INFERD_REFUSED_PAUSE_MAX_MS": "0"}}


def run_mode(model, mode, secs, cap, log_dir):
    server = Server(model, mode, log_dir, extra_env=BEFORE_ENV.get(mode))
    rows = {}
    try:
        if cap is None:
            rows["capacity"] = summary(bench(server, model, secs, connections=16))
            cap = rows["capacity"]["ok_rps"]
        rows["low (0.1x)"] = summary(bench(server, model, secs, rate=0.1 * cap))
        for x in (1.2, 2.0, 5.0):
            rows[f"open {x}x"] = summary(bench(server, model, secs, rate=x * cap))
        for c in (160, 1024):
            rows[f"closed {c} conns"] = summary(bench(server, model, secs, connections=c))
        rows["limit"] = server.metric("inferd_queue_limit")
    finally:
        server.stop()
    return cap, rows


# Low-load runs per mode for the p50 comparison: one run each read as a
# difference of up to 10% between identical settings on this VM (text, 0.1x:
# static p50s of 0.487-0.583 ms in four runs, adaptive 0.546-0.569).
LOW_ROUNDS = 3


def low_load_ab(model, secs, cap, log_dir):
    """Median low-load p50 per mode, from LOW_ROUNDS runs against each, taking
    turns, with both servers up at once on core 0 (the idle one costs nothing),
    so that both modes see the same machine at the same times."""
    servers = {}
    p50s = {"static": [], "adaptive": []}
    try:
        for m in p50s:
            # Inside the `try`: a server that fails to start (it exits) must
            # not leave the one started before it running.
            servers[m] = Server(model, m, log_dir, extra_env=BEFORE_ENV.get(m))
        for m, s in servers.items():
            bench(s, model, 2, connections=16)
        for i in range(LOW_ROUNDS):
            order = ("static", "adaptive") if i % 2 == 0 else ("adaptive", "static")
            for m in order:
                p50s[m].append(summary(bench(servers[m], model, secs, rate=0.1 * cap))["p50"])
    finally:
        for s in servers.values():
            s.stop()
    return {m: sorted(v)[len(v) // 2] if None not in v else None for m, v in p50s.items()}, p50s


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}{unit}" if v >= 100 else f"{v:.2f}{unit}"
    return f"{v}{unit}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--models", default="text-classifier,lstm-forecaster")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench/out/overload.json"))
    args = ap.parse_args()
    log_dir = prepare(args.json)
    results = {}
    for model in args.models.split(","):
        cap, static = run_mode(model, "static", args.seconds, None, log_dir)
        _, adaptive = run_mode(model, "adaptive", args.seconds, cap, log_dir)
        low, low_runs = low_load_ab(model, args.seconds, cap, log_dir)
        results[model] = {"capacity_rps": cap, "static": static, "adaptive": adaptive,
                          "low_load_p50_runs": low_runs}
        report(model, cap, static, adaptive, low, low_runs)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


def report(model, cap, static, adaptive, low_ab, low_runs):
    base = static["capacity"]
    print(f"\n### {model}: capacity {cap:,.0f} req/s, p99 {base['p99']} ms "
          f"(closed loop, 16 connections)\n")
    print("| run | mode | 2xx/s | % of capacity | admitted p50 ms | admitted p99 ms "
          "| 429 p99 ms | 429s | connect errors | 5xx | generator lag p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in [k for k in adaptive if k != "limit"]:
        for mode, rows in (("static", static), ("adaptive", adaptive)):
            r = rows[run]
            print(f"| {run} | {mode} | {fmt(r['ok_rps'])} | {100 * r['ok_rps'] / cap:.0f}% "
                  f"| {fmt(r['p50'])} | {fmt(r['p99'])} | {fmt(r['p99_429'])} | {r['n_429']} "
                  f"| {r['connect_errors']} | {r['n_5xx']} | {fmt(r['lag_p99'])} |")
    print(f"\nAdaptive queue limit at the end: {adaptive['limit']} instances.\n")
    runs = "; ".join(f"{m} {', '.join(fmt(v) for v in p)}" for m, p in low_runs.items())
    print(f"Low load (0.1x), {LOW_ROUNDS} runs per mode taking turns, both servers up: "
          f"p50 ms {runs}.\n")
    print("Targets (adaptive):")
    low, low_static = low_ab["adaptive"], low_ab["static"]
    checks = []
    for x in ("1.2", "2.0", "5.0"):
        r = adaptive[f"open {x}x"]
        checks += [
            (f"open {x}x: 2xx/s >= 90% of capacity", r["ok_rps"] >= 0.9 * cap),
            (f"open {x}x: admitted p99 <= 3x the p99 at capacity ({3 * base['p99']:.2f} ms)",
             r["p99"] is not None and r["p99"] <= 3 * base["p99"]),
            (f"open {x}x: 429 p99 <= 20 ms", r["p99_429"] is None or r["p99_429"] <= 20),
            (f"open {x}x: no connect errors, no 5xx", r["connect_errors"] == 0 and r["n_5xx"] == 0),
        ]
    for c in (160, 1024):
        r = adaptive[f"closed {c} conns"]
        checks.append((f"closed {c} connections: 2xx/s >= 90% of capacity",
                       r["ok_rps"] >= 0.9 * cap))
    checks.append((f"low load p50 within 2% of static (medians: {low} against {low_static} ms)",
                   low is not None and low_static is not None and low <= low_static * 1.02))
    for text, ok in checks:
        print(f"- [{'x' if ok else ' '}] {text}")


if __name__ == "__main__":
    main()

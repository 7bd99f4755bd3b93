#!/usr/bin/env python3
"""Step benchmark: the model's cost doubles mid-run, and the adaptive limit
must follow (issue 26).

The release server runs pinned to core 0 with the binary's defaults (cache and
prediction log off) and `inferd-bench` pinned to core 1. The steps:

1. capacity: closed loop, 16 connections, before any hog;
2. the adaptive run: an open loop at `--load` x that capacity for `--seconds`;
   a third of the way in, a CPU hog (a busy shell loop) starts on core 0
   beside the server, which halves the server's share of the core, so every
   request costs it twice the wall time. `inferd_queue_limit` is read every
   200 ms. The limit has settled at the first second after which the median
   of every second's readings stays within 25% of the median of the run's
   last quarter; goodput after the step is the 2xx answers per second from
   settling to the end;
3. the static sweep, the hog running throughout: the same open loop for
   `--sweep-seconds` with `INFERD_ADMISSION=static` and each queue bound in
   `--bounds`. Its best goodput is what the adaptive limit is held to.

    bench/step.py [--model text-classifier] [--seconds 30] [--load 1.5]
                  [--sweep-seconds 8] [--bounds 8,32,128,512]
                  [--json bench/out/step.json]

Prints the timeline (limit and 2xx/s per second), the sweep, and the two
targets: the limit settles within 10 s of the step, and goodput after it is
at least 95% of the best static bound's. Needs `cargo build --release --bins`
and two cores.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overload import BENCH, ROOT, Server, bench, prepare  # noqa: E402


class Hog:
    """A busy loop on core 0, ended by its PID."""

    def __init__(self):
        self.proc = subprocess.Popen(["taskset", "-c", "0", "sh", "-c", "while :; do :; done"])

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def open_loop(server, model, rate, secs, out):
    """inferd-bench in an open loop, its JSON report written to `out`."""
    cmd = ["taskset", "-c", "1", BENCH, "--url", server.url, "--model", model,
           "--models-dir", os.path.join(ROOT, "models"), "-d", f"{secs}s",
           "--warmup", "1s", "--quiet", "--json", out, "--rate", str(int(rate))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def queue_limit(server, model):
    """The model's adaptive queue limit: the largest over its versions (only
    the version served has traffic; the others read -1, unmeasured)."""
    values = [float(v) for v in server.series("inferd_queue_limit{", f'model="{model}"')]
    return max(values) if values else None


def poll_limit(server, model, stop, readings, t0):
    while not stop.is_set():
        try:
            readings.append((time.monotonic() - t0, queue_limit(server, model)))
        except OSError:
            pass
        stop.wait(0.2)


def goodput_between(report, start_s, end_s):
    """2xx answers per second of the requests started in [start_s, end_s)."""
    rows = [r for r in report["answers_per_s"] if start_s <= r[0] < end_s]
    return statistics.fmean(r[1] for r in rows) if rows else 0.0


def settle_time(readings, step_s):
    """Seconds after the step until the limit's median over each second stays
    within 25% of its median over the run's last quarter, or None if it never
    does. Medians per second, because single readings dip while a batch is
    being taken."""
    after = [(t, v) for t, v in readings if t >= step_s and v is not None and v >= 0]
    if not after:
        return None
    end = after[-1][0]
    final = statistics.median(v for t, v in after if t >= end - (end - step_s) / 4)
    seconds = {}
    for t, v in after:
        seconds.setdefault(int(t - step_s), []).append(v)
    settled = None
    for sec in sorted(seconds):
        if abs(statistics.median(seconds[sec]) - final) <= 0.25 * max(final, 1.0):
            if settled is None:
                settled = sec
        else:
            settled = None
    return settled


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="text-classifier")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--load", type=float, default=1.5)
    ap.add_argument("--sweep-seconds", type=int, default=8)
    ap.add_argument("--bounds", default="8,32,128,512")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench/out/step.json"))
    args = ap.parse_args()
    log_dir = prepare(args.json)

    server = Server(args.model, "adaptive", log_dir)
    hog = None
    try:
        cap = bench(server, args.model, 4, connections=16)["delivered_goodput_rps"]
        rate = args.load * cap
        step_s = 1 + args.seconds / 3  # the bench's warm-up, then a third of the run
        readings, stop = [], threading.Event()
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            t0 = time.monotonic()
            load = open_loop(server, args.model, rate, args.seconds, out.name)
            poller = threading.Thread(target=poll_limit, args=(server, args.model, stop, readings, t0))
            poller.start()
            time.sleep(step_s)
            hog = Hog()
            load.wait()
            stop.set()
            poller.join()
            report = json.load(open(out.name))
    finally:
        server.stop()
    # The report's windows count from the end of the warm-up.
    step_in_report = step_s - 1
    settle = settle_time(readings, step_s)
    settled_at = step_in_report + (settle if settle is not None else args.seconds)
    adaptive_after = goodput_between(report, settled_at, args.seconds)
    before = goodput_between(report, 1, step_in_report)

    sweep = {}
    try:
        for bound in [int(b) for b in args.bounds.split(",")]:
            s = Server(args.model, "static", log_dir, {"INFERD_MAX_QUEUE": str(bound)})
            try:
                with tempfile.NamedTemporaryFile(suffix=".json") as out:
                    open_loop(s, args.model, rate, args.sweep_seconds, out.name).wait()
                    r = json.load(open(out.name))
                ok = (r.get("latency_ms_by_status") or {}).get("200") or {}
                sweep[bound] = {"goodput": r["delivered_goodput_rps"], "p99": ok.get("p99")}
            finally:
                s.stop()
    finally:
        if hog:
            hog.stop()

    print(f"\n### {args.model}: capacity {cap:,.0f} req/s (closed loop, 16 connections); "
          f"open loop at {rate:,.0f} req/s ({args.load}x) for {args.seconds} s; "
          f"CPU hog on the server's core from {step_in_report:.0f} s\n")
    print("| second | queue limit (instances) | 2xx/s |")
    print("|---|---|---|")
    for sec in range(int(args.seconds)):
        lim = [v for t, v in readings if sec <= t - 1 < sec + 1 and v is not None]
        mark = " (hog starts)" if sec == int(step_in_report) else ""
        print(f"| {sec}{mark} | {statistics.median(lim) if lim else '-':} "
              f"| {goodput_between(report, sec, sec + 1):,.0f} |")
    print("\nStatic bounds with the hog running (`INFERD_ADMISSION=static`, "
          f"{args.sweep_seconds} s each, same rate):\n")
    print("| INFERD_MAX_QUEUE | 2xx/s | admitted p99 ms |")
    print("|---|---|---|")
    for bound, r in sweep.items():
        print(f"| {bound} | {r['goodput']:,.0f} | {r['p99']} |")
    best = max(r["goodput"] for r in sweep.values())
    print(f"\nAdaptive: 2xx/s {before:,.0f} before the step, {adaptive_after:,.0f} after "
          f"settling; best static bound {best:,.0f}.")
    checks = [
        (f"the limit settles within 10 s of the step ({'never' if settle is None else f'{settle:.1f} s'})",
         settle is not None and settle <= 10),
        (f"goodput after settling >= 95% of the best static bound's "
         f"({100 * adaptive_after / best:.0f}%)", adaptive_after >= 0.95 * best),
    ]
    for text, ok in checks:
        print(f"- [{'x' if ok else ' '}] {text}")
    with open(args.json, "w") as f:
        json.dump({"capacity_rps": cap, "rate": rate, "step_s": step_in_report,
                   "limit": readings, "settle_s": settle, "goodput_before": before,
                   "goodput_after": adaptive_after, "sweep": sweep}, f, indent=1)


if __name__ == "__main__":
    main()

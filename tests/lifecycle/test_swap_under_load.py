"""The headline figure: a model version swapped in and out while both models
serve a steady closed-loop load, with no failed request and p99 within 2x of
the same load without a swap.

The server starts with text-classifier 1 and lstm-forecaster 1. Two
`inferd-bench` processes (one per model, 8 connections each) run a baseline
phase, then a swap phase during which text-classifier 2 is copied in and
loaded (it becomes the default), and later the policy goes back to version 1
only. Requests name no version, so they follow the default.

Payloads: the bench sends models/<model>/1/golden.json `input`. For
text-classifier that is the cleaned plain text version 1 takes; version 2 takes
raw RFC 822 or plain text, so the same bodies are valid for both and cost about
the same on both (measured: v1 ~6.3k req/s, v2 ~7.2k req/s at -c 8 on its own).
Sending version 2's raw emails would be invalid for neither but would make the
swap phase slower by the email parsing alone, which is not what this measures.
The cache is off, so every request runs the model.
"""

import json
import time

from conftest import CpuMeter, add_version, copy_models, figures, write_figures

BASELINE_S = 10
SWAP_S = 30
LOAD_V2_AT_S = 5  # into the swap phase's measured part
BACK_TO_V1_AT_S = 18
CONNECTIONS = 8
MODELS = ("text-classifier", "lstm-forecaster")
P99_FACTOR = 2.0


def sleep_until(t: float):
    time.sleep(max(0.0, t - time.monotonic()))


def window_p99_max(report: dict, start_s: float, end_s: float) -> float:
    """The worst 100 ms window p99 (ms) of the report's timeline within [start, end)."""
    vals = [w[3] for w in report["timeline"] if start_s <= w[0] < end_s]
    return max(vals) if vals else 0.0


# The p99 comparison holds a phase against another on one machine; when other
# processes took more than this share of the machine's CPU during either phase
# the comparison says more about them than about the swap, and the scenario
# runs once more on a fresh server (the figures of both attempts are kept).
BUSY_SHARE = 0.10
ATTEMPTS = 2


def run_scenario(start_server, models_dir, benches, reports) -> dict:
    server = start_server(models_dir, INFERD_MODEL_CONTROL="on")
    assert server.states("text-classifier") == {"1": "READY"}, server.index()
    assert server.states("lstm-forecaster") == {"1": "READY"}, server.index()

    # Baseline: both models, no lifecycle activity.
    cpu = CpuMeter(server.pid)
    base = {m: benches(server, m, BASELINE_S, reports / f"baseline-{m}.json",
                       connections=CONNECTIONS) for m in MODELS}
    base = {m: b.wait() for m, b in base.items()}
    base_cpu = cpu.stop()
    v2_before = server.metric_sum("inferd_requests_total", model="text-classifier", version="2")

    # Swap phase.
    cpu = CpuMeter(server.pid)
    swap = {m: benches(server, m, SWAP_S, reports / f"swap-{m}.json", connections=CONNECTIONS)
            for m in MODELS}
    t0 = max(b.measuring_from for b in swap.values())

    sleep_until(t0 + LOAD_V2_AT_S)
    add_version(server.models_dir, "text-classifier", 2)
    t = time.monotonic()
    load_v2 = server.load("text-classifier")
    load_v2_s = time.monotonic() - t
    load_v2_at = t - t0
    states_after_load = server.states("text-classifier")
    # A request naming no version now gets version 2.
    probe = server.predict("text-classifier", ["Subject: lunch\n\nNoon at the usual place?"])

    sleep_until(t0 + BACK_TO_V1_AT_S - 1)
    v2_served = server.metric_sum("inferd_requests_total", model="text-classifier",
                                  version="2") - v2_before
    sleep_until(t0 + BACK_TO_V1_AT_S)
    t = time.monotonic()
    back_to_v1 = server.load("text-classifier",
                             config={"version_policy": {"specific": {"versions": [1]}}})
    back_to_v1_s = time.monotonic() - t
    back_to_v1_at = t - t0
    states_after_unload = server.states("text-classifier")
    time.sleep(1)  # requests already inside version 2 finish
    v2_after_unload = server.metric_sum("inferd_requests_total", model="text-classifier",
                                        version="2")

    swap = {m: b.wait() for m, b in swap.items()}
    swap_cpu = cpu.stop()
    v2_at_end = server.metric_sum("inferd_requests_total", model="text-classifier", version="2")
    swap_hist = {
        "count": server.metric_sum("inferd_model_swap_seconds_count", model="text-classifier"),
        "sum_s": server.metric_sum("inferd_model_swap_seconds_sum", model="text-classifier"),
    }
    assert server.alive(), server.log_tail()
    server.stop()

    result = {
        "phases": {
            "baseline": {m: figures(r) for m, r in base.items()},
            "swap": {m: figures(r) for m, r in swap.items()},
        },
        "cpu": {"baseline": base_cpu, "swap": swap_cpu},
        "swap_phase_worst_100ms_window_p99_ms": {
            m: {
                "around_load_v2": window_p99_max(r, load_v2_at - 0.5, load_v2_at + load_v2_s + 1),
                "around_back_to_v1": window_p99_max(r, back_to_v1_at - 0.5,
                                                    back_to_v1_at + back_to_v1_s + 1),
            } for m, r in swap.items()
        },
        "load_v2": {"status": load_v2.status, "at_s": round(load_v2_at, 2),
                    "took_s": round(load_v2_s, 3)},
        "back_to_v1": {"status": back_to_v1.status, "at_s": round(back_to_v1_at, 2),
                       "took_s": round(back_to_v1_s, 3)},
        "inferd_model_swap_seconds": swap_hist,
        "text_classifier_v2_responses": v2_at_end - v2_before,
        "p99_ratio_swap_over_baseline": {
            m: round(swap[m]["latency_ms"]["p99"] / base[m]["latency_ms"]["p99"], 3)
            for m in MODELS},
    }
    checks = {
        "load_v2": load_v2, "back_to_v1": back_to_v1, "states_after_load": states_after_load,
        "probe": probe, "states_after_unload": states_after_unload, "v2_served": v2_served,
        "v2_after_unload": v2_after_unload, "v2_at_end": v2_at_end, "base": base, "swap": swap,
        "log": server.log_tail(),
    }
    return result, checks


def print_figures(n: int, result: dict):
    print(f"\nswap under load, attempt {n} ({CONNECTIONS} connections per model, cache off)")
    print(f"{'phase':<9} {'model':<16} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'p99.9 ms':>9} {'max ms':>8} {'errors':>7}")
    for phase, reps in result["phases"].items():
        for m, f in reps.items():
            print(f"{phase:<9} {m:<16} {f['requests']:>9} {f['rps']:>9.1f} {f['p50_ms']:>8.3f}"
                  f" {f['p99_ms']:>8.3f} {f['p999_ms']:>9.3f} {f['max_ms']:>8.3f}"
                  f" {f['requests'] - f['ok']:>7}")
    lv, bv = result["load_v2"], result["back_to_v1"]
    print(f"load v2: {lv['status']} at {lv['at_s']:.2f}s, took {lv['took_s']:.3f}s; "
          f"back to v1: {bv['status']} at {bv['at_s']:.2f}s, took {bv['took_s']:.3f}s")
    print(f"p99 swap/baseline: {result['p99_ratio_swap_over_baseline']}; "
          f"text-classifier v2 responses: {result['text_classifier_v2_responses']:.0f}")
    print("worst 100 ms window p99 around the swaps: "
          + json.dumps(result["swap_phase_worst_100ms_window_p99_ms"]))
    print("CPU: " + json.dumps(result["cpu"]))


def test_swap_under_load(start_server, benches, tmp_path):
    attempts = []
    for n in range(1, ATTEMPTS + 1):
        models_dir = copy_models(tmp_path / f"models-{n}", without=(("text-classifier", 2),))
        result, checks = run_scenario(start_server, models_dir, benches, tmp_path / f"bench-{n}")
        attempts.append(result)
        # The figures, printed and written before any assertion, so a failure shows them.
        print_figures(n, result)
        path = write_figures("swap.json", {
            "connections_per_model": CONNECTIONS, "baseline_s": BASELINE_S, "swap_s": SWAP_S,
            "attempts": attempts})
        print(f"figures in {path}")

        # What must hold on any machine, however busy.
        load_v2, back_to_v1 = checks["load_v2"], checks["back_to_v1"]
        assert load_v2.status == 200, (load_v2, checks["log"])
        assert isinstance(load_v2.json(), dict), load_v2  # the contract says {}; details may be added
        assert back_to_v1.status == 200, (back_to_v1, checks["log"])
        assert checks["states_after_load"] == {"1": "READY", "2": "READY"}, checks
        probe = checks["probe"]
        assert probe.status == 200 and probe.json()["version"] == "2", probe
        assert checks["states_after_unload"].get("1") == "READY", checks["states_after_unload"]
        assert checks["states_after_unload"].get("2") != "READY", checks["states_after_unload"]
        for phase in ("base", "swap"):
            for m, r in checks[phase].items():
                assert r["requests"] > 0, (phase, m, r["requests"])
                assert r["ok"] == r["requests"] and not r["errors_by_status"], \
                    f"{phase} {m}: non-2xx or failed requests {r['errors_by_status']}"
        assert checks["v2_served"] > 0, \
            "no request that named no version was answered by text-classifier 2"
        assert checks["v2_at_end"] == checks["v2_after_unload"], \
            f"text-classifier 2 answered {checks['v2_at_end'] - checks['v2_after_unload']} " \
            f"requests after its unload"

        # The latency comparison.
        slow = {m: ratio for m, ratio in result["p99_ratio_swap_over_baseline"].items()
                if ratio > P99_FACTOR}
        if not slow:
            return
        busy = max(c["others_cpu_share"] for c in result["cpu"].values())
        if busy <= BUSY_SHARE or n == ATTEMPTS:
            break
        print(f"p99 over {P99_FACTOR}x baseline for {slow} while other processes took "
              f"{busy:.0%} of the CPU: once more on a fresh server")
    raise AssertionError(
        f"p99 during the swap over {P99_FACTOR}x the baseline p99: {slow} "
        f"(attempt {len(attempts)}; CPU {attempts[-1]['cpu']})")

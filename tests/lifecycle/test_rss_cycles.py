"""Memory across load/unload cycles: twenty cycles must not grow the process.

A cycle loads text-classifier with versions [1, 2] (version 2 is on disk from
the start of the test but not served), sends a few requests to each version so
that both versions' sessions have really run, and loads back to [1] only.

The baseline is RSS after the first cycle, not before it: the first load of a
second version grows the allocator's arenas and ONNX Runtime's per-process
state (thread pools, kernel registries, the arena of the first session of a new
graph) once, and a process that returns memory to the allocator does not
necessarily return it to the kernel. What must hold is that later cycles reuse
that memory: RSS after cycle 20 within 10% of RSS after cycle 1. A leak of one
version's sessions per cycle (about the size of a loaded text-classifier, tens
of MiB) would exceed that within a few cycles.
"""

import time

from conftest import add_version, golden_inputs, write_figures

CYCLES = 20
TOLERANCE = 0.10
BOTH = {"version_policy": {"specific": {"versions": [1, 2]}}}
ONLY_V1 = {"version_policy": {"specific": {"versions": [1]}}}


def settle_rss(server) -> int:
    """VmRSS (KiB) once the dropped versions' sessions are gone: a short pause,
    then the lowest of a few readings."""
    time.sleep(0.5)
    readings = []
    for _ in range(3):
        readings.append(server.rss_kib())
        time.sleep(0.1)
    return min(readings)


def test_rss_after_twenty_load_unload_cycles(start_server, models_without_v2):
    server = start_server(models_without_v2, INFERD_MODEL_CONTROL="on")
    add_version(server.models_dir, "text-classifier", 2)
    texts = golden_inputs("text-classifier")[:8]
    rss_start = server.rss_kib()

    rss = []
    load_s = []
    for cycle in range(1, CYCLES + 1):
        t = time.monotonic()
        r = server.load("text-classifier", config=BOTH)
        load_s.append(time.monotonic() - t)
        assert r.status == 200, (cycle, r, server.log_tail())
        for v in (1, 2):
            p = server.predict("text-classifier", texts, version=v)
            assert p.status == 200 and p.json()["version"] == str(v), (cycle, v, p)
        assert server.predict("text-classifier", texts).json()["version"] == "2"

        r = server.load("text-classifier", config=ONLY_V1)
        assert r.status == 200, (cycle, r, server.log_tail())
        gone = server.predict("text-classifier", texts, version=2)
        assert gone.status == 404, (cycle, "version 2 still answers after going back to [1]", gone)
        p = server.predict("text-classifier", texts)
        assert p.status == 200 and p.json()["version"] == "1", (cycle, p)
        rss.append(settle_rss(server))

    assert server.alive(), server.log_tail()
    base, last = rss[0], rss[-1]
    growth = (last - base) / base
    result = {
        "cycles": CYCLES,
        "rss_kib_at_start": rss_start,
        "rss_kib_after_each_cycle": rss,
        "rss_kib_after_cycle_1": base,
        "rss_kib_after_last_cycle": last,
        "growth_after_cycle_1": round(growth, 4),
        "load_both_took_s": {"min": round(min(load_s), 3), "max": round(max(load_s), 3),
                             "mean": round(sum(load_s) / len(load_s), 3)},
    }
    path = write_figures("rss.json", result)
    print(f"\nRSS over {CYCLES} load [1,2] / load [1] cycles of text-classifier "
          f"(figures in {path})")
    print(f"  at start {rss_start / 1024:.1f} MiB; after cycle 1 {base / 1024:.1f} MiB; "
          f"after cycle {CYCLES} {last / 1024:.1f} MiB; growth {growth * 100:+.2f}% "
          f"(limit {TOLERANCE * 100:.0f}%)")
    print("  per cycle (MiB): " + " ".join(f"{v / 1024:.1f}" for v in rss))
    print(f"  load [1,2] took {result['load_both_took_s']}")
    assert last <= base * (1 + TOLERANCE), \
        f"RSS grew {growth * 100:.1f}% from cycle 1 ({base} KiB) to cycle {CYCLES} ({last} KiB)"


def test_rss_after_twenty_unload_load_cycles_of_the_whole_model(start_server, models_without_v2):
    """The same for unload/load of the whole model (every version leaves and comes back)."""
    server = start_server(models_without_v2, INFERD_MODEL_CONTROL="on")
    add_version(server.models_dir, "text-classifier", 2)
    texts = golden_inputs("text-classifier")[:8]
    rss = []
    for cycle in range(1, CYCLES + 1):
        r = server.unload("text-classifier")
        assert r.status == 200, (cycle, r, server.log_tail())
        gone = server.predict("text-classifier", texts)
        assert gone.status in (404, 503), (cycle, "unloaded model still answers", gone)
        assert server.predict("lstm-forecaster", golden_inputs("lstm-forecaster")[:2]).status == 200
        r = server.load("text-classifier")
        assert r.status == 200, (cycle, r, server.log_tail())
        p = server.predict("text-classifier", texts)
        assert p.status == 200 and p.json()["version"] == "2", (cycle, p)
        rss.append(settle_rss(server))
    assert server.alive(), server.log_tail()
    base, last = rss[0], rss[-1]
    growth = (last - base) / base
    write_figures("rss_unload_load.json", {"cycles": CYCLES, "rss_kib_after_each_cycle": rss,
                                           "growth_after_cycle_1": round(growth, 4)})
    print(f"\nRSS over {CYCLES} unload / load cycles of text-classifier: after cycle 1 "
          f"{base / 1024:.1f} MiB; after cycle {CYCLES} {last / 1024:.1f} MiB; "
          f"growth {growth * 100:+.2f}%")
    print("  per cycle (MiB): " + " ".join(f"{v / 1024:.1f}" for v in rss))
    assert last <= base * (1 + TOLERANCE), \
        f"RSS grew {growth * 100:.1f}% from cycle 1 ({base} KiB) to cycle {CYCLES} ({last} KiB)"

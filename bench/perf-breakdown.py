#!/usr/bin/env python3
"""Where a server's CPU went, by kind of work, from a perf profile's self time.

    perf record -F 999 -g -p PID -o perf.data -- sleep 5
    perf report -i perf.data --no-children --sort dso,sym --stdio -g none \
        | python3 bench/perf-breakdown.py

Reads perf report's `percent dso symbol` lines and sums them into the groups
below, first match wins; prints a Markdown table.
"""
import re
import sys

GROUPS = [
    ("ONNX Runtime (the model)", lambda d, s: "onnxruntime" in d or "libstdc++" in d),
    ("malloc and free", lambda d, s: d.startswith("libc") and re.search(
        r"malloc|free|_int_|unlink_chunk|realloc|tcache|consolidate|arena", s)),
    ("kernel: context switches, futex waits and wake-ups", lambda d, s: "kernel" in d and re.search(
        r"task_switch|schedule|futex|wake_up|spin_unlock_irq|irqentry_exit|pick_next|enqueue|dequeue|"
        r"update_curr|select_task|ttwu|switch_to|restore_fpregs|__switch", s)),
    ("kernel: TCP, syscalls and the rest", lambda d, s: "kernel" in d),
    ("JSON (serde_json, serde_path_to_error)", lambda d, s: re.search(r"serde", s)),
    ("HTTP stack (hyper, axum, tower, http)", lambda d, s: re.search(r"hyper|axum|tower|\bhttp::|httparse|bytes::", s)),
    ("tokio runtime", lambda d, s: "tokio" in s),
    ("metrics (prometheus)", lambda d, s: "prometheus" in s),
    ("inferd's own code", lambda d, s: "inferd::" in s),
    ("other libc (memcpy, locks, time)", lambda d, s: d.startswith("libc") or "vdso" in d),
]

line_re = re.compile(r"^\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$")
totals = {name: 0.0 for name, _ in GROUPS}
other = 0.0
for line in sys.stdin:
    m = line_re.match(line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
    for name, test in GROUPS:
        if test(dso, sym):
            totals[name] += pct
            break
    else:
        other += pct
print("| where | share of the server's CPU |")
print("|---|---|")
for name, _ in GROUPS:
    print(f"| {name} | {totals[name]:.1f}% |")
print(f"| everything else | {other:.1f}% |")

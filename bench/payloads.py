"""Writes the single-instance request bodies used by the load benchmarks, drawn
from the models' held-out golden cases (real test data, not synthetic)."""

import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
out = Path(sys.argv[1] if len(sys.argv) > 1 else root / "bench" / "out")
out.mkdir(parents=True, exist_ok=True)

text = json.loads((root / "models/text-classifier/1/golden.json").read_text())["cases"]
# The median-length held-out message: a typical email, neither a one-liner nor a newsletter.
by_len = sorted(text, key=lambda c: len(c["input"]))
median = by_len[len(by_len) // 2]["input"]
(out / "text.json").write_text(json.dumps({"model": "text-classifier", "instances": [median]}))

lstm = json.loads((root / "models/lstm-forecaster/1/golden.json").read_text())["cases"]
(out / "lstm.json").write_text(json.dumps({"model": "lstm-forecaster", "instances": [lstm[0]["input"]]}))
print(f"text payload: {len(median)} chars; lstm payload: {len(lstm[0]['input'])} x 1 window")

# The same instances as KServe v2 infer bodies, for comparing the two front doors.
(out / "text-v2.json").write_text(json.dumps(
    {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [median]}]}))
window = lstm[0]["input"]
(out / "lstm-v2.json").write_text(json.dumps(
    {"inputs": [{"name": "window", "shape": [1, len(window), len(window[0])], "datatype": "FP32",
                 "data": [x for row in window for x in row]}]}))

"""Helpers shared by the two training scripts: determinism, hashing, manifest writing.

Both scripts write `model.onnx`, `model.toml`, `golden.json` and `README.md` into
`<out>/<name>/<version>/`. Keeping the writer here means the two manifests cannot
drift apart in layout, which the Rust repository loader and the Python model test
both rely on.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

import numpy as np


def seed_everything(seed: int) -> None:
    # Hash randomisation changes set/dict iteration order, which reaches the
    # order of strings in the exported TF-IDF graph. It is fixed only at
    # interpreter start, so re-run ourselves with it pinned.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    random.seed(seed)
    np.random.seed(seed)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def toml_value(v) -> str:
    """Render the small subset of TOML values the manifests use."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(round(v, 9))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"unsupported TOML value {v!r}")


def write_toml(path: Path, doc: list[tuple[str | None, dict]]) -> None:
    """Write `[(table_name or None, {key: value})...]`; `[[x]]` names make array tables."""
    lines: list[str] = []
    for table, items in doc:
        if table is not None:
            lines.append("")
            lines.append(table)
        for k, v in items.items():
            lines.append(f"{k} = {toml_value(v)}")
    path.write_text("\n".join(lines).lstrip("\n") + "\n")


def write_golden(path: Path, model: str, version: str, cases: list[dict], tolerance: float) -> None:
    doc = {"model": model, "version": version, "tolerance": tolerance, "cases": cases}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")

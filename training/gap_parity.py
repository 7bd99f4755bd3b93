"""Export every lstm-forecaster window that holds a real gap, for the Rust fill parity test.

`train_lstm.py` fills the 59 missing weeks of the statsmodels co2 series with
`Series.interpolate(method="linear")` over the whole series, then cuts windows of
T weeks. The server fills a window on its own (`crates/inferd-core/src/preprocess/series.rs`),
so it can only reproduce training where a gap is bracketed by known readings
inside the window. This script writes, for every window of the model's length
that contains at least one real gap:

- `start`: index of the window's first week in the series, and `date` of that week;
- `raw`: the readings as the dataset has them, `null` for a missing week;
- `pandas`: the same weeks after training's whole-series interpolation (float64,
  full precision; training casts to float32 afterwards);
- `edge`: true when the window's first or last week is missing, i.e. some gap is
  not bracketed inside the window (those weeks are filled from outside the window
  in training, and by forward/backward fill in the server).

Windows are every run of T consecutive weeks, starts 0..n-T (training's input
windows are starts 0..n-T-1; the last one, which forecasts past the data, is
included too). Needs only numpy, pandas and statsmodels.

    python training/gap_parity.py            # writes tests/data/co2_gap_windows.json
    python training/gap_parity.py --out PATH
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from statsmodels.datasets import co2 as co2_data

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "models" / "lstm-forecaster" / "1" / "model.toml"


def model_window(manifest: Path) -> int:
    """`[timeseries] window` from the manifest (stdlib only: tomllib is 3.11+)."""
    section = None
    for line in manifest.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
            continue
        m = re.fullmatch(r"window\s*=\s*(\d+)", line)
        if section == "timeseries" and m:
            return int(m.group(1))
    raise SystemExit(f"no [timeseries] window in {manifest}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "co2_gap_windows.json")
    args = ap.parse_args()
    t = model_window(MANIFEST)

    # Exactly as train_lstm.py loads and fills the series.
    df = co2_data.load_pandas().data
    observed = df["co2"].notna().to_numpy()
    raw = df["co2"].to_numpy(dtype=np.float64)
    series = df["co2"].interpolate(method="linear").to_numpy(dtype=np.float64)
    dates = df.index
    n = len(series)
    if not np.isfinite(series).all():
        raise SystemExit("the whole-series interpolation left a NaN (a leading gap?)")

    windows = []
    for s in range(n - t + 1):
        obs = observed[s : s + t]
        if obs.all():
            continue
        windows.append({
            "start": s,
            "date": str(dates[s].date()),
            "missing": int((~obs).sum()),
            "edge": bool(not obs[0] or not obs[-1]),
            # repr() round-trips float64 exactly.
            "raw": [float(v) if o else None for v, o in zip(raw[s : s + t], obs)],
            "pandas": [float(v) for v in series[s : s + t]],
        })
    n_edge = sum(w["edge"] for w in windows)
    doc = {
        "source": "statsmodels.datasets.co2 weekly series; pandas Series.interpolate(method='linear') "
                  "over the whole series, as training/train_lstm.py; written by training/gap_parity.py",
        "window": t,
        "rows": n,
        "missing_in_series": int((~observed).sum()),
        "windows_with_gaps": len(windows),
        "interior_only": len(windows) - n_edge,
        "edge": n_edge,
        "windows": windows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One window per line keeps the file diffable and small.
    body = ",\n".join(json.dumps(w, separators=(",", ":")) for w in windows)
    head = json.dumps({k: v for k, v in doc.items() if k != "windows"}, indent=1)[:-2]
    args.out.write_text(f'{head},\n "windows": [\n{body}\n]}}\n')
    json.loads(args.out.read_text())  # well-formed
    print(f"[gaps] window {t}: {len(windows)} of {n - t + 1} windows hold at least one of "
          f"{int((~observed).sum())} gaps; {len(windows) - n_edge} interior-only, {n_edge} edge; "
          f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

"""Reference profiles (`reference.json`) for the server's drift monitor.

A profile holds, per feature, bin edges chosen from a model version's training
rows and the number of training rows in each bin. The server bins the same
features of the traffic it serves and compares the two (PSI and a chi-square
test; `training/drift_sim.py` replays that rule). A profile also holds a few
`checks`: inputs exactly as a client sends them with the value of every input
feature, so a Rust test can hold the server's feature code to this file's.

Contract (schema 1), `models/<name>/<version>/reference.json`:

    {"schema": 1, "model": ..., "version": "3", "source": "...", "rows": N,
     "features": [{"name", "kind": "input"|"prediction", "edges": [k-1 floats],
                   "counts": [k ints]}, ...],
     "checks": [{"input": <instance as sent>, "features": {name: value}}, ...]}

A value x falls in bin `np.searchsorted(edges, x, side="right")` (the number of
edges <= x). Features (float64; windows are float32 as the graph gets them, cast;
means and standard deviations are plain left-to-right sums, std = sqrt(sum((v -
mean)^2) / n)):

- text, on the cleaned text the graph receives: `length` (code points), `tokens`
  (matches of `[a-zA-Z0-9][a-zA-Z0-9'$]+`), `upper_ratio` (ASCII upper / ASCII
  letters), `digit_ratio` (ASCII digits / code points), `non_ascii_ratio` (code
  points above 127 / code points); prediction `p_<last label>`.
- windows (one feature column x, oldest first; d = diff(x)): `std`, `diff_mean`,
  `diff_std`, `diff_abs_max`, `flat_ratio` (share of d == 0), `last_dev`
  ((x[-1] - mean) / std, 0 when std is 0); prediction `step_<target>`
  (forecast - x[-1]).

Usage (from training/):

    python reference_profile.py text --data <package/data> --inferd ../target/release/inferd \\
        --model-dir ../models/text-classifier/2
    python reference_profile.py lstm --model-dir ../models/lstm-forecaster/1

`train_text.py` writes the profile itself for versions 2 and later (through
`text_profile` below); the `text` command rebuilds one for a committed version
without retraining. The `lstm` command rebuilds the LSTM's training windows as
`train_lstm.py` does (that script needs PyTorch; this one does not) and runs the
committed graph for the prediction feature.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

SCHEMA = 1
MAX_BINS = 10
# A value held by at least this share of the rows gets a bin of its own.
TIE_SHARE = 0.10
# How far above a tied value its bin ends (its own bin is [v, v + TIE_EPS)).
TIE_EPS = 1e-9
# A gap between neighbouring training values narrower than this share of their
# magnitude is rounding, not a place to cut (see _gap_edge).
GAP_FLOOR = 1e-3

TOKEN_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9'$]+")
TEXT_FEATURES = ["length", "tokens", "upper_ratio", "digit_ratio", "non_ascii_ratio"]
WINDOW_FEATURES = ["std", "diff_mean", "diff_std", "diff_abs_max", "flat_ratio", "last_dev"]


# --- features -------------------------------------------------------------------------

def text_features(s: str) -> dict[str, float]:
    """The input features of one cleaned text, as the server computes them."""
    n = len(s)
    upper = lower = digits = non_ascii = 0
    for c in s:
        o = ord(c)
        if o > 127:
            non_ascii += 1
        elif 65 <= o <= 90:
            upper += 1
        elif 97 <= o <= 122:
            lower += 1
        elif 48 <= o <= 57:
            digits += 1
    letters = upper + lower
    return {
        "length": float(n),
        "tokens": float(len(TOKEN_RE.findall(s))),
        "upper_ratio": upper / letters if letters else 0.0,
        "digit_ratio": digits / n if n else 0.0,
        "non_ascii_ratio": non_ascii / n if n else 0.0,
    }


def window_features(x) -> dict[str, float]:
    """The input features of one window column (float32 readings as the graph
    receives them, after gap filling), computed in float64."""
    x = [float(v) for v in np.asarray(x, dtype=np.float32).ravel()]
    d = [b - a for a, b in zip(x, x[1:])]
    mean, std = _mean_std(x)
    d_mean, d_std = _mean_std(d)
    return {
        "std": std,
        "diff_mean": d_mean,
        "diff_std": d_std,
        "diff_abs_max": max(abs(v) for v in d),
        "flat_ratio": sum(1 for v in d if v == 0.0) / len(d),
        "last_dev": (x[-1] - mean) / std if std != 0.0 else 0.0,
    }


def _mean_std(v: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation, summed left to right in float64
    (numpy sums pairwise, which can differ in the last bit from a plain loop)."""
    total = 0.0
    for a in v:
        total += a
    mean = total / len(v)
    sq = 0.0
    for a in v:
        sq += (a - mean) * (a - mean)
    return mean, math.sqrt(sq / len(v))


def feature_matrix(rows: list[dict[str, float]], names: list[str]) -> dict[str, np.ndarray]:
    return {n: np.array([r[n] for r in rows], dtype=np.float64) for n in names}


# --- binning --------------------------------------------------------------------------

def bin_index(edges, x) -> np.ndarray:
    """Bin of each value: the number of edges <= x."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(x, dtype=np.float64),
                           side="right")


def bin_counts(edges, x) -> np.ndarray:
    return np.bincount(bin_index(edges, x), minlength=len(edges) + 1)


def _between(lo: float, hi: float) -> float:
    """An edge that puts `lo` in the lower bin and `hi` in the upper one."""
    mid = (lo + hi) / 2
    return mid if lo < mid <= hi else hi


def _gap_edge(v: np.ndarray, centre: float, half: float) -> float | None:
    """Midpoint of the widest gap between consecutive sorted values whose lower
    rank lies within `half` ranks of `centre` (nearest the centre on ties): the
    quantile cut moved to where the values are sparsest. Gaps narrower than
    GAP_FLOOR times the values' magnitude do not count, so values that differ
    only by rounding (differences of float32 readings cluster around multiples
    of the readings' 0.1 ppm resolution) share a bin; None when no gap counts."""
    lo = max(0, int(np.floor(centre - half)))
    hi = min(len(v) - 2, int(np.ceil(centre + half)))
    if hi < lo:
        return None
    a, b = v[lo:hi + 1], v[lo + 1:hi + 2]
    gaps = b - a
    ok = (gaps > 0) & (gaps >= GAP_FLOOR * np.maximum(np.abs(a), np.abs(b)))
    if not np.any(ok):
        return None
    ranks = np.arange(lo, hi + 1)
    best = max(np.flatnonzero(ok), key=lambda i: (gaps[i], -abs(ranks[i] - centre)))
    return _between(float(a[best]), float(b[best]))


def choose_edges(values, max_bins: int = MAX_BINS) -> list[float]:
    """Edges from the training values. A value held by at least TIE_SHARE of the
    rows (or a run of values within rounding of each other, see GAP_FLOOR) gets a
    bin of its own, [v, v + TIE_EPS) (its lower edge halfway to the next value
    below). The other values are cut near their quantiles, each cut
    moved to the widest gap within half a bin of it, never on a value. Edges
    that would leave a bin empty are dropped, so every bin holds training rows,
    and the smallest neighbouring bins merge until there are at most `max_bins`."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if not np.all(np.isfinite(v)):
        raise ValueError("non-finite feature value")
    uniq, cnt = np.unique(v, return_counts=True)
    # Ties: runs of distinct values closer than the rounding floor count as one.
    close = (uniq[1:] - uniq[:-1]) < GAP_FLOOR * np.maximum(np.abs(uniq[1:]), np.abs(uniq[:-1]))
    run = np.concatenate([[0], np.cumsum(~close)])
    tie_edges: set[float] = set()
    in_tie = np.zeros(len(uniq), dtype=bool)
    for r in range(int(run[-1]) + 1):
        members = np.flatnonzero(run == r)
        if cnt[members].sum() < TIE_SHARE * len(v):
            continue
        in_tie[members] = True
        first, last = members[0], members[-1]
        if first > 0:
            tie_edges.add(_between(float(uniq[first - 1]), float(uniq[first])))
        if last + 1 < len(uniq):
            tie_edges.add(float(min(uniq[last] + TIE_EPS, _between(float(uniq[last]), float(uniq[last + 1])))))
    heavy_runs = len(set(run[in_tie].tolist()))
    rest = v[~np.isin(v, uniq[in_tie])]
    quantile_edges: set[float] = set()
    bins = max_bins - heavy_runs
    if len(rest) > 1 and bins >= 2:
        step = len(rest) / bins
        for j in range(1, bins):
            e = _gap_edge(rest, j * step - 0.5, step / 2)
            if e is not None:
                quantile_edges.add(e)
    edges = sorted(tie_edges | quantile_edges)

    def empties(e):
        return np.flatnonzero(bin_counts(e, v) == 0)

    # Drop edges that leave a bin empty (two edges with no value between them);
    # quantile edges go before tie edges.
    while len(edges) and len(empties(edges)):
        b = int(empties(edges)[0])
        cands = [i for i in (b - 1, b) if 0 <= i < len(edges)]
        cands.sort(key=lambda i: (edges[i] in tie_edges and edges[i] not in quantile_edges, -i))
        del edges[cands[0]]
    while len(edges) + 1 > max_bins:
        # Merge the two neighbouring bins with the fewest rows, keeping tie bins.
        c = bin_counts(edges, v)
        pair = c[:-1] + c[1:]
        order = sorted(range(len(edges)), key=lambda i: (edges[i] in tie_edges, pair[i], i))
        del edges[order[0]]
    assert all(a < b for a, b in zip(edges, edges[1:]))
    assert np.all(bin_counts(edges, v) > 0)
    return edges


def feature_entry(name: str, kind: str, values, max_bins: int = MAX_BINS) -> dict:
    edges = choose_edges(values, max_bins)
    return {"name": name, "kind": kind, "edges": edges,
            "counts": [int(c) for c in bin_counts(edges, values)]}


def build_profile(model: str, version: str, source: str, features: list[tuple[str, str, np.ndarray]],
                  checks: list[dict], max_bins: int = MAX_BINS) -> dict:
    rows = {len(v) for _, _, v in features}
    if len(rows) != 1:
        raise ValueError(f"features over different row counts: {rows}")
    entries = []
    for n, k, v in features:
        e = feature_entry(n, k, v, max_bins)
        if len(e["counts"]) < 2:  # one value throughout: nothing to compare, the server refuses it
            print(f"[profile] {n}: the same value in every row, left out", file=sys.stderr)
            continue
        entries.append(e)
    return {
        "schema": SCHEMA,
        "model": model,
        "version": str(version),
        "source": source,
        "rows": rows.pop(),
        "features": entries,
        "checks": checks,
    }


def write_profile(path: Path, profile: dict) -> None:
    path.write_text(json.dumps(profile, indent=1) + "\n")


# --- text -----------------------------------------------------------------------------

def pick_text_checks(raws: list[str], cleaned: list[str], untruncated: list[str],
                     labels: list[int], max_raw: int = 30000) -> list[int]:
    """Five positions, each the best candidate of at most `max_raw` bytes (the
    first in the given order on ties, so the choice is deterministic): a long
    message cut by the preprocessing (the most non-ASCII characters before the
    cut), the message with the most characters beyond Latin-1, an HTML spam, an
    ASCII-only ham and a spam without HTML (cleaned lengths nearest 1,500, 1,000
    and 500 characters)."""
    def non_ascii(i):
        return sum(ord(c) > 127 for c in cleaned[i])

    def beyond_latin1(i):
        return sum(ord(c) > 255 for c in cleaned[i])

    rules = [
        (lambda i: len(untruncated[i]) > len(cleaned[i]), non_ascii),
        (lambda i: beyond_latin1(i) > 0, beyond_latin1),
        (lambda i: labels[i] == 1 and "text/html" in raws[i].lower(), lambda i: -abs(len(cleaned[i]) - 1500)),
        (lambda i: labels[i] == 0 and raws[i].isascii(), lambda i: -abs(len(cleaned[i]) - 1000)),
        (lambda i: labels[i] == 1 and "text/html" not in raws[i].lower(), lambda i: -abs(len(cleaned[i]) - 500)),
    ]
    chosen: list[int] = []
    for keep, score in rules:
        cands = [i for i in range(len(raws))
                 if len(raws[i].encode("utf-8")) <= max_raw and i not in chosen and keep(i)]
        if cands:
            chosen.append(max(cands, key=lambda i: (score(i), -i)))
    return chosen


def text_profile(model: str, version: str, source: str, cleaned_train: list[str],
                 probs_train: np.ndarray, labels: list[str], checks: list[tuple[str, str]]) -> dict:
    """`cleaned_train`: the training rows' texts as the graph received them;
    `probs_train`: the graph's class probabilities on them; `checks`: (raw
    input, its cleaned text) pairs."""
    feats = feature_matrix([text_features(t) for t in cleaned_train], TEXT_FEATURES)
    pred = f"p_{labels[-1]}"
    features = [(n, "input", feats[n]) for n in TEXT_FEATURES]
    features.append((pred, "prediction", np.asarray(probs_train, dtype=np.float32)[:, -1].astype(np.float64)))
    check_docs = [{"input": raw, "features": text_features(clean)} for raw, clean in checks]
    return build_profile(model, version, source, features, check_docs)


# --- windows --------------------------------------------------------------------------

def window_profile(model: str, version: str, source: str, windows: np.ndarray, forecasts: np.ndarray,
                   target: str, checks: list, max_bins: int = MAX_BINS, only: list[str] | None = None) -> dict:
    """`windows`: [n, T] float32 training windows as the graph received them;
    `forecasts`: the graph's [n] forecasts for them."""
    feats = feature_matrix([window_features(w) for w in windows], WINDOW_FEATURES)
    step = (np.asarray(forecasts, dtype=np.float32).astype(np.float64)
            - np.asarray(windows, dtype=np.float32)[:, -1].astype(np.float64))
    features = [(n, "input", feats[n]) for n in WINDOW_FEATURES]
    features.append((f"step_{target}", "prediction", step))
    if only is not None:
        features = [f for f in features if f[0] in only]
    check_docs = [{"input": [[float(v)] for v in w],
                   "features": {k: v for k, v in window_features(w).items() if any(k == f[0] for f in features)}}
                  for w in checks]
    return build_profile(model, version, source, features, check_docs, max_bins)


# The LSTM's data and split, as `train_lstm.py` builds them (kept in step by hand:
# that script imports torch). `lstm_data()` is checked against the committed
# golden file and the TorchScript twin's held-out windows before use.
LSTM_T = 26


def lstm_data():
    from statsmodels.datasets import co2 as co2_data

    df = co2_data.load_pandas().data
    observed = df["co2"].notna().to_numpy()
    series = df["co2"].interpolate(method="linear").to_numpy(dtype=np.float64)
    n = len(series)
    n_train, n_val = int(n * 0.70), int(n * 0.15)
    tgt = np.arange(LSTM_T, n)
    tr_idx = tgt[tgt < n_train]
    va_idx = tgt[(tgt >= n_train) & (tgt < n_train + n_val)]
    te_idx = tgt[tgt >= n_train + n_val]
    return {
        "series": series, "observed": observed, "dates": df.index, "n_train": n_train, "n_val": n_val,
        "train": tr_idx[observed[tr_idx]], "val": va_idx[observed[va_idx]], "test": te_idx[observed[te_idx]],
    }


def lstm_windows(series: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[len(idx), T] float32: the T readings before each target, as train_lstm.windows()."""
    return np.stack([series[i - LSTM_T:i] for i in idx]).astype(np.float32)


def verify_lstm_reconstruction(data: dict, model_dir: Path) -> None:
    golden = json.loads((model_dir / "golden.json").read_text())
    te = lstm_windows(data["series"], data["test"])
    by_date = {str(data["dates"][i].date()): w for i, w in zip(data["test"], te)}
    for c in golden["cases"]:
        w = by_date[c["source"].removeprefix("week ending ")]
        if [[round(float(v), 4)] for v in w] != c["input"]:
            raise SystemExit(f"test window for {c['source']} differs from golden.json")
    twin = model_dir.parent.parent / "lstm-forecaster-torch" / model_dir.name / "heldout.json"
    if twin.exists():
        held = json.loads(twin.read_text())["windows"]
        mine = [[[round(float(v), 4)] for v in w] for w in te]
        if held != mine:
            raise SystemExit(f"test windows differ from {twin}")


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def lstm_profile_for(model_dir: Path, max_bins: int = MAX_BINS, only: list[str] | None = None) -> dict:
    """The profile of a committed LSTM version. `max_bins` and `only` (a subset of
    the features) are for experiments (`drift_sim.py --explore`); the committed
    profile uses the defaults."""
    import tomllib

    manifest = tomllib.loads((model_dir / "model.toml").read_text())
    ts = manifest["timeseries"]
    if ts["window"] != LSTM_T or len(ts["features"]) != 1:
        raise SystemExit("this profile builder knows the one-feature, 26-week LSTM only")
    data = lstm_data()
    verify_lstm_reconstruction(data, model_dir)
    sess = ort_session(model_dir / "model.onnx")
    inp, out = manifest["inputs"][0]["name"], manifest["outputs"][0]["name"]
    xtr = lstm_windows(data["series"], data["train"])
    fc = sess.run([out], {inp: xtr[:, :, None]})[0][:, 0]
    # Checks: the first training window, one from the middle, the one with the
    # most interpolated readings, the last, and the first test window.
    series, obs = data["series"], data["observed"]
    gaps = [int((~obs[i - LSTM_T:i]).sum()) for i in data["train"]]
    picks = [data["train"][0], data["train"][len(data["train"]) // 2],
             data["train"][int(np.argmax(gaps))], data["train"][-1], data["test"][0]]
    checks = lstm_windows(series, np.array(picks))
    d0, d1 = data["dates"][data["train"][0]].date(), data["dates"][data["train"][-1]].date()
    source = (f"training split: {len(xtr):,} windows (chronological first 70% of the weekly series, "
              f"observed targets {d0}..{d1}; gaps filled by linear interpolation)")
    return window_profile(manifest["name"], manifest["version"], source, xtr, fc,
                          ts["targets"][0], list(checks), max_bins, only)


# --- CLI ------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("text", help="profile a committed text-classifier version (2 or later)")
    t.add_argument("--data", type=Path, required=True, help="package/data of the npm tarball")
    t.add_argument("--inferd", type=Path, required=True, help="the inferd binary")
    t.add_argument("--model-dir", type=Path, required=True, help="models/text-classifier/<version>")
    t.add_argument("--out", type=Path, help="where to write (default: <model-dir>/reference.json)")
    s = sub.add_parser("lstm", help="profile a committed lstm-forecaster version")
    s.add_argument("--model-dir", type=Path, required=True, help="models/lstm-forecaster/<version>")
    s.add_argument("--out", type=Path, help="where to write (default: <model-dir>/reference.json)")
    s.add_argument("--max-bins", type=int, default=MAX_BINS, help="experiments only; default %(default)s")
    s.add_argument("--features", help="experiments only: a comma-separated subset of the features")
    args = ap.parse_args()
    if args.cmd == "text":
        import train_text  # same loading, cleaning and split as training

        prof = train_text.profile_committed(args.data, args.inferd, args.model_dir)
    else:
        prof = lstm_profile_for(args.model_dir, args.max_bins,
                                args.features.split(",") if args.features else None)
    out = args.out or args.model_dir / "reference.json"
    write_profile(out, prof)
    print(f"[profile] wrote {out}: {prof['rows']} rows, "
          + ", ".join(f"{f['name']} {len(f['counts'])} bins" for f in prof["features"]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

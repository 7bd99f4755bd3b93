"""Replays the server's drift alarm over feeds of real and faulty traffic, to check
the reference profiles (`reference.json`, built by `reference_profile.py`) before the
server relies on them.

The rule (as the server implements it): for a window of the last N observations
of a feature, with window bin counts w_i (n observations) and reference counts
r_i (R rows) over k bins,

    q_i = (w_i + 0.5) / (n + 0.5 k),   p_i = (r_i + 0.5) / (R + 0.5 k)
    PSI = sum (q_i - p_i) ln(q_i / p_i)
    X^2 = sum (w_i - n p_i)^2 / (n p_i),  p-value = chi2.sf(X^2, k - 1)

A feature drifts when PSI >= 0.25 and p-value < 0.01 / (features in the profile);
the version's alarm is on when any feature drifts. The window slides by one
observation and is judged once it holds at least min(N, 100) observations.

Scenarios (the numbers this prints are the ones reported for issue 28):
 (a) text-classifier 3 serving its period-1 held-out set (shuffled with a fixed
     seed, and in file order): must never alarm;
 (b) text-classifier 3 serving all period-2 mail (fixed-seed shuffle): must alarm
     within the first 500 messages;
 (c) lstm-forecaster 1 serving its validation and test windows in order: must
     never alarm;
 (d) lstm-forecaster 1 fed a sensor that sticks (repeats its last reading) or
     switches unit (ppb: x1000; mole fraction: /1e6) from some week on: must alarm
     within 100 windows of the first faulty window.

Usage (from training/):

    python drift_sim.py --data <package/data> --inferd ../target/release/inferd --models ../models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import chi2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_profile import (TEXT_FEATURES, WINDOW_FEATURES, bin_index, feature_matrix,  # noqa: E402
                     lstm_data, lstm_profile_for, lstm_windows, ort_session, text_features,
                     window_features)

SEED = 20261123
PSI_ALARM = 0.25
P_ALARM = 0.01
MIN_JUDGED = 100


def psi_and_p(w: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSI and chi-square p-value of window counts w ([m, k]) against reference
    counts r ([k])."""
    w = np.asarray(w, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    k = r.shape[-1]
    n = w.sum(axis=-1, keepdims=True)
    q = (w + 0.5) / (n + 0.5 * k)
    p = (r + 0.5) / (r.sum() + 0.5 * k)
    psi = np.sum((q - p) * np.log(q / p), axis=-1)
    x2 = np.sum((w - n * p) ** 2 / (n * p), axis=-1)
    pval = chi2.sf(x2, k - 1) if k > 1 else np.ones_like(x2)
    return psi, pval


def replay(profile: dict, values: dict[str, np.ndarray], window: int) -> dict:
    """Slides the window over the feed one observation at a time. Returns, per
    feature, PSI and p-value after each observation (NaN before the window is
    judged), and the alarm series."""
    feats = profile["features"]
    alpha = P_ALARM / len(feats)
    total = len(next(iter(values.values())))
    judged_from = min(window, MIN_JUDGED)
    n_seen = np.arange(1, total + 1)
    judged = np.minimum(n_seen, window) >= judged_from
    out = {"features": {}, "alarm": np.zeros(total, dtype=bool), "judged": judged}
    for f in feats:
        k = len(f["counts"])
        b = bin_index(f["edges"], values[f["name"]])
        onehot = np.zeros((total + 1, k))
        onehot[np.arange(1, total + 1), b] = 1.0
        cum = np.cumsum(onehot, axis=0)
        lo = np.maximum(n_seen - window, 0)
        w = cum[n_seen] - cum[lo]
        psi, pval = psi_and_p(w, np.array(f["counts"]))
        psi[~judged] = np.nan
        pval[~judged] = np.nan
        drift = judged & (psi >= PSI_ALARM) & (pval < alpha)
        out["features"][f["name"]] = {"psi": psi, "p": pval, "drift": drift}
        out["alarm"] |= drift
    return out


def summary(res: dict, fault_at: int | None = None) -> dict:
    """Max PSI per feature, first alarm (1-based observation count), and for a
    fault the delay from the first faulty observation."""
    alarm = res["alarm"]
    first = int(np.argmax(alarm)) + 1 if alarm.any() else None
    s = {
        "observations": len(alarm),
        "max_psi": {n: round(float(np.nanmax(f["psi"])), 4) if np.any(~np.isnan(f["psi"])) else None
                    for n, f in res["features"].items()},
        "min_p": {n: float(np.nanmin(f["p"])) if np.any(~np.isnan(f["p"])) else None
                  for n, f in res["features"].items()},
        "alarm_ever": bool(alarm.any()),
        "first_alarm_at": first,
        "features_drifting_ever": [n for n, f in res["features"].items() if f["drift"].any()],
    }
    if fault_at is not None:
        before = alarm[:fault_at]
        after = np.flatnonzero(alarm[fault_at:])
        s["fault_at"] = fault_at + 1
        s["alarm_before_fault"] = bool(before.any())
        s["first_alarm_after_fault"] = int(after[0]) + fault_at + 1 if len(after) else None
        # windows from the first faulty one to the alarm, counting both
        s["delay_windows"] = int(after[0]) + 1 if len(after) else None
        if len(after):
            t = fault_at + int(after[0])
            s["drifting_at_alarm"] = {n: round(float(f["psi"][t]), 3)
                                      for n, f in res["features"].items() if f["drift"][t]}
    return s


# --- text -----------------------------------------------------------------------------

def text_scenarios(data_dir: Path, inferd: Path, models: Path, window: int) -> dict:
    import train_text

    model_dir = models / "text-classifier" / train_text.TIME_SPLIT_VERSION
    prof = json.loads((model_dir / "reference.json").read_text())
    rows = train_text.load(data_dir, inferd)
    groups = np.array([r[0] for r in rows])
    y = np.array([r[3] for r in rows])
    tr, te, later = train_text.split(groups, y, train_text.TIME_SPLIT_VERSION)
    sess = ort_session(model_dir / "model.onnx")
    pred = prof["features"][-1]["name"]

    def feed(idx):
        texts = [str(rows[j][2]) for j in idx]
        v = feature_matrix([text_features(t) for t in texts], TEXT_FEATURES)
        p = sess.run(["probabilities"], {"text": np.array(texts, dtype=object)})[0]
        v[pred] = p[:, -1].astype(np.float64)
        return v

    rng = np.random.default_rng(SEED)
    te_sorted = np.sort(te)  # file order
    later_shuffled = rng.permutation(later)
    te_shuffled = np.random.default_rng(SEED).permutation(te_sorted)
    out = {}
    out["a_heldout_shuffled"] = summary(replay(prof, feed(te_shuffled), window))
    out["a_heldout_file_order"] = summary(replay(prof, feed(te_sorted), window))
    res_b = replay(prof, feed(later_shuffled), window)
    out["b_period2_shuffled"] = summary(res_b)
    out["b_period2_file_order"] = summary(replay(prof, feed(np.sort(later)), window))
    # Also: the training rows themselves (a sanity floor for noise).
    out["training_rows_shuffled"] = summary(replay(prof, feed(np.random.default_rng(SEED).permutation(np.sort(tr))), window))
    return out


# --- LSTM -----------------------------------------------------------------------------

def lstm_feed(sess, windows: np.ndarray, target: str) -> dict[str, np.ndarray]:
    v = feature_matrix([window_features(w) for w in windows], WINDOW_FEATURES)
    fc = sess.run(["forecast"], {"window": windows[:, :, None].astype(np.float32)})[0][:, 0]
    v[f"step_{target}"] = fc.astype(np.float64) - windows[:, -1].astype(np.float64)
    return v


def lstm_scenarios(models: Path, window: int, prof: dict | None = None) -> dict:
    model_dir = models / "lstm-forecaster" / "1"
    if prof is None:
        prof = json.loads((model_dir / "reference.json").read_text())
    target = prof["features"][-1]["name"].removeprefix("step_")
    sess = ort_session(model_dir / "model.onnx")
    d = lstm_data()
    series, n = d["series"], len(d["series"])
    out = {}
    for name, idx in (("c_validation", d["val"]), ("c_test", d["test"]),
                      ("c_validation_then_test", np.concatenate([d["val"], d["test"]])),
                      ("training_windows", d["train"])):
        out[name] = summary(replay(prof, lstm_feed(sess, lstm_windows(series, idx), target), window))
    # Faults: every week's window from the validation period on (a live feed sends
    # one a week, observed target or not), the series faulty from week f.
    feed_targets = np.arange(d["n_train"], n)
    faults = {
        "stuck": lambda s, f: np.concatenate([s[:f], np.full(n - f, s[f - 1])]),
        "unit_ppb_x1000": lambda s, f: np.concatenate([s[:f], s[f:] * 1000.0]),
        "unit_mole_fraction_div1e6": lambda s, f: np.concatenate([s[:f], s[f:] / 1e6]),
    }
    starts = [d["n_train"] + k for k in (150, 250, 350, 450, 550)]
    for fname, fault in faults.items():
        runs = []
        for f in starts:
            s = fault(series, f)
            feed = lstm_windows(s, feed_targets)
            # the first window holding week f is the one for target f + 1
            first_faulty = int(np.flatnonzero(feed_targets == f + 1)[0])
            sm = summary(replay(prof, lstm_feed(sess, feed, target), window), fault_at=first_faulty)
            sm["fault_week"] = str(d["dates"][f].date())
            runs.append(sm)
        out[f"d_{fname}"] = runs
    return out


def explore(models: Path) -> dict:
    """(c) and (d) under other LSTM profiles and windows, to say what would make
    them hold. Nothing here is committed; the profiles are built in memory."""
    model_dir = models / "lstm-forecaster" / "1"
    seasonal = ["diff_mean", "last_dev", "step_co2_ppm"]
    variants = [("all features, 10 bins, N=520", None, 10, 520),
                ("diff_mean, last_dev, step: 10 bins, N=100", seasonal, 10, 100),
                ("diff_mean, last_dev, step: 5 bins, N=100", seasonal, 5, 100),
                ("diff_mean, last_dev, step: 4 bins, N=100", seasonal, 4, 100),
                ("std, diff_mean, last_dev, step: 5 bins, N=100", ["std", *seasonal], 5, 100)]
    out = {}
    for label, only, bins, n in variants:
        r = lstm_scenarios(models, n, lstm_profile_for(model_dir, bins, only))
        out[label] = {
            "c_alarm": {k: r[k]["alarm_ever"] for k in ("c_validation", "c_test", "c_validation_then_test",
                                                        "training_windows")},
            "c_max_psi": r["c_validation_then_test"]["max_psi"],
            "d_delays": {k: [x["delay_windows"] for x in r[k]] for k in r if k.startswith("d_")},
            "d_alarm_before_fault": {k: any(x["alarm_before_fault"] for x in r[k]) for k in r if k.startswith("d_")},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="package/data of the npm tarball (text scenarios)")
    ap.add_argument("--inferd", type=Path, help="the inferd binary (text scenarios)")
    ap.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    ap.add_argument("--text-window", type=int, default=250)
    ap.add_argument("--lstm-window", type=int, default=100)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--explore", action="store_true",
                    help="also replay (c) and (d) with other LSTM profiles (fewer features or bins) and windows")
    args = ap.parse_args()
    res = {}
    if args.data and args.inferd:
        res["text"] = text_scenarios(args.data, args.inferd, args.models, args.text_window)
    res["lstm"] = lstm_scenarios(args.models, args.lstm_window)

    ok = []
    if "text" in res:
        t = res["text"]
        ok.append(("(a) held-out, shuffled: no alarm", not t["a_heldout_shuffled"]["alarm_ever"]))
        ok.append(("(a) held-out, file order: no alarm", not t["a_heldout_file_order"]["alarm_ever"]))
        fa = t["b_period2_shuffled"]["first_alarm_at"]
        ok.append((f"(b) period 2: alarm within 500 (at {fa})", fa is not None and fa <= 500))
    lstm = res["lstm"]
    for k in ("c_validation", "c_test", "c_validation_then_test"):
        ok.append((f"(c) {k}: no alarm", not lstm[k]["alarm_ever"]))
    for k in ("d_stuck", "d_unit_ppb_x1000", "d_unit_mole_fraction_div1e6"):
        delays = [r["delay_windows"] for r in lstm[k]]
        early = any(r["alarm_before_fault"] for r in lstm[k])
        ok.append((f"(d) {k}: alarm within 100 windows (delays {delays}), none before the fault",
                   all(x is not None and x <= 100 for x in delays) and not early))
    if args.explore:
        res["lstm_explore"] = explore(args.models)
    print(json.dumps(res, indent=1))
    for what, good in ok:
        print(f"[drift] {'PASS' if good else 'FAIL'} {what}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    if not all(g for _, g in ok):
        sys.exit(1)


if __name__ == "__main__":
    main()

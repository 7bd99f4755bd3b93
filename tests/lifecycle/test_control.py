"""The repository API's other promises, against a live process: a version that
fails verification or its golden gate is refused (400) while the serving
versions keep answering every request; 404, 409, 401 and 403; whole-model
unload and reload under traffic; policy.toml; the canary split; the index and
the lifecycle metrics."""

import hashlib
import json
import re
import shutil
import threading
import time

from conftest import Traffic, add_version, golden_inputs, http, write_figures

TEXTS = golden_inputs("text-classifier")
WINDOWS = golden_inputs("lstm-forecaster")


def failed_loads(server, version) -> float:
    return sum(v for n, l, v in server.metrics()
               if n == "inferd_model_loads_total" and l.get("model") == "text-classifier"
               and l.get("version") == str(version) and l.get("result") != "ok")


def gate_failures(server, version) -> dict[str, float]:
    return {l.get("stage"): v for n, l, v in server.metrics()
            if n == "inferd_model_gate_failures_total" and l.get("model") == "text-classifier"
            and l.get("version") == str(version) and v > 0}


def corrupt_onnx(version_dir, fix_sha: bool):
    """Flips bytes in the middle of model.onnx; with fix_sha the manifest's
    sha256 is updated, so the bytes pass verification and the graph itself is
    what is broken."""
    onnx = version_dir / "model.onnx"
    data = bytearray(onnx.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    data = data[: len(data) * 3 // 4]  # and truncated
    onnx.write_bytes(bytes(data))
    if fix_sha:
        toml = version_dir / "model.toml"
        digest = hashlib.sha256(bytes(data)).hexdigest()
        toml.write_text(re.sub(r'(?m)^graph_sha256 = ".*"$', f'graph_sha256 = "{digest}"',
                               toml.read_text()))


def wrong_golden(version_dir):
    """The recorded outputs no longer match what the graph computes."""
    path = version_dir / "golden.json"
    g = json.loads(path.read_text())
    for c in g["cases"]:
        e = c["expected"]
        e["label"] = "spam" if e["label"] == "ham" else "ham"
        e["scores"] = {"ham": e["scores"]["spam"], "spam": e["scores"]["ham"]}
    path.write_text(json.dumps(g))


def test_a_bad_version_is_refused_while_traffic_continues(start_server, models_without_v2):
    """Three bad versions 3 in turn (sha256 mismatch, a broken graph with a
    matching sha256, outputs that miss the golden file): each load answers 400
    with a JSON error, versions 1 and 2 keep serving, and the requests sent all
    along (naming no version) all succeed."""
    server = start_server(models_without_v2, INFERD_MODEL_CONTROL="on")
    add_version(server.models_dir, "text-classifier", 2)
    assert server.load("text-classifier").status == 200
    traffic = Traffic(server, "text-classifier", TEXTS)
    outcomes = {}
    try:
        time.sleep(1)
        for case, spoil in (("sha256 mismatch", lambda d: corrupt_onnx(d, fix_sha=False)),
                            ("broken graph", lambda d: corrupt_onnx(d, fix_sha=True)),
                            ("golden gate", wrong_golden)):
            d = add_version(server.models_dir, "text-classifier", 3, source_version=2)
            spoil(d)
            r = server.load("text-classifier")
            outcomes[case] = (r.status, r.body.decode(errors="replace")[:300])
            assert r.status == 400, (case, r, server.log_tail())
            assert isinstance(r.json().get("error"), str) and r.json()["error"], (case, r)
            states = server.states("text-classifier")
            assert states.get("1") == "READY" and states.get("2") == "READY", (case, states)
            assert states.get("3") != "READY", (case, states)
            p = server.predict("text-classifier", TEXTS[:2])
            assert p.status == 200 and p.json()["version"] == "2", (case, p)
            v3 = server.predict("text-classifier", TEXTS[:2], version=3)
            assert v3.status == 404, (case, "a refused version answers", v3)
            # The next case brings its own version 3.
            shutil.rmtree(d)
        time.sleep(1)
    finally:
        statuses = traffic.stop()
    print(f"\nbad version 3 loads: {outcomes}; traffic meanwhile: {statuses}, "
          f"versions {traffic.versions}")
    assert set(statuses) == {200}, f"non-2xx answers while bad versions were refused: {statuses}"
    assert sum(statuses.values()) > 0
    assert failed_loads(server, 3) >= 3, server.metrics()
    stages = gate_failures(server, 3)
    assert sum(stages.values()) >= 3, stages
    assert stages.get("golden", 0) >= 1, stages
    write_figures("bad_versions.json", {"loads": outcomes, "traffic_statuses": statuses,
                                        "gate_failures_v3": stages})
    assert server.alive(), server.log_tail()


def test_unknown_model_and_concurrent_loads(start_server, models_without_v2):
    server = start_server(models_without_v2, INFERD_MODEL_CONTROL="on")
    r = server.load("no-such-model")
    assert r.status == 404 and "error" in r.json(), r

    # Several loads of one model at once: one does the work, the others are
    # told it is already running (or, if they arrive after it ended, find
    # nothing left to do). Version 2 is new on disk, so the first has work.
    add_version(server.models_dir, "text-classifier", 2)
    barrier = threading.Barrier(4)
    replies = []

    def go():
        barrier.wait(timeout=10)
        replies.append(server.load("text-classifier"))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    statuses = sorted(r.status for r in replies)
    print(f"\nfour concurrent loads of text-classifier: {statuses}")
    assert len(statuses) == 4, statuses
    assert set(statuses) <= {200, 409}, replies
    assert 200 in statuses and 409 in statuses, replies
    for r in replies:
        if r.status == 409:
            assert isinstance(r.json().get("error"), str), r
    assert server.states("text-classifier") == {"1": "READY", "2": "READY"}
    # A load and an unload of different models may run together.
    a, b = [], []
    ta = threading.Thread(target=lambda: a.append(server.unload("lstm-forecaster")))
    tb = threading.Thread(target=lambda: b.append(server.load("text-classifier", config={
        "version_policy": {"specific": {"versions": [1]}}})))
    ta.start(); tb.start(); ta.join(150); tb.join(150)
    assert a[0].status == 200 and b[0].status == 200, (a, b)
    assert server.states("text-classifier") == {"1": "READY", "2": "UNAVAILABLE"} or \
        server.states("text-classifier") == {"1": "READY"}, server.states("text-classifier")
    assert "READY" not in server.states("lstm-forecaster").values()


def test_unload_and_reload_under_traffic(start_server, models_without_v2):
    """While requests run, the whole model is unloaded (requests get a clean
    404/503, never a 500 or a dropped connection, and the other model is
    untouched), then loaded again (requests succeed again)."""
    server = start_server(models_without_v2, INFERD_MODEL_CONTROL="on")
    tc = Traffic(server, "text-classifier", TEXTS)
    lstm = Traffic(server, "lstm-forecaster", WINDOWS, threads=1)
    try:
        time.sleep(1)
        r = server.unload("text-classifier")
        assert r.status == 200 and isinstance(r.json(), dict), r
        states = server.states("text-classifier")
        assert "READY" not in states.values(), states
        assert server.predict("text-classifier", TEXTS[:1]).status in (404, 503)
        time.sleep(1)
        r = server.load("text-classifier")
        assert r.status == 200, (r, server.log_tail())
        time.sleep(1)
        before = dict(tc.statuses)
        time.sleep(1)
    finally:
        tc_statuses = tc.stop()
        lstm_statuses = lstm.stop()
    print(f"\nunload/reload under traffic: text-classifier {tc_statuses}, "
          f"lstm-forecaster {lstm_statuses}")
    assert set(tc_statuses) <= {200, 404, 503}, tc_statuses
    assert tc_statuses.get(200, 0) > before.get(200, 0), "no success after the reload"
    assert set(lstm_statuses) == {200}, lstm_statuses
    assert server.metric_sum("inferd_model_unloads_total", model="text-classifier") >= 1
    assert server.alive(), server.log_tail()


def test_policy_toml_and_canary(start_server, models_without_v2):
    server = start_server(models_without_v2, INFERD_MODEL_CONTROL="on")
    add_version(server.models_dir, "text-classifier", 2)
    # policy.toml: both versions serve, version 1 stays the default.
    (server.models_dir / "text-classifier" / "policy.toml").write_text(
        "default_version = 1\nversion_policy = { all = {} }\n")
    r = server.load("text-classifier")
    assert r.status == 200, (r, server.log_tail())
    assert server.states("text-classifier") == {"1": "READY", "2": "READY"}
    assert server.predict("text-classifier", TEXTS[:1]).json()["version"] == "1"
    assert server.predict("text-classifier", TEXTS[:1], version=2).json()["version"] == "2"

    # A load call's config overrides policy.toml: a 30% canary on version 2,
    # deterministic per x-request-id.
    r = server.load("text-classifier", config={
        "version_policy": {"all": {}}, "default_version": 1,
        "canary": {"version": 2, "weight": 0.3}})
    assert r.status == 200, (r, server.log_tail())
    picked = {}
    for i in range(300):
        rid = f"canary-{i}"
        a = server.predict("text-classifier", TEXTS[:1], headers={"x-request-id": rid})
        b = server.predict("text-classifier", TEXTS[:1], headers={"x-request-id": rid})
        assert a.status == 200 and b.status == 200, (a, b)
        assert a.json()["version"] == b.json()["version"], (rid, a, b)
        picked[rid] = a.json()["version"]
    share = sum(v == "2" for v in picked.values()) / len(picked)
    print(f"\ncanary weight 0.3: {share:.3f} of 300 request ids went to version 2")
    assert set(picked.values()) == {"1", "2"}, picked
    assert 0.2 <= share <= 0.4, share

    # A config naming a version that is not on disk as the default is refused,
    # and what serves does not change.
    r = server.load("text-classifier", config={"version_policy": {"all": {}},
                                               "default_version": 7})
    assert r.status == 400, r
    assert server.states("text-classifier") == {"1": "READY", "2": "READY"}
    r = server.load("text-classifier", config_text="{not json")
    assert r.status == 400, r
    r = server.load("text-classifier", config={"version_policy": {"newest": {}}})
    assert r.status == 400, r
    assert server.states("text-classifier") == {"1": "READY", "2": "READY"}


def test_index_and_metrics(start_server, models_without_v2):
    server = start_server(models_without_v2, INFERD_MODEL_CONTROL="on")
    idx = server.index()
    assert idx.status == 200, idx
    entries = idx.json()
    assert isinstance(entries, list)
    for e in entries:
        assert set(e) >= {"name", "version", "state"}, e
        assert e["state"] in ("READY", "LOADING", "UNAVAILABLE"), e
    assert {(e["name"], e["version"], e["state"]) for e in entries} >= {
        ("text-classifier", "1", "READY"), ("lstm-forecaster", "1", "READY")}
    # An empty body is the same as {}.
    assert http("POST", f"{server.url}/v2/repository/index", b"").status == 200

    add_version(server.models_dir, "text-classifier", 2)
    assert server.load("text-classifier").status == 200
    assert server.load("text-classifier", config={
        "version_policy": {"specific": {"versions": [1]}}}).status == 200
    m = server.metrics()

    def val(name, **labels):
        return sum(v for n, l, v in m
                   if n == name and all(l.get(k) == str(w) for k, w in labels.items()))

    assert val("inferd_model_state", model="text-classifier", version="1", state="READY") == 1
    assert val("inferd_model_state", model="text-classifier", version="2", state="READY") == 0
    assert val("inferd_model_state", model="lstm-forecaster", version="1", state="READY") == 1
    assert val("inferd_model_loads_total", model="text-classifier", version="2") >= 1
    assert val("inferd_model_swap_seconds_count", model="text-classifier") >= 2
    assert val("inferd_model_unloads_total", model="text-classifier") >= 1


def test_admin_auth(start_server, models_without_v2, tmp_path):
    # Admin and inference keys: the default (auto) turns control on.
    server = start_server(models_without_v2, INFERD_API_KEYS="infer-key-1",
                          INFERD_ADMIN_KEYS="admin-key-1,admin-key-2")
    assert server.index(key="").status == 401
    assert server.index(key="wrong").status == 401
    r = server.index(key="infer-key-1")
    assert r.status == 403, r
    assert server.load("text-classifier", key="infer-key-1").status == 403
    assert server.unload("text-classifier", key="infer-key-1").status == 403
    assert server.load("text-classifier", key="").status == 401
    assert server.index(key="admin-key-1").status == 200
    assert server.load("text-classifier", key="admin-key-2").status == 200
    # Inference still takes the inference key.
    p = server.predict("text-classifier", TEXTS[:1],
                       headers={"Authorization": "Bearer infer-key-1"})
    assert p.status == 200, p
    server.stop()

    # Admin keys from a file, no inference keys: admin routes still need a key.
    keys = tmp_path / "admin-keys"
    keys.write_text("# admins\nfile-admin-key\n")
    server = start_server(models_without_v2, INFERD_ADMIN_KEYS_FILE=str(keys))
    assert server.index(key="").status == 401
    assert server.index(key="file-admin-key").status == 200
    server.stop()

    # Control off, explicitly, or by default (auto, no admin keys): 403.
    for env in ({"INFERD_MODEL_CONTROL": "off", "INFERD_ADMIN_KEYS": "admin-key-1"}, {}):
        server = start_server(models_without_v2, **env)
        r = server.load("text-classifier", key="admin-key-1" if env else "")
        assert r.status == 403, (env, r)
        assert "error" in r.json(), r
        if not env:  # no keys at all: serving is open and unaffected
            assert server.predict("text-classifier", TEXTS[:1]).status == 200
        server.stop()

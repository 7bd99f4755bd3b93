"""NVIDIA's tritonclient (HTTP) against inferd's model repository extension:
`get_model_repository_index`, `load_model` (with a config override),
`unload_model` and model readiness, on a server of its own with a private copy of
the models (so nothing here changes what the other conformance tests see), with
inference keys and admin keys both on."""

import json
import shutil

import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from conftest import API_KEY, ROOT, golden, predict_v1, running_inferd

ADMIN_KEY = "conformance-admin-5d21"


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(ROOT / "models", models, dirs_exist_ok=True)
    # Versions 1 and 2 only, the highest the default: these tests add a version
    # 3 of their own (the shipped one is the quality tests' time-split control).
    shutil.rmtree(models / "text-classifier" / "3")
    (models / "text-classifier" / "policy.toml").unlink()
    with running_inferd(models, INFERD_ADMIN_KEYS=ADMIN_KEY) as s:
        s["models"] = models
        yield s


@pytest.fixture(scope="module")
def client(repo_server):
    c = http.InferenceServerClient(repo_server["host"], connection_timeout=30,
                                   network_timeout=30)
    yield c
    c.close()


def admin():
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def user():
    return {"Authorization": f"Bearer {API_KEY}"}


def index(client):
    return {(e["name"], e["version"]): e for e in client.get_model_repository_index(headers=admin())}


def classify(client, version=""):
    texts = [golden("text-classifier")[0]["input"]]
    inp = http.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object))
    return client.infer("text-classifier", [inp], model_version=version, headers=user())


def test_index_lists_every_version_ready(client):
    idx = index(client)
    for key in [("text-classifier", "1"), ("text-classifier", "2"), ("lstm-forecaster", "1")]:
        assert idx[key]["state"] == "READY" and idx[key]["reason"] == "", idx[key]
    # The TorchScript twin needs a `--features torch` build; this one says so.
    twin = idx[("lstm-forecaster-torch", "1")]
    assert twin["state"] == "UNAVAILABLE" and "--features torch" in twin["reason"], twin


def test_repository_calls_need_an_admin_key(client):
    for call in (lambda h: client.get_model_repository_index(headers=h),
                 lambda h: client.load_model("text-classifier", headers=h),
                 lambda h: client.unload_model("text-classifier", headers=h)):
        with pytest.raises(InferenceServerException) as e:
            call(user())
        assert e.value.status() == "403" and "admin key" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            call({})
        assert e.value.status() == "401"
    assert client.is_model_ready("text-classifier", headers=user())


def test_unload_and_load_round_trip(client):
    before = classify(client).as_numpy("label").tolist()
    client.unload_model("text-classifier", headers=admin())
    assert not client.is_model_ready("text-classifier", headers=user())
    with pytest.raises(InferenceServerException) as e:
        classify(client)
    assert e.value.status() == "404"
    idx = index(client)
    assert idx[("text-classifier", "2")]["state"] == "UNAVAILABLE"
    assert "unloaded" in idx[("text-classifier", "2")]["reason"]
    # The other model never stopped.
    assert client.is_model_ready("lstm-forecaster", headers=user())

    client.load_model("text-classifier", headers=admin())
    assert client.is_model_ready("text-classifier", headers=user())
    assert classify(client).get_response()["model_version"] == "2"
    assert classify(client).as_numpy("label").tolist() == before


def test_reloaded_model_answers_as_predict_does(client, repo_server):
    # After the round trip above, v2 answers v2 exactly as /predict does.
    texts = [c["input"] for c in golden("text-classifier")[:4]]
    inp = http.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object))
    result = client.infer("text-classifier", [inp], headers=user())
    probs = result.as_numpy("probabilities")
    expected = predict_v1(repo_server, "text-classifier", texts)
    assert probs.tolist() == [[np.float32(p["scores"][l]) for l in ("ham", "spam")]
                              for p in expected]


def test_file_overrides_are_refused(client):
    with pytest.raises(InferenceServerException) as e:
        client.load_model("text-classifier", headers=admin(), config="{}",
                          files={"file:1/model.onnx": b"not a graph"})
    assert e.value.status() == "400" and "not supported" in e.value.message()
    assert client.is_model_ready("text-classifier", headers=user())


def test_load_with_a_config_override_selects_versions(client):
    only_v1 = json.dumps({"version_policy": {"specific": {"versions": [1]}}})
    client.load_model("text-classifier", headers=admin(), config=only_v1)
    assert client.is_model_ready("text-classifier", "1", headers=user())
    assert not client.is_model_ready("text-classifier", "2", headers=user())
    assert classify(client).get_response()["model_version"] == "1"
    assert index(client)[("text-classifier", "2")]["state"] == "UNAVAILABLE"
    both = json.dumps({"version_policy": {"latest": {"num_versions": 2}}})
    client.load_model("text-classifier", headers=admin(), config=both)
    assert client.is_model_ready("text-classifier", "2", headers=user())
    assert classify(client).get_response()["model_version"] == "2"
    with pytest.raises(InferenceServerException) as e:
        client.load_model("text-classifier", headers=admin(), config="{not json")
    assert e.value.status() == "400"


def test_a_corrupt_version_is_refused_and_the_others_serve(client, repo_server):
    v3 = repo_server["models"] / "text-classifier" / "3"
    shutil.copytree(repo_server["models"] / "text-classifier" / "2", v3)
    manifest = (v3 / "model.toml").read_text().replace('version = "2"', 'version = "3"')
    (v3 / "model.toml").write_text(manifest)
    graph = bytearray((v3 / "model.onnx").read_bytes())
    graph[len(graph) // 2] ^= 0xFF
    (v3 / "model.onnx").write_bytes(bytes(graph))
    try:
        with pytest.raises(InferenceServerException) as e:
            client.load_model("text-classifier", headers=admin())
        assert e.value.status() == "400" and "sha256" in e.value.message(), e.value.message()
        entry = index(client)[("text-classifier", "3")]
        assert entry["state"] == "UNAVAILABLE" and "sha256" in entry["reason"], entry
        assert client.is_model_ready("text-classifier", "2", headers=user())
        assert classify(client).get_response()["model_version"] == "2"
        assert index(client)[("text-classifier", "1")]["state"] == "READY"
    finally:
        shutil.rmtree(v3)


def test_unknown_models_are_404(client):
    for call in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException) as e:
            call("no-such-model", headers=admin())
        assert e.value.status() == "404"

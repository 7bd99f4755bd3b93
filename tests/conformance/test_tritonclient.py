"""NVIDIA's tritonclient (HTTP) against inferd's KServe v2 endpoints: health,
metadata and inference for both models, in JSON mode and with the binary tensor
extension (tritonclient's default), with predictions equal to `/predict`'s."""

import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from conftest import golden, predict_v1

LABELS = ["ham", "spam"]


@pytest.fixture(scope="module")
def client(server):
    c = http.InferenceServerClient(server["host"], connection_timeout=10, network_timeout=10)
    yield c
    c.close()


@pytest.fixture
def auth(server):
    # A fresh dict per test: tritonclient writes Inference-Header-Content-Length
    # into the headers dict it is given, which would leak into later calls.
    return {"Authorization": f"Bearer {server['key']}"}


def test_health_and_readiness(client, auth):
    assert client.is_server_live()  # health stays open without a key
    assert client.is_server_ready()
    for model in ("text-classifier", "lstm-forecaster"):
        assert client.is_model_ready(model, headers=auth)
        assert client.is_model_ready(model, "1", headers=auth)
    assert not client.is_model_ready("no-such-model", headers=auth)


def test_server_and_model_metadata(client, auth):
    meta = client.get_server_metadata(headers=auth)
    assert meta["name"] == "inferd" and "binary_tensor_data" in meta["extensions"]
    text = client.get_model_metadata("text-classifier", headers=auth)
    assert text["platform"] == "onnx_onnxv1" and text["versions"] == ["2", "1"]
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["datatype"] for o in text["outputs"]} == {"label": "INT64", "probabilities": "FP32"}
    lstm = client.get_model_metadata("lstm-forecaster", "1", headers=auth)
    assert lstm["inputs"] == [{"name": "window", "datatype": "FP32", "shape": [-1, 26, 1]}]
    assert lstm["outputs"] == [{"name": "forecast", "datatype": "FP32", "shape": [-1, 1]}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_text_classifier_infer_matches_predict(client, auth, server, binary):
    texts = [c["input"] for c in golden("text-classifier")[:8]] + ["Ünïcödé: café, naïve résumé ✓"]
    inp = http.InferInput("text", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t] for t in texts], dtype=object), binary_data=binary)
    outs = [http.InferRequestedOutput("label", binary_data=binary),
            http.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("text-classifier", [inp], outputs=outs, request_id="req-42", headers=auth)
    assert result.get_response()["id"] == "req-42"
    labels = result.as_numpy("label")
    probs = result.as_numpy("probabilities")
    assert labels.shape == (len(texts),) and probs.shape == (len(texts), 2)
    assert probs.dtype == np.float32
    expected = predict_v1(server, "text-classifier", texts)
    for i, p in enumerate(expected):
        assert LABELS[labels[i]] == p["label"]
        assert probs[i].tolist() == [np.float32(p["scores"][l]) for l in LABELS]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_lstm_infer_matches_predict_and_golden(client, auth, server, binary):
    cases = golden("lstm-forecaster")[:16]
    windows = np.array([c["input"] for c in cases], dtype=np.float32)
    inp = http.InferInput("window", list(windows.shape), "FP32")
    inp.set_data_from_numpy(windows, binary_data=binary)
    # No outputs named: tritonclient asks for all of them (binary by default).
    result = client.infer("lstm-forecaster", [inp], model_version="1", headers=auth)
    forecast = result.as_numpy("forecast")
    assert forecast.shape == (16, 1)
    expected = predict_v1(server, "lstm-forecaster", [c["input"] for c in cases])
    assert forecast[:, 0].tolist() == [np.float32(p["forecast"]["co2_ppm"]) for p in expected]
    # And the model's recorded outputs for these held-out windows.
    golden_values = [c["expected"]["forecast"]["co2_ppm"] for c in cases]
    assert np.allclose(forecast[:, 0], golden_values, atol=1e-3)


@pytest.mark.parametrize("dtype,datatype", [(np.float64, "FP64"), (np.int64, "INT64"), (np.int32, "INT32")])
def test_lstm_accepts_other_numeric_datatypes(client, auth, server, dtype, datatype):
    window = np.round(np.array([golden("lstm-forecaster")[0]["input"]], dtype=np.float64))
    inp = http.InferInput("window", list(window.shape), datatype)
    inp.set_data_from_numpy(window.astype(dtype), binary_data=False)
    result = client.infer("lstm-forecaster", [inp], headers=auth)
    expected = predict_v1(server, "lstm-forecaster", window.tolist())
    assert result.as_numpy("forecast")[0, 0] == np.float32(expected[0]["forecast"]["co2_ppm"])


def test_errors_are_protocol_errors(client, auth):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no-such-model", headers=auth)
    assert e.value.status() == "404" and "no-such-model" in e.value.message()
    bad = http.InferInput("window", [1, 25, 1], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 25, 1), dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("lstm-forecaster", [bad], headers=auth)
    assert e.value.status() == "400" and "shape" in e.value.message()
    wrong = http.InferInput("text", [1], "FP32")
    wrong.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("text-classifier", [wrong], headers=auth)
    assert e.value.status() == "400" and "BYTES" in e.value.message()


def test_api_key_is_required(client):
    inp = http.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array(["hello"], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer("text-classifier", [inp])
    assert e.value.status() == "401"
    with pytest.raises(InferenceServerException) as e:
        client.infer("text-classifier", [inp], headers={"Authorization": "Bearer wrong"})
    assert e.value.status() == "401"

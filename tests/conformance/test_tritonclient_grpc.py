"""NVIDIA's tritonclient.grpc against inferd's gRPC front door (the Open
Inference Protocol's GRPCInferenceService on INFERD_GRPC_LISTEN): health,
metadata and inference for both models with predictions equal to `/predict`'s,
error codes, API keys from the `authorization` metadata, and the standard gRPC
health service."""

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from conftest import golden, predict_v1

LABELS = ["ham", "spam"]


@pytest.fixture(scope="module")
def client(server):
    c = tgrpc.InferenceServerClient(server["grpc"])
    yield c
    c.close()


@pytest.fixture
def auth(server):
    return {"authorization": f"Bearer {server['key']}"}


def test_health_readiness_and_metadata(client, auth):
    assert client.is_server_live()  # open without a key, as /v2/health/live
    assert client.is_server_ready()
    for model in ("text-classifier", "lstm-forecaster"):
        assert client.is_model_ready(model, headers=auth)
        assert client.is_model_ready(model, "1", headers=auth)
    meta = client.get_server_metadata(headers=auth)
    assert meta.name == "inferd" and "binary_tensor_data" in meta.extensions
    text = client.get_model_metadata("text-classifier", headers=auth)
    assert text.platform == "onnx_onnxv1" and list(text.versions) == ["2", "1"]
    assert [(i.name, i.datatype, list(i.shape)) for i in text.inputs] == [("text", "BYTES", [-1])]
    lstm = client.get_model_metadata("lstm-forecaster", "1", headers=auth, as_json=True)
    assert lstm["inputs"] == [{"name": "window", "datatype": "FP32", "shape": ["-1", "26", "1"]}]


def test_text_classifier_infer_matches_predict(client, auth, server):
    texts = [c["input"] for c in golden("text-classifier")[:8]] + ["Ünïcödé: café, naïve résumé ✓"]
    inp = tgrpc.InferInput("text", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    outs = [tgrpc.InferRequestedOutput("label"), tgrpc.InferRequestedOutput("probabilities")]
    result = client.infer("text-classifier", [inp], outputs=outs, request_id="req-7", headers=auth)
    assert result.get_response().id == "req-7"
    labels, probs = result.as_numpy("label"), result.as_numpy("probabilities")
    assert labels.shape == (len(texts),) and probs.shape == (len(texts), 2)
    expected = predict_v1(server, "text-classifier", texts)
    for i, p in enumerate(expected):
        assert LABELS[labels[i]] == p["label"]
        assert probs[i].tolist() == [np.float32(p["scores"][l]) for l in LABELS]


def test_lstm_infer_matches_predict_and_golden(client, auth, server):
    cases = golden("lstm-forecaster")[:16]
    windows = np.array([c["input"] for c in cases], dtype=np.float32)
    inp = tgrpc.InferInput("window", list(windows.shape), "FP32")
    inp.set_data_from_numpy(windows)
    result = client.infer("lstm-forecaster", [inp], model_version="1", headers=auth)
    forecast = result.as_numpy("forecast")
    assert forecast.shape == (16, 1)
    expected = predict_v1(server, "lstm-forecaster", [c["input"] for c in cases])
    assert forecast[:, 0].tolist() == [np.float32(p["forecast"]["co2_ppm"]) for p in expected]
    golden_values = [c["expected"]["forecast"]["co2_ppm"] for c in cases]
    assert np.allclose(forecast[:, 0], golden_values, atol=1e-3)


def test_errors_have_their_codes(client, auth):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no-such-model", headers=auth)
    assert e.value.status() == "StatusCode.NOT_FOUND" and "no-such-model" in e.value.message()
    bad = tgrpc.InferInput("window", [1, 25, 1], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 25, 1), dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("lstm-forecaster", [bad], headers=auth)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "shape" in e.value.message()
    wrong = tgrpc.InferInput("text", [1], "FP32")
    wrong.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("text-classifier", [wrong], headers=auth)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "BYTES" in e.value.message()


def test_api_key_is_required(client):
    inp = tgrpc.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"hello"], dtype=object))
    for headers in (None, {"authorization": "Bearer wrong"}):
        with pytest.raises(InferenceServerException) as e:
            client.infer("text-classifier", [inp], headers=headers)
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"


def test_health_service(server):
    """grpc.health.v1.Health/Check, as Kubernetes' gRPC probes call it. Its two
    messages are one field each, encoded here by hand rather than with another
    package: HealthCheckRequest{service = 1}, HealthCheckResponse{status = 1},
    SERVING = 1."""
    def request(service: str) -> bytes:
        b = service.encode()
        return (b"\x0a" + bytes([len(b)]) + b) if b else b""

    with grpc.insecure_channel(server["grpc"]) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=request, response_deserializer=lambda b: b)
        for service in ("", "inference.GRPCInferenceService"):
            assert check(service, timeout=5) == b"\x08\x01", service
        with pytest.raises(grpc.RpcError) as e:
            check("no.such.Service", timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

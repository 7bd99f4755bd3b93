"""A minimal FastAPI + uvicorn + onnxruntime service with inferd's /predict contract.

It serves the same two ONNX models from ../../models, the way the reference Python
services are built: a sync endpoint (FastAPI runs it in its thread pool), one
ONNX Runtime session per model with one intra-op thread, no batching, no cache.
It validates the request shape like inferd does, so both do comparable work.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

MODELS_DIR = Path(os.environ.get("MODELS_DIR", Path(__file__).resolve().parents[2] / "models"))
app = FastAPI()
MODELS: dict[str, dict] = {}


def load() -> None:
    for manifest_path in sorted(MODELS_DIR.glob("*/1/model.toml")):
        # ONNX models only: a TorchScript model (model.pt) is not this peer's to serve.
        if not (manifest_path.parent / "model.onnx").exists():
            continue
        m = tomllib.loads(manifest_path.read_text())
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(manifest_path.parent / "model.onnx"), so, providers=["CPUExecutionProvider"])
        MODELS[m["name"]] = {"manifest": m, "session": sess}


load()


class PredictRequest(BaseModel):
    model: str
    version: str | None = None
    instances: list


@app.get("/healthz")
def healthz():
    return {"status": "alive"}


@app.post("/predict")
def predict(req: PredictRequest):
    entry = MODELS.get(req.model)
    if entry is None:
        raise HTTPException(404, f"no model named {req.model}")
    m, sess = entry["manifest"], entry["session"]
    if not req.instances:
        raise HTTPException(422, "instances must not be empty")
    input_name = m["inputs"][0]["name"]
    if m["task"] == "text-classification":
        if not all(isinstance(t, str) for t in req.instances):
            raise HTTPException(422, "instances must be strings")
        labels = m["text"]["labels"]
        probs = sess.run([m["text"]["scores_output"]], {input_name: np.array(req.instances, dtype=object)})[0]
        preds = [
            {"label": labels[int(p.argmax())], "scores": {lab: float(p[i]) for i, lab in enumerate(labels)}}
            for p in probs
        ]
    else:
        ts = m["timeseries"]
        x = np.asarray(req.instances, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (ts["window"], len(ts["features"])) or not np.isfinite(x).all():
            raise HTTPException(422, "bad window shape")
        out = sess.run([m["outputs"][0]["name"]], {input_name: x})[0]
        preds = [{"forecast": {t: float(row[i]) for i, t in enumerate(ts["targets"])}} for row in out]
    return {"model": m["name"], "version": m["version"], "predictions": preds}

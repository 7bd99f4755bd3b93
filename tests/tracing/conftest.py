"""A live inferd exporting traces to a real OTLP receiver (`receiver.py`), both
on free loopback ports, stopped at the end (inferd by PID)."""

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_inferd(**env_extra):
    """The release binary with `env_extra` (OTEL_* among them) until the block
    ends. Predictions are logged to a JSON-lines file (`log`); the cache is
    off unless asked for, so every request runs the model."""
    binary = Path(os.environ.get("INFERD_BIN", ROOT / "target/release/inferd"))
    if not binary.is_file():
        pytest.fail(f"no inferd binary at {binary}: cargo build --release")
    port, grpc_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="inferd-tracing-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(INFERD_LISTEN=f"127.0.0.1:{port}", INFERD_GRPC_LISTEN=f"127.0.0.1:{grpc_port}",
               INFERD_CACHE="off", INFERD_PREDLOG="jsonl", INFERD_PREDLOG_PATH=str(work / "predictions.jsonl"),
               INFERD_PREDLOG_FLUSH_MS="50", INFERD_MODELS_DIR=str(ROOT / "models"),
               OTEL_BSP_SCHEDULE_DELAY="100")
    env.setdefault("ORT_DYLIB_PATH", str(ROOT / ".ort/lib/libonnxruntime.so.1.31.1"))
    env.update({k: str(v) for k, v in env_extra.items()})
    log = open(work / "inferd.log", "wb")
    proc = subprocess.Popen([binary, "serve"], env=env, cwd=ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"inferd did not become ready:\n{(work / 'inferd.log').read_text()[-4000:]}")
            time.sleep(0.1)
        yield {"url": url, "grpc": f"127.0.0.1:{grpc_port}", "log": work / "predictions.jsonl",
               "server_log": work / "inferd.log", "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def predict(server, text: str, headers: dict | None = None, path: str = "/predict"):
    """POSTs one text; returns (status, response headers, body)."""
    body = {"model": "text-classifier", "instances": [text]}
    if path != "/predict":
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    req = urllib.request.Request(f"{server['url']}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def metric(server, name: str) -> float:
    """The sum of a family's series on the server's /metrics."""
    with urllib.request.urlopen(f"{server['url']}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name + " ") or l.startswith(name + "{"))


def log_rows(server) -> list[dict]:
    path = server["log"]
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(l) for l in text[: text.rfind("\n") + 1].splitlines()]

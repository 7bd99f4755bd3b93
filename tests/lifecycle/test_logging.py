"""What the server logs in states that are expected, and under repeated faults:
a `/readyz` 503 while models load is not an error, and a fault that repeats
per request is logged once per interval with the count of lines held back."""

import json
import time
import concurrent.futures

from conftest import MODELS, free_port, golden_inputs, http


def levels(server):
    out = []
    for line in server.log_tail(10_000_000).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_warm_up_503s_are_not_errors_and_repeated_failures_are_rate_limited(start_server):
    # Every request expires before its model answers: a 504 each time, the
    # kind of failure that comes by the thousand under overload.
    server = start_server(MODELS, wait=False, INFERD_LOG_FORMAT="json", RUST_LOG="info",
                          INFERD_REQUEST_TIMEOUT_MS=1, INFERD_MAX_BATCH_DELAY_MS=5)
    not_ready = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            r = http("GET", f"{server.url}/readyz", timeout=1)
        except OSError:
            time.sleep(0.05)
            continue
        if r.status == 200:
            break
        assert r.status == 503, r
        not_ready += 1
        time.sleep(0.02)
    assert not_ready > 0, "never saw the server before it was ready"

    body = {"model": "lstm-forecaster", "instances": golden_inputs("lstm-forecaster")[:1]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: http("POST", f"{server.url}/predict", body).status,
                                 range(400)))
    timed_out = statuses.count(504)
    assert timed_out >= 100, statuses

    lines = levels(server)
    errors = [l for l in lines if l.get("level") == "ERROR"]
    assert errors == [], errors[:3]
    failed = [l for l in lines if "prediction failed" in json.dumps(l)]
    assert 1 <= len(failed) <= 3, f"{len(failed)} lines for {timed_out} failures"
    print(f"\n{not_ready} warm-up 503s, no ERROR line; {timed_out} 504s logged in {len(failed)} line(s)")


def test_a_default_start_logs_plain_text_says_what_it_serves_and_warns_of_nothing(start_server):
    """The server's log written to a file: no colour escapes (those are for a
    terminal), the models and versions it serves and its ports at INFO, and
    no WARN or ERROR on a start with nothing for an operator to act on (the
    TorchScript twin this build cannot run is reported at INFO: the index and
    the metrics carry it)."""
    server = start_server(MODELS, INFERD_CACHE="on")
    log = server.log_tail(10_000_000)
    assert "\x1b[" not in log, "escape sequences in a log written to a file"
    ready = [l for l in log.splitlines() if " ready " in l or l.rstrip().endswith(" ready")]
    assert ready, log
    for model, versions in (("lstm-forecaster", "1"), ("text-classifier", "1,2")):
        assert f"{model} {versions}" in ready[0], ready[0]
    assert f"listening on 127.0.0.1:{server.port}" in log
    assert "gRPC listening on 127.0.0.1:" in log
    assert "lstm-forecaster-torch" in log and "unavailable in this build" in log
    loud = [l for l in log.splitlines() if " WARN " in l or " ERROR " in l]
    assert loud == [], loud


def test_an_unreachable_redis_is_reported_at_start_up(start_server):
    """A configured Redis that does not answer is named at start-up, at WARN,
    with its password redacted; the server starts and serves from the model."""
    port = free_port()  # nothing listens there
    server = start_server(MODELS, INFERD_CACHE="on",
                          INFERD_REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0")
    deadline = time.monotonic() + 30
    while "Redis not reachable" not in server.log_tail(10_000_000):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    line = next(l for l in server.log_tail(10_000_000).splitlines() if "Redis not reachable" in l)
    assert " WARN " in line and f"127.0.0.1:{port}" in line and "s3cret" not in line, line
    body = {"model": "lstm-forecaster", "instances": golden_inputs("lstm-forecaster")[:1]}
    assert http("POST", f"{server.url}/predict", body).status == 200


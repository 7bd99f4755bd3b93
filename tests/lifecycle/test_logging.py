"""What the server logs in states that are expected, and under repeated faults:
a `/readyz` 503 while models load is not an error, and a fault that repeats
per request is logged once per interval with the count of lines held back."""

import json
import time
import concurrent.futures

from conftest import MODELS, golden_inputs, http


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

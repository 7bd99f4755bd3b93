"""OpenTelemetry traces from a live inferd, received by a real OTLP receiver:
the span tree and the batch links of batched requests (over OTLP/gRPC and
OTLP/HTTP), the W3C traceparent continued and its trace id in the log row and
the response, gRPC ModelInfer traced like REST, the sampler obeyed, and
requests unharmed (spans dropped and counted) while the collector is down,
with export resuming when it is back."""

import concurrent.futures
import os
import secrets
import subprocess
import time

import grpc
import pytest

from conftest import ROOT, free_port, log_rows, metric, predict, running_inferd
from receiver import Receiver

TEXTS = [
    "Are we still meeting on Thursday afternoon?",
    "WIN a FREE cruise: reply with your bank details now",
    "The minutes from the planning meeting are attached.",
    "Your invoice for October is ready to download.",
    "Can you review my pull request before lunch?",
    "Congratulations, you have been selected for a cash prize",
]


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace}-{parent}-{'01' if sampled else '00'}", trace, parent


def send_concurrently(server, n: int, path: str = "/predict") -> list[tuple[str, str, str, int, dict]]:
    """n requests at once, each with its own traceparent; returns
    (trace id, client span id, request id, status, headers) per request."""
    def one(i):
        tp, trace, parent = traceparent()
        rid = f"req-{i}-{trace[:6]}"
        status, headers, _ = predict(server, TEXTS[i % len(TEXTS)],
                                     {"traceparent": tp, "x-request-id": rid}, path)
        return trace, parent, rid, status, headers
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_span_tree_and_batch_links(receiver, protocol):
    with running_inferd(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint(protocol),
                        OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_SERVICE_NAME="inferd-under-test",
                        INFERD_MAX_BATCH_DELAY_MS=50, INFERD_MAX_BATCH_SIZE=16) as server:
        sent = send_concurrently(server, 6)
        assert [s[3] for s in sent] == [200] * 6
        names = {"POST /predict", "decode", "queue", "inference", "predlog.write"}
        for trace, *_ in sent:
            receiver.wait_for(lambda spans, t=trace: names <= {s.name for s in spans if s.trace_id == t},
                              what=f"complete trace {trace}")
        batches = receiver.wait_for(lambda spans: [s for s in spans if s.name == "batch"], what="batch span")

        roots = {}
        for trace, parent, rid, _, headers in sent:
            assert headers["x-trace-id"] == trace
            spans = receiver.spans(trace)
            (root,) = [s for s in spans if s.name == "POST /predict"]
            roots[trace] = root
            # The client's trace continued: same trace, the client's span as parent.
            assert root.parent_span_id == parent and root.kind == "server"
            assert root.attributes["http.response.status_code"] == 200
            assert root.attributes["http.route"] == "/predict"
            assert root.attributes["inferd.model"] == "text-classifier"
            assert root.attributes["inferd.request_id"] == rid
            assert root.resource["service.name"] == "inferd-under-test"
            for name in ("decode", "queue", "inference", "predlog.write"):
                (child,) = [s for s in spans if s.name == name]
                assert child.parent_span_id == root.span_id, name
                assert child.kind == "internal"
            by = {s.name: s for s in spans}
            # Within the request, in order: decode, queue, inference; the log
            # row is written after the answer (and so may end after the root).
            slack = 1_000_000  # 1 ms of clock conversion between Instants and wall time
            assert root.start_ns - slack <= by["decode"].start_ns <= by["queue"].start_ns + slack
            assert by["queue"].end_ns <= by["inference"].start_ns + slack
            assert by["inference"].end_ns <= root.end_ns + slack
            assert by["predlog.write"].start_ns >= by["inference"].end_ns - slack
            # The inference span links to the batch the request ran in.
            (link,) = by["inference"].links
            (batch,) = [b for b in batches if b.span_id == link[1]]
            assert link[0] == batch.trace_id
            assert (trace, root.span_id) in [(t, s) for t, s, _ in batch.links], "the batch links back"
            assert by["inference"].attributes["inferd.batch.size"] == batch.attributes["inferd.batch.size"]
            assert (by["inference"].start_ns, by["inference"].end_ns) == (batch.start_ns, batch.end_ns)

        # Each batch: a child of one of its requests, linked to every request in it.
        linked = []
        for b in batches:
            assert b.attributes["inferd.batch.requests"] == len(b.links)
            assert b.attributes["inferd.batch.size"] == len(b.links)  # one instance each
            assert (b.trace_id, b.parent_span_id) in [(t, roots[t].span_id) for t, *_ in b.links[:1]]
            linked += [t for t, _, _ in b.links]
        assert sorted(linked) == sorted(s[0] for s in sent), "every request in exactly one batch"
        assert max(len(b.links) for b in batches) >= 2, "concurrent requests were batched together"
        # The trace id is in each request's log row.
        rows = {r["request_id"]: r for r in log_rows(server)}
        for trace, _, rid, _, _ in sent:
            assert rows[rid]["trace_id"] == trace
        assert metric(server, "inferd_trace_spans_dropped_total") == 0

        widest = max(batches, key=lambda b: len(b.links))
        print(f"\n{protocol}: the trace of the batch span's parent request "
              f"({len(widest.links)} requests in its batch):\n{receiver.render_tree(widest.trace_id)}")


def test_a_request_without_traceparent_starts_its_own_trace(receiver):
    with running_inferd(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint("grpc"),
                        OTEL_EXPORTER_OTLP_PROTOCOL="grpc") as server:
        status, headers, _ = predict(server, TEXTS[0], {"x-request-id": "untraced"})
        assert status == 200
        trace = headers["x-trace-id"]
        assert len(trace) == 32 and int(trace, 16) != 0
        root = receiver.wait_for(lambda spans: [s for s in spans if s.trace_id == trace and s.name == "POST /predict"])[0]
        assert root.parent_span_id == ""
        deadline = time.monotonic() + 10
        while not [r for r in log_rows(server) if r["request_id"] == "untraced"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (row,) = [r for r in log_rows(server) if r["request_id"] == "untraced"]
        assert row["trace_id"] == trace
        # A v2 request is traced under its route template.
        tp, trace2, parent = traceparent()
        status, headers, _ = predict(server, TEXTS[1], {"traceparent": tp}, "/v2/models/text-classifier/infer")
        assert status == 200 and headers["x-trace-id"] == trace2
        root = receiver.wait_for(lambda spans: [s for s in spans if s.trace_id == trace2 and s.kind == "server"])[0]
        assert root.name == "POST /v2/models/{name}/infer" and root.parent_span_id == parent
        # A bad request is traced too, its span marked an error only for 5xx.
        tp, trace3, _ = traceparent()
        status, headers, _ = predict(server, "", {"traceparent": tp}, "/v2/models/no-such-model/infer")
        assert status == 404 and headers["x-trace-id"] == trace3
        root = receiver.wait_for(lambda spans: [s for s in spans if s.trace_id == trace3 and s.kind == "server"])[0]
        assert root.attributes["http.response.status_code"] == 404 and root.status_code == 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def model_infer_request(text: str) -> bytes:
    """`inference.ModelInferRequest` for one text, encoded by hand (field
    numbers from proto/grpc_predict_v2.proto) so this venv needs no stubs."""
    contents = _field(8, text.encode())  # InferTensorContents.bytes_contents
    tensor = _field(1, b"text") + _field(2, b"BYTES") + _field(3, _varint(1)) + _field(5, contents)
    return _field(1, b"text-classifier") + _field(5, tensor)


def test_grpc_model_infer_continues_the_clients_trace(receiver):
    with running_inferd(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint("http/protobuf"),
                        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf") as server:
        tp, trace, parent = traceparent()
        with grpc.insecure_channel(server["grpc"]) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            _, call = infer.with_call(model_infer_request(TEXTS[1]), timeout=10,
                                      metadata=[("traceparent", tp), ("x-request-id", "grpc-traced")])
            assert dict(call.initial_metadata())["x-trace-id"] == trace
        names = {"inference.GRPCInferenceService/ModelInfer", "decode", "queue", "inference", "batch"}
        receiver.wait_for(lambda spans: names <= {s.name for s in spans if s.trace_id == trace})
        (root,) = [s for s in receiver.spans(trace) if s.kind == "server"]
        assert root.name == "inference.GRPCInferenceService/ModelInfer"
        assert root.parent_span_id == parent
        assert root.attributes["rpc.system"] == "grpc" and root.attributes["rpc.method"] == "ModelInfer"
        assert root.attributes["http.response.status_code"] == 200


def test_the_sampler_decides(receiver):
    # always_off: nothing exported, but the trace id still reaches the client.
    with running_inferd(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint("grpc"),
                        OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_TRACES_SAMPLER="always_off") as server:
        for text in TEXTS:
            status, headers, _ = predict(server, text)
            assert status == 200 and len(headers["x-trace-id"]) == 32
        time.sleep(0.5)  # five export intervals
        assert receiver.spans() == []
        assert metric(server, "inferd_trace_spans_exported_total") == 0
    # The default, parent-based: a caller's "not sampled" is obeyed, its
    # "sampled" too, in the same server.
    with running_inferd(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint("grpc"),
                        OTEL_EXPORTER_OTLP_PROTOCOL="grpc") as server:
        tp_off, trace_off, _ = traceparent(sampled=False)
        tp_on, trace_on, _ = traceparent(sampled=True)
        assert predict(server, TEXTS[0], {"traceparent": tp_off})[1]["x-trace-id"] == trace_off
        assert predict(server, TEXTS[1], {"traceparent": tp_on})[1]["x-trace-id"] == trace_on
        receiver.wait_for(lambda spans: [s for s in spans if s.trace_id == trace_on and s.name == "predlog.write"])
        assert receiver.spans(trace_off) == []
    # traceidratio 0: nothing, even when the caller's flag says sampled
    # (the sampler is not parent-based).
    with running_inferd(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint("grpc"),
                        OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_TRACES_SAMPLER="traceidratio",
                        OTEL_TRACES_SAMPLER_ARG="0") as server:
        tp, trace, _ = traceparent()
        assert predict(server, TEXTS[2], {"traceparent": tp})[0] == 200
        time.sleep(0.5)
        assert receiver.spans(trace) == []


def assert_export_resumes(server, receiver, text: str):
    """Sends traced requests until one's spans reach `receiver` (within 20 s):
    gRPC's reconnect back-off, or an export still timing out, can hold the
    first ones back."""
    tp, trace, _ = traceparent()
    deadline = time.monotonic() + 20
    while True:
        assert predict(server, text, {"traceparent": tp})[0] == 200
        try:
            receiver.wait_for(lambda spans: [s for s in spans if s.trace_id == trace], timeout=2)
            return
        except AssertionError:
            assert time.monotonic() < deadline, "export never resumed"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_requests_are_unharmed_while_the_collector_is_down(protocol):
    """The collector's ports are closed: every request is served, the spans are
    dropped and counted. A collector started on those ports later receives
    the spans of new requests."""
    grpc_port, http_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{grpc_port if protocol == 'grpc' else http_port}"
    with running_inferd(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                        OTEL_EXPORTER_OTLP_TIMEOUT=1000, OTEL_BSP_EXPORT_TIMEOUT=2000) as server:
        t0 = time.monotonic()
        statuses = [predict(server, f"{TEXTS[i % len(TEXTS)]} #{i}")[0] for i in range(200)]
        took = time.monotonic() - t0
        assert statuses == [200] * 200
        deadline = time.monotonic() + 15
        while metric(server, "inferd_trace_spans_dropped_total") == 0:
            assert time.monotonic() < deadline, "no drop counted"
            time.sleep(0.1)
        assert metric(server, "inferd_trace_spans_exported_total") == 0
        print(f"\n{protocol}, collector down: 200 requests in {took:.2f} s, all 200; "
              f"spans dropped so far: {metric(server, 'inferd_trace_spans_dropped_total'):.0f}")

        # The collector comes up where inferd looks for it.
        r = Receiver().start(grpc_port=grpc_port, http_port=http_port)
        try:
            assert_export_resumes(server, r, TEXTS[3])
            assert metric(server, "inferd_trace_spans_exported_total") > 0
        finally:
            r.stop()


def test_cache_and_single_flight_spans(receiver):
    """Cache on: the first request for a text leads its computation; one sent
    while it waits in the batch queue follows it (`single_flight.wait`, no
    queue or inference of its own); one sent afterwards is a cache hit.

    The leader's batch waits for a second instance (batches of 2, a 60 s
    delay): it runs only when a third request, for another text, fills it,
    which the test sends once the follower has looked the cache up (its miss
    is counted) and so joined the leader's flight. No sleep decides the order."""
    with running_inferd(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint("grpc"),
                        OTEL_EXPORTER_OTLP_PROTOCOL="grpc", INFERD_CACHE="on",
                        INFERD_MAX_BATCH_DELAY_MS=60000, INFERD_MAX_BATCH_SIZE=2) as server:
        text = f"Quarterly numbers are in, see attached ({secrets.token_hex(4)})"
        filler = f"Lunch on Friday? ({secrets.token_hex(4)})"
        (tp_lead, lead, _), (tp_follow, follow, _), (tp_hit, hit, _) = (traceparent() for _ in range(3))
        misses = 'inferd_cache_requests_total{result="miss"}'

        def until(what, cond):
            deadline = time.monotonic() + 30
            while not cond():
                assert time.monotonic() < deadline, f"never happened: {what}"
                time.sleep(0.005)

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            base = metric(server, misses)
            first = pool.submit(predict, server, text, {"traceparent": tp_lead})
            until("the leader's miss", lambda: metric(server, misses) >= base + 1)
            second = pool.submit(predict, server, text, {"traceparent": tp_follow})
            until("the follower's miss", lambda: metric(server, misses) >= base + 2)
            third = pool.submit(predict, server, filler)
            assert first.result()[0] == 200 and second.result()[0] == 200
            assert third.result()[0] == 200
        assert second.result()[2]["predictions"] == first.result()[2]["predictions"]
        status, _, body = predict(server, text, {"traceparent": tp_hit})
        assert status == 200 and body["cached"] == [True]

        def names(trace):
            return {s.name for s in receiver.spans(trace)}
        receiver.wait_for(lambda _: {"queue", "inference", "predlog.write"} <= names(lead))
        receiver.wait_for(lambda _: {"single_flight.wait", "predlog.write"} <= names(follow))
        receiver.wait_for(lambda _: {"cache.lookup", "predlog.write"} <= names(hit))
        lookups = {t: [s for s in receiver.spans(t) if s.name == "cache.lookup"] for t in (lead, follow, hit)}
        assert [(s.attributes["inferd.cache.hits"], s.attributes["inferd.cache.misses"]) for s in lookups[lead]] == [(0, 1)]
        assert [(s.attributes["inferd.cache.hits"], s.attributes["inferd.cache.misses"]) for s in lookups[follow]] == [(0, 1)]
        assert [(s.attributes["inferd.cache.hits"], s.attributes["inferd.cache.misses"]) for s in lookups[hit]] == [(1, 0)]
        (wait,) = [s for s in receiver.spans(follow) if s.name == "single_flight.wait"]
        assert wait.attributes["inferd.single_flight.followed"] == 1
        assert not {"queue", "inference"} & names(follow) and not {"queue", "inference"} & names(hit)
        print(f"\nthe follower's trace:\n{receiver.render_tree(follow)}")


@pytest.mark.parametrize("env,message", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "not a url"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grcp"},
     "OTEL_EXPORTER_OTLP_PROTOCOL"),
])
def test_a_bad_otlp_setting_stops_start_up(env, message):
    """A typo in the OTLP settings is a start-up error naming the variable,
    not a server that silently exports elsewhere or nowhere."""
    binary = os.environ.get("INFERD_BIN", str(ROOT / "target/release/inferd"))
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full.update(env, INFERD_LISTEN=f"127.0.0.1:{free_port()}", INFERD_GRPC_LISTEN="off",
                INFERD_PREDLOG="off", INFERD_MODELS_DIR=str(ROOT / "models"))
    full.setdefault("ORT_DYLIB_PATH", str(ROOT / ".ort/lib/libonnxruntime.so.1.31.1"))
    done = subprocess.run([binary, "serve"], env=full, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done
    assert message in done.stderr and "OpenTelemetry" in done.stderr, done.stderr


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_requests_are_unharmed_while_the_collector_hangs(receiver, protocol):
    """The collector accepts exports and never answers: the export thread waits
    out its timeout while the bounded queue fills; requests are served at
    their usual speed, the spans are dropped and counted (queue full, export
    timed out). When the collector answers again, spans arrive again."""
    receiver.freeze()
    with running_inferd(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint(protocol),
                        OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_BSP_MAX_QUEUE_SIZE=256,
                        OTEL_BSP_MAX_EXPORT_BATCH_SIZE=64, OTEL_EXPORTER_OTLP_TIMEOUT=2000,
                        OTEL_BSP_EXPORT_TIMEOUT=2000) as server:
        took = []
        for i in range(300):
            t0 = time.monotonic()
            status, _, _ = predict(server, f"{TEXTS[i % len(TEXTS)]} #{i}")
            took.append(time.monotonic() - t0)
            assert status == 200
        took.sort()
        p99 = took[int(len(took) * 0.99)]
        assert receiver.held >= 1, "an export reached the hung collector"
        assert p99 < 0.5, f"p99 {p99 * 1000:.0f} ms while the collector hangs"
        deadline = time.monotonic() + 15
        while True:
            full = metric(server, 'inferd_trace_spans_dropped_total{reason="queue_full"}')
            failed = metric(server, 'inferd_trace_spans_dropped_total{reason="export_failed"}')
            if full > 0 and failed > 0:
                break
            assert time.monotonic() < deadline, (full, failed)
            time.sleep(0.1)
        print(f"\n{protocol}, collector hung: 300 requests, p99 {p99 * 1000:.1f} ms; "
              f"dropped: queue_full {full:.0f}, export_failed {failed:.0f}")
        receiver.thaw()
        assert_export_resumes(server, receiver, TEXTS[0])

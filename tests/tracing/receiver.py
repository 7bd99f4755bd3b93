"""A real OTLP trace receiver for the tests: OTLP/gRPC (the `TraceService`
from the opentelemetry-proto package, served by grpcio) and OTLP/HTTP
protobuf (`POST /v1/traces`) on two loopback ports, keeping every span it is
sent. It answers as a collector does; it can be stopped and started again on
the same ports, to play a collector that goes down and comes back, and frozen
(exports accepted but never answered until thawed), to play a hung one."""

import http.server
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _value(v):
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict
    links: list  # [(trace_id, span_id, attributes)]
    status_code: int
    resource: dict = field(repr=False)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class Receiver:
    def __init__(self):
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        self.exports = 0
        self.grpc_port = None
        self.http_port = None
        self._grpc = None
        self._http = None
        self._thawed = threading.Event()
        self._thawed.set()
        self.held = 0  # exports waiting while frozen

    def freeze(self):
        """Exports are accepted, then held without an answer until `thaw`."""
        self._thawed.clear()

    def thaw(self):
        self._thawed.set()

    def _hold(self):
        if not self._thawed.is_set():
            with self._lock:
                self.held += 1
            self._thawed.wait(120)

    # ---- the two endpoints -------------------------------------------------------

    def _take(self, req: trace_service_pb2.ExportTraceServiceRequest):
        got = []
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(Span(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), name=s.name,
                        kind=KINDS.get(s.kind, str(s.kind)),
                        start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        links=[(l.trace_id.hex(), l.span_id.hex(),
                                {a.key: _value(a.value) for a in l.attributes}) for l in s.links],
                        status_code=s.status.code, resource=resource))
        with self._lock:
            self._spans.extend(got)
            self.exports += 1

    def start(self, grpc_port: int = 0, http_port: int = 0) -> "Receiver":
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver._hold()
                receiver._take(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{grpc_port}")
        self._grpc.start()

        class Handler(http.server.BaseHTTPRequestHandler):
            # One request per connection: a stopped receiver must not keep
            # taking spans over a kept-alive connection.
            protocol_version = "HTTP/1.0"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                receiver._hold()
                receiver._take(req)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/x-protobuf")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the exporter gave up waiting (a frozen receiver)

            def log_message(self, *args):
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self._thawed.set()  # nothing stays held past the receiver's life
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def endpoint(self, protocol: str) -> str:
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return f"http://127.0.0.1:{port}"

    # ---- what it received --------------------------------------------------------

    def spans(self, trace_id: str | None = None) -> list[Span]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "spans"):
        """Polls until `predicate(spans)` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            got = predicate(self.spans())
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: no {what} within {timeout} s; "
                                     f"{len(self.spans())} spans: {sorted({s.name for s in self.spans()})}")
            time.sleep(0.05)

    def render_tree(self, trace_id: str) -> str:
        """The trace as an indented tree with durations, children in start order;
        a link is shown as `-> name` of the span it points to, when received."""
        spans = self.spans(trace_id)
        by_id = {s.span_id: s for s in self.spans()}
        children: dict[str, list[Span]] = {}
        for s in spans:
            children.setdefault(s.parent_span_id, []).append(s)
        roots = [s for s in spans if s.parent_span_id not in {x.span_id for x in spans}]
        lines: list[str] = []

        def label(s: Span) -> str:
            text = f"{s.name}  {s.duration_ms:.3f} ms"
            links = [by_id.get(sid) for _, sid, _ in s.links]
            if s.links:
                names = [l.name if l else "?" for l in links]
                text += f"  links: {len(s.links)} ({', '.join(sorted(set(names)))})"
            return text

        def walk(s: Span, prefix: str, last: bool, top: bool):
            lines.append(label(s) if top else f"{prefix}{'└─ ' if last else '├─ '}{label(s)}")
            kids = sorted(children.get(s.span_id, []), key=lambda k: (k.start_ns, k.name))
            for i, k in enumerate(kids):
                walk(k, prefix if top else prefix + ("   " if last else "│  "), i == len(kids) - 1, False)

        for r in sorted(roots, key=lambda s: s.start_ns):
            walk(r, "", True, True)
        return "\n".join(lines)

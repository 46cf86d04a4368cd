"""A real OTLP trace receiver for the tests: OTLP/gRPC (the collector's TraceService) or OTLP/HTTP
(POST /v1/traces), built from opentelemetry-proto's messages, on a port of its own binding.

`Collector.spans()` flattens what arrived; `wait_for` waits on a condition, not a sleep. The server
under test exports with OTEL_BSP_SCHEDULE_DELAY (below) so that spans leave within a tenth of a second.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

EXPORT_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[str]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Collector:
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._changed = threading.Condition()
        self.endpoint = ""

    def receive(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def spans(self) -> list[Span]:
        with self._changed:
            requests = list(self.requests)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append(
                            Span(
                                span.name,
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                {a.key: _value(a.value) for a in span.attributes},
                                resource,
                                [link.span_id.hex() for link in span.links],
                            )
                        )
        return found

    def wait_for(self, probe: Callable[[list[Span]], bool], what: str, timeout_s: float = 20.0) -> list[Span]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                spans = self.spans()
                if probe(spans):
                    return spans
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}; spans so far: {[s.name for s in spans]}")
                self._changed.wait(remaining)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def Export(self, request: Any, context: Any) -> Any:
        self.collector.receive(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def grpc_collector() -> Iterator[Collector]:
    """OTLP/gRPC on 127.0.0.1 (endpoint: host:port)."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(collector), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    collector.endpoint = f"127.0.0.1:{port}"
    try:
        yield collector
    finally:
        server.stop(grace=None)


@contextlib.contextmanager
def http_collector() -> Iterator[Collector]:
    """OTLP/HTTP on 127.0.0.1 (endpoint: http://host:port/v1/traces)."""
    collector = Collector()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
                self.send_error(400, f"unexpected {self.path} {self.headers['Content-Type']}")
                return
            collector.receive(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True)
    thread.start()
    collector.endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main() -> None:
    """`python -m tests.tracing.collector`: an OTLP/gRPC receiver in a process of its own (bench/bench_tracing.py).
    Prints its endpoint, serves until standard input closes, then prints the number of spans received."""
    import sys

    with grpc_collector() as collector:
        print(collector.endpoint, flush=True)
        sys.stdin.read()
        print(len(collector.spans()), flush=True)


if __name__ == "__main__":
    main()

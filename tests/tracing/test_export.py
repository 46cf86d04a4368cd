"""A real server exports its spans over OTLP (gRPC and HTTP) to a receiver the test runs, and the
spans of a request join the trace its caller named in a W3C traceparent (HTTP header, gRPC metadata)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from runtime.examples import save_model
from tests.models import build_identity
from tests.serving import RunningServer, running_server
from tests.tracing.collector import EXPORT_ENV, Collector, Span, grpc_collector, http_collector


@pytest.fixture(scope="module", params=[("grpc", 1), ("http", 1), ("grpc", 3)], ids=["grpc", "http", "grpc-workers3"])
def traced(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Collector, int]]:
    """A server exporting over `protocol`; with --workers 3 the spans are the engine process's and the
    caller's traceparent crosses from the front end that read it."""
    protocol, workers = request.param
    root = tmp_path_factory.mktemp(f"otlp-{protocol}")
    save_model(build_identity("FP32"), root / "models", "ident")
    with (grpc_collector() if protocol == "grpc" else http_collector()) as collector:
        args = ["--trace-otlp-endpoint", collector.endpoint, "--trace-otlp-protocol", protocol, "--trace-rate", "1"]
        with running_server(root / "models", root / "server", args, env=EXPORT_ENV, workers=workers) as server:
            yield server, collector, workers


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _in_trace(trace_id: str) -> Callable[[list[Span]], bool]:
    def probe(spans: list[Span]) -> bool:
        names = [s.name for s in spans if s.trace_id == trace_id]
        return {"InferRequest", "queue", "compute"} <= set(names)

    return probe


def test_spans_arrive_as_children_of_the_callers_span(traced: tuple[RunningServer, Collector, int]) -> None:
    server, collector, _ = traced
    data = np.ones((1, 4), np.float32)
    http_header, http_trace, http_parent = _traceparent()
    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(data)
        client.infer("ident", [tensor], headers={"traceparent": http_header})
    grpc_header, grpc_trace, grpc_parent = _traceparent()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(data)
        client.infer("ident", [tensor], headers={"traceparent": grpc_header})

    for trace_id, parent, protocol in [(http_trace, http_parent, "http"), (grpc_trace, grpc_parent, "grpc")]:
        spans = collector.wait_for(_in_trace(trace_id), f"the {protocol} request's spans")
        (request,) = [s for s in spans if s.trace_id == trace_id and s.name == "InferRequest"]
        assert request.parent_span_id == parent, protocol
        assert request.attributes["model_runtime.protocol"] == protocol
        assert request.attributes["model_runtime.outcome"] == "success"
        assert request.resource["service.name"] == "model-runtime"
        children = [s for s in spans if s.trace_id == trace_id and s.name in ("queue", "compute")]
        assert {s.parent_span_id for s in children} == {request.span_id}
        (compute,) = [s for s in children if s.name == "compute"]
        (batch,) = [s for s in collector.spans() if s.name == "batch" and s.span_id in compute.links]
        assert request.span_id in batch.links


def test_trace_settings_are_the_engines(traced: tuple[RunningServer, Collector, int]) -> None:
    """The extension changes the settings the spans follow: in one process, and with --workers N through
    any front end (they forward to the engine process): every fresh connection, whichever front end
    takes it, reads the change, and a request's spans follow it."""
    server, collector, _ = traced
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.get_trace_settings()["trace_rate"] == "1"
        assert client.update_trace_settings(settings={"trace_level": ["OFF"]})["trace_level"] == ["OFF"]
    try:
        for _ in range(12):  # fresh connections: SO_REUSEPORT spreads them over the front ends
            with httpclient.InferenceServerClient(server.http_url) as client:
                assert client.get_trace_settings()["trace_level"] == ["OFF"]
            with grpcclient.InferenceServerClient(server.grpc_url) as grpc_client:
                assert list(grpc_client.get_trace_settings().settings["trace_level"].value) == ["OFF"]
        header, trace_id, _ = _traceparent()
        with httpclient.InferenceServerClient(server.http_url) as client:
            tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
            client.infer("ident", [tensor], headers={"traceparent": header})
    finally:
        with httpclient.InferenceServerClient(server.http_url) as client:
            client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    marker, marker_trace, _ = _traceparent()  # traced again: its spans arrive, and the untraced one's did not
    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        client.infer("ident", [tensor], headers={"traceparent": marker})
    collector.wait_for(_in_trace(marker_trace), "the request's spans after tracing was turned back on")
    assert not [s for s in collector.spans() if s.trace_id == trace_id]

"""Spans of sampled requests through the in-process engine, collected by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runtime.errors import ModelNotFound
from runtime.examples import save_model
from runtime.monitoring.observer import BatchTiming, MetricsObserver, NullObserver, Observer
from runtime.tracing import Tracing, child_traceparent, start_tracing
from runtime.types import InferRequest
from tests.engine import OpenEngine
from tests.models import build_identity

ROWS = 3
# A batch closes when it holds ROWS rows (the window is far longer), so ROWS concurrent callers share one.
BATCHED = f"""\
max_batch_size: {ROWS}
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] }}]
dynamic_batching {{ max_queue_delay_microseconds: 10000000 preferred_batch_size: [ {ROWS} ] }}
parameters {{ key: "batch_window" value: {{ string_value: "fixed" }} }}
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    save_model(build_identity("FP32"), tmp_path, "batched", config_pbtxt=BATCHED)
    save_model(build_identity("FP32"), tmp_path, "single")
    return tmp_path


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracing(exporter: InMemorySpanExporter, rate: int = 1, metrics: Observer | None = None) -> Tracing:
    return start_tracing(SimpleNamespace(trace_level="timestamps", trace_rate=rate), metrics, exporter=exporter)


def request(model: str, traceparent: str = "", protocol: str = "http") -> InferRequest:
    infer = InferRequest(model, "", {"INPUT0": np.ones((1, 2), np.float32)}, protocol=protocol, id="r")
    infer.trace_parent = traceparent
    return infer


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_a_request_span_with_queue_and_compute_children_and_a_linked_batch(
    repo: Path, open_engine: OpenEngine, exporter: InMemorySpanExporter
) -> None:
    engine = (await open_engine(repo, observer=tracing(exporter).observer, execution_provider="cpu")).engine
    await engine.infer(request("single", protocol="grpc"))
    spans = exporter.get_finished_spans()
    assert sorted(span.name for span in spans) == ["InferRequest", "batch", "compute", "queue"]
    (root,) = by_name(spans, "InferRequest")
    assert root.kind is SpanKind.SERVER and root.parent is None
    assert dict(root.attributes or {}) == {
        "model_runtime.model": "single",
        "model_runtime.version": "1",
        "model_runtime.protocol": "grpc",
        "model_runtime.request_id": "r",
        "model_runtime.outcome": "success",
        "model_runtime.batch_size": 1,
    }
    (queue,) = by_name(spans, "queue")
    (compute,) = by_name(spans, "compute")
    (batch,) = by_name(spans, "batch")
    for child in (queue, compute):
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time  # type: ignore[operator]
    assert queue.end_time == compute.start_time == batch.start_time
    assert batch.parent is None and batch.context.trace_id != root.context.trace_id
    assert [link.context.span_id for link in batch.links] == [root.context.span_id]
    assert [link.context.span_id for link in compute.links] == [batch.context.span_id]


async def test_requests_sharing_a_batch_link_to_its_one_span(
    repo: Path, open_engine: OpenEngine, exporter: InMemorySpanExporter
) -> None:
    engine = (await open_engine(repo, observer=tracing(exporter).observer, execution_provider="cpu")).engine
    await asyncio.gather(*(engine.infer(request("batched")) for _ in range(ROWS)))
    spans = exporter.get_finished_spans()
    roots = by_name(spans, "InferRequest")
    (batch,) = by_name(spans, "batch")
    assert len(roots) == ROWS and len({r.context.trace_id for r in roots}) == ROWS  # one trace per request
    assert {link.context.span_id for link in batch.links} == {r.context.span_id for r in roots}
    assert dict(batch.attributes or {})["model_runtime.batch_size"] == ROWS
    assert {dict(r.attributes or {})["model_runtime.batch_size"] for r in roots} == {ROWS}
    for compute in by_name(spans, "compute"):
        assert [link.context.span_id for link in compute.links] == [batch.context.span_id]


async def test_a_callers_traceparent_makes_the_request_its_child(
    repo: Path, open_engine: OpenEngine, exporter: InMemorySpanExporter
) -> None:
    engine = (await open_engine(repo, observer=tracing(exporter, rate=1000).observer, execution_provider="cpu")).engine
    await engine.infer(request("single"))  # the first of every 1000: traced, a root
    await engine.infer(request("single", f"00-{TRACE_ID}-{PARENT_ID}-01"))  # sampled by its caller
    await engine.infer(request("single", f"00-{TRACE_ID}-{PARENT_ID}-00"))  # its caller did not sample it
    await engine.infer(request("single", "garbage"))  # no valid parent: the rate decides (not the 1000th)
    roots = by_name(exporter.get_finished_spans(), "InferRequest")
    assert [r.parent.span_id if r.parent else None for r in roots] == [None, int(PARENT_ID, 16)]
    assert roots[1].context.trace_id == int(TRACE_ID, 16)
    assert roots[1].parent is not None and roots[1].parent.is_remote


async def test_a_request_for_an_unknown_model_leaves_a_failed_span(
    repo: Path, open_engine: OpenEngine, exporter: InMemorySpanExporter
) -> None:
    engine = (await open_engine(repo, observer=tracing(exporter).observer, execution_provider="cpu")).engine
    with pytest.raises(ModelNotFound):
        await engine.infer(request("nope", f"00-{TRACE_ID}-{PARENT_ID}-01"))
    (span,) = exporter.get_finished_spans()
    assert span.name == "InferRequest" and span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["model_runtime.outcome"] == "not_found"
    assert span.parent is not None and span.parent.span_id == int(PARENT_ID, 16)


class Counting(NullObserver):
    """An inner observer that counts what reaches it."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def request_started(self, request: InferRequest, model: Any) -> None:
        self.calls["started"] = self.calls.get("started", 0) + 1

    def request_finished(self, request: InferRequest, model: Any, outcome: str, seconds: float) -> None:
        self.calls["finished"] = self.calls.get("finished", 0) + 1

    def batch_executed(self, model: Any, timing: BatchTiming, inputs: Any, outputs: Any) -> None:
        self.calls["batches"] = self.calls.get("batches", 0) + 1


async def test_the_inner_observer_sees_every_request_under_tracing(
    repo: Path, open_engine: OpenEngine, exporter: InMemorySpanExporter
) -> None:
    inner = Counting()
    engine = (await open_engine(repo, observer=tracing(exporter, 2, inner).observer, execution_provider="cpu")).engine
    for _ in range(4):
        await engine.infer(request("single"))
    assert len(by_name(exporter.get_finished_spans(), "InferRequest")) == 2
    assert inner.calls == {"started": 4, "finished": 4, "batches": 4}


def test_without_an_endpoint_the_data_path_keeps_its_observer() -> None:
    metrics = MetricsObserver()
    off = start_tracing(SimpleNamespace(trace_otlp_endpoint=None, trace_level="timestamps", trace_rate=1), metrics)
    assert off.wrap(metrics) is metrics and off.provider is None
    assert not off.control.active and not off.control.exporting


async def test_a_step_made_for_a_traced_request_is_its_child(
    repo: Path, open_engine: OpenEngine, exporter: InMemorySpanExporter
) -> None:
    """What an ensemble step carries (child_traceparent): the step's span is a child of the request's."""
    observer = tracing(exporter, rate=1000).observer
    assert observer is not None
    engine = (await open_engine(repo, observer=observer, execution_provider="cpu")).engine
    outer = request("single", f"00-{TRACE_ID}-{PARENT_ID}-01")
    passed_on = child_traceparent(outer)
    assert passed_on == outer.trace_parent  # not traced (yet): the caller's own header goes on
    observer.request_started(outer, engine.registry.get("single"))
    step = request("single", child_traceparent(outer))
    await engine.infer(step)
    observer.request_finished(outer, engine.registry.get("single"), "success", 0.0)
    roots = {r.context.span_id: r for r in by_name(exporter.get_finished_spans(), "InferRequest")}
    (inner,) = [r for r in roots.values() if r.parent is not None and r.parent.span_id in roots]
    assert inner.context.trace_id == int(TRACE_ID, 16)

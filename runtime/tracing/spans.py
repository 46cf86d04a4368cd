"""OpenTelemetry spans of sampled requests, made from what the data path reports (the Observer protocol).

`TracingObserver` wraps the metrics observer: every call goes to it first, then, for requests the
TraceControl samples, spans are made:
- `InferRequest` (kind SERVER): one per request, from admission to answer, with the model, version,
  protocol, outcome and the size of the batch it joined; a child of the caller's span when the
  request carried a W3C `traceparent` (InferRequest.trace_parent, set by the transports);
- `queue` and `compute`: its children, the wait in the batch queue and the batch's execution;
  `compute` links to the batch's span;
- `batch`: one per executed batch that held a sampled request, linking back to each of them (a batch
  serves several requests, so it is no one request's child; OpenTelemetry's advice for batching).

The request's span travels on InferRequest.trace and, through the queue, on Validated.trace; batches
report theirs in BatchTiming.traces. A request that is not sampled costs one attribute read here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime.monitoring.observer import SUCCESS, BatchTiming, MonitoredModel, NullObserver, Observer
from runtime.tracing.control import TraceControl
from runtime.types import Array, InferRequest

log = logging.getLogger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator()
REQUEST_SPAN = "InferRequest"


def parent_context(traceparent: str) -> tuple[Any, bool | None]:
    """The caller's context from a W3C traceparent header value, and its sampled flag (None: no valid parent)."""
    if not traceparent:
        return None, None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    parent = trace.get_current_span(context).get_span_context()
    if not parent.is_valid:
        return None, None
    return context, parent.trace_flags.sampled


class TracingObserver:
    """The Observer the engine and the models report to when tracing is configured."""

    def __init__(self, control: TraceControl, tracer: trace.Tracer, inner: Observer | None = None) -> None:
        self.control = control
        self.tracer = tracer
        self.inner: Observer = inner if inner is not None else NullObserver()
        self._failed_once = False

    # ---- Observer ---------------------------------------------------------------------------

    def request_started(self, request: InferRequest, model: MonitoredModel) -> None:
        self.inner.request_started(request, model)
        if self.control.active:
            self._start(request, model.name, str(model.version))

    def request_finished(
        self, request: InferRequest, model: MonitoredModel | None, outcome: str, seconds: float
    ) -> None:
        self.inner.request_finished(request, model, outcome, seconds)
        span = request.trace
        if span is None:
            if model is not None or not self.control.active:
                return
            # Never admitted (unknown model or version): a span of its own, so the caller's trace shows why.
            span = self._start(request, request.model_name, request.model_version, time.time_ns() - int(seconds * 1e9))
            if span is None:
                return
        try:
            span.set_attribute("model_runtime.outcome", outcome)
            if outcome != SUCCESS:
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end()
        except Exception:
            self._failed("request_finished")
        request.trace = None

    def batch_executed(
        self, model: MonitoredModel, timing: BatchTiming, inputs: dict[str, Array], outputs: dict[str, Array]
    ) -> None:
        self.inner.batch_executed(model, timing, inputs, outputs)
        if not any(span is not None for span in timing.traces):
            return
        try:
            self._batch(model, timing)
        except Exception:
            self._failed("batch_executed")

    # ---- spans ------------------------------------------------------------------------------

    def _start(self, request: InferRequest, name: str, version: str, start_ns: int | None = None) -> Any:
        try:
            context, sampled = parent_context(request.trace_parent)
            if not self.control.sample(name, sampled):
                return None
            span = self.tracer.start_span(
                REQUEST_SPAN,
                context=context,
                kind=SpanKind.SERVER,
                start_time=start_ns,
                attributes={
                    "model_runtime.model": name,
                    "model_runtime.version": version,
                    "model_runtime.protocol": request.protocol,
                    "model_runtime.request_id": request.id,
                },
            )
        except Exception:
            self._failed("request_started")
            return None
        request.trace = span
        return span

    def _batch(self, model: MonitoredModel, timing: BatchTiming) -> None:
        # The batch ran just before this call: its end is now, its start that much earlier.
        end = time.time_ns()
        start = end - int((timing.input_seconds + timing.infer_seconds + timing.output_seconds) * 1e9)
        traced = [(span, queued) for span, queued in zip(timing.traces, timing.queue_seconds) if span is not None]
        attributes: dict[str, str | int] = {
            "model_runtime.model": model.name,
            "model_runtime.version": str(model.version),
            "model_runtime.batch_size": timing.rows,
            "model_runtime.requests": len(timing.queue_seconds),
        }
        batch = self.tracer.start_span(
            "batch",
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a root: no request's child
            start_time=start,
            links=[Link(span.get_span_context()) for span, _ in traced],
            attributes=attributes,
        )
        batch.end(end_time=end)
        joined = [Link(batch.get_span_context())]
        for span, queued in traced:
            parent = trace.set_span_in_context(span)
            wait = self.tracer.start_span("queue", context=parent, start_time=start - int(queued * 1e9))
            wait.end(end_time=start)
            compute = self.tracer.start_span("compute", context=parent, start_time=start, links=joined)
            compute.end(end_time=end)
            span.set_attribute("model_runtime.batch_size", timing.rows)

    def _failed(self, where: str) -> None:
        if not self._failed_once:
            self._failed_once = True
            log.exception("tracing failed in %s; requests are served, their spans may be incomplete", where)

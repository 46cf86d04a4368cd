"""Distributed tracing: OpenTelemetry spans of sampled requests (spans), which requests are sampled
(control: Triton's trace settings), and the SDK's OTLP export (export).

Off unless --trace-otlp-endpoint is set: then `start_tracing` wraps the metrics observer in a
TracingObserver and the transports read W3C `traceparent` into InferRequest.trace_parent. Without
it nothing of OpenTelemetry is imported and the data path is exactly as without this package.
The trace extension (runtime/server/trace.py) reads and changes the TraceControl at run time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.tracing.control import TraceControl

if TYPE_CHECKING:
    from runtime.monitoring.observer import Observer

__all__ = ["TraceControl", "Tracing", "child_traceparent", "control_for", "start_tracing"]

log = logging.getLogger(__name__)


@dataclass
class Tracing:
    """This process's tracing: the settings, and (when an exporter is configured) the observer and SDK provider."""

    control: TraceControl
    observer: Observer | None = None
    provider: Any = None  # opentelemetry.sdk.trace.TracerProvider

    def wrap(self, inner: Observer | None) -> Observer | None:
        """The observer the data path reports to: the tracing one around `inner`, or `inner` when off."""
        return self.observer if self.observer is not None else inner

    def close(self) -> None:
        """Export the spans still buffered and stop the exporter (blocks: for tests and threads)."""
        if self.provider is not None:
            provider, self.provider = self.provider, None
            provider.shutdown()

    async def flush(self, deadline: float) -> None:
        """At shutdown: export what is buffered, in a thread, until time.monotonic() `deadline` at most."""
        if self.provider is None:
            return
        timeout_s = max(0.1, deadline - time.monotonic())
        provider, self.provider = self.provider, None
        try:  # shutdown exports what is buffered; a collector that does not answer cannot hold the exit
            await asyncio.wait_for(asyncio.to_thread(provider.shutdown), timeout_s)
        except asyncio.TimeoutError:
            log.warning("tracing: spans not exported within the grace period were dropped")


def control_for(settings: Any, exporting: bool | None = None) -> TraceControl:
    """The trace settings the start-up flags give (exporting: whether an exporter is configured)."""
    if exporting is None:
        exporting = getattr(settings, "trace_otlp_endpoint", None) is not None
    level = "TIMESTAMPS" if getattr(settings, "trace_level", "timestamps") == "timestamps" else "OFF"
    return TraceControl(level, int(getattr(settings, "trace_rate", 1000)), exporting=exporting)


def start_tracing(settings: Any, inner: Observer | None, exporter: Any = None) -> Tracing:
    """Tracing as the settings ask: off without --trace-otlp-endpoint (and no `exporter` given for tests)."""
    endpoint = getattr(settings, "trace_otlp_endpoint", None)
    if endpoint is None and exporter is None:
        return Tracing(control_for(settings, exporting=False))
    try:
        from runtime.tracing.export import otlp_exporter, tracer_provider
        from runtime.tracing.spans import TracingObserver
    except ImportError as exc:
        raise RuntimeError(
            f"--trace-otlp-endpoint needs OpenTelemetry ({exc.name} is missing): pip install 'model-runtime[tracing]'"
        ) from None

    control = control_for(settings, exporting=True)
    if exporter is None:
        exporter = otlp_exporter(str(endpoint), settings.trace_otlp_protocol)
        provider = tracer_provider(exporter, batch=True)
    else:  # a test's in-memory exporter: each span exported as it ends
        provider = tracer_provider(exporter, batch=False)
    observer = TracingObserver(control, provider.get_tracer("runtime.tracing"), inner)
    return Tracing(control, observer, provider)


def child_traceparent(request: Any) -> str:
    """The W3C traceparent for a request made on behalf of `request` (an ensemble's step): a child of
    its span when it is traced, else whatever its caller sent. No OpenTelemetry import: the span's
    context is read through its methods."""
    span = request.trace
    if span is None:
        return str(request.trace_parent)
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

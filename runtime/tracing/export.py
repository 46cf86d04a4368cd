"""The OpenTelemetry SDK set up from Settings: a TracerProvider exporting over OTLP (gRPC or HTTP).

Spans are exported by the SDK's BatchSpanProcessor from its own thread, in batches, so the event
loop never waits on the collector; `close` flushes what is left at shutdown.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from runtime import __version__


def otlp_exporter(endpoint: str, protocol: str) -> SpanExporter:
    """OTLP/gRPC to host:port (or http[s]://host:port), or OTLP/HTTP to http[s]://host:port[/v1/traces]."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        secure = endpoint.startswith("https://")
        return GrpcExporter(endpoint=endpoint, insecure=not secure)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    if urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint)


def tracer_provider(exporter: SpanExporter, batch: bool = True) -> TracerProvider:
    """A provider for model-runtime's spans (service.name model-runtime unless OTEL_SERVICE_NAME says otherwise)."""
    attributes: dict[str, Any] = {SERVICE_VERSION: __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = "model-runtime"
    # Which requests are traced is decided before a span is made (TraceControl): the SDK's sampler
    # would only repeat it, at a cost per span.
    provider = TracerProvider(resource=Resource.create(attributes), sampler=ALWAYS_ON)
    if batch:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider

"""The /metrics app served on the metrics port (by runtime.server.asgi.AsgiServer): the Prometheus
text exposition of a CollectorRegistry (runtime.monitoring.build_registry)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_app(registry: CollectorRegistry) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])

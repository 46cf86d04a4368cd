"""The HTTP routes of KServe V2 (Starlette), with a fast path for POST .../infer.

A thin adapter: decode to `InferRequest` (codec.py), call the engine, encode the `InferResponse`.
"""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runtime.config import Settings
from runtime.engine import EngineApi
from runtime.repository.model_config import config_to_json
from runtime.server.asgi import AsgiServer
from runtime.server.http.codec import HEADER_LENGTH, infer_response, read_body, tensor_json
from runtime.server.http.fast import InferProtocol
from runtime.server.http.infer import INFER_PATH, InferCall
from runtime.server.http.responses import Handler, answers_errors, json_response


def build_app(engine: EngineApi, settings: Settings, extensions: Sequence[BaseRoute] = ()) -> Any:
    # The V2 spec's health answers are JSON objects (the KServe SDK parses them; tritonclient reads
    # only the status), the 503s too.
    async def live(request: Request) -> Response:
        alive = await engine.live()
        return json_response({"live": alive}, 200 if alive else 503)

    async def ready(request: Request) -> Response:
        is_ready = await engine.ready()
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    @answers_errors
    async def server_metadata(request: Request) -> Response:
        name, version, extensions = await engine.server_metadata()
        return json_response({"name": name, "version": version, "extensions": extensions})

    @answers_errors
    async def model_metadata(request: Request) -> Response:
        model, version = _model_and_version(request)
        meta = await engine.model_metadata(model, version)
        return json_response(
            {
                "name": meta.name,
                "versions": meta.versions,
                "platform": meta.platform,
                "inputs": [tensor_json(t) for t in meta.inputs],
                "outputs": [tensor_json(t) for t in meta.outputs],
                "parameters": {"execution_providers": ",".join(meta.execution_providers)},
            }
        )

    @answers_errors
    async def model_ready(request: Request) -> Response:
        model, version = _model_and_version(request)
        is_ready = await engine.model_ready(model, version, strict=True)  # 404 for unknown models and versions
        return json_response({"name": model, "ready": is_ready}, 200 if is_ready else 503)

    @answers_errors
    async def model_config(request: Request) -> Response:
        model, version = _model_and_version(request)
        return json_response(config_to_json(await engine.model_config(model, version)))

    answer_infer = InferCall(engine, settings)

    @answers_errors
    async def infer(request: Request) -> Response:
        model, version = _model_and_version(request)
        body = await read_body(request, answer_infer.limit)
        headers = request.headers
        with _cancelled_on_disconnect(request):
            parts, header_length = await answer_infer(
                model, version, body, headers.get(HEADER_LENGTH), headers.get("traceparent", "")
            )
        return infer_response(parts, header_length)

    model_routes = [
        ("", model_metadata, ["GET"]),
        ("/ready", model_ready, ["GET"]),
        ("/config", model_config, ["GET"]),
        ("/infer", infer, ["POST"]),
    ]
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
    ]
    for suffix, handler, methods in model_routes:
        routes.append(Route("/v2/models/{model}" + suffix, handler, methods=methods))
        routes.append(Route("/v2/models/{model}/versions/{version}" + suffix, handler, methods=methods))
    # Extensions first: their fixed paths (GET /v2/models/stats) must win over /v2/models/{model}.
    return _with_infer_fast_path(Starlette(routes=[*extensions, *routes]), infer)




def _with_infer_fast_path(app: Starlette, infer: Handler) -> Any:
    """ASGI app: POST .../infer goes straight to its handler; everything else through Starlette.

    Starlette's linear route scan and its two exception middlewares cost about 100 us of event-loop
    CPU per request on a 2-core machine (bench/profile.py); the infer handler answers its own
    errors (answers_errors), so they add nothing there.
    """

    async def route(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                scope["path_params"] = {key: value for key, value in match.groupdict().items() if value is not None}
                response = await infer(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await app(scope, receive, send)

    return route


def _model_and_version(request: Request) -> tuple[str, str]:
    params = request.path_params
    return params["model"], params.get("version", "")


@contextlib.contextmanager
def _cancelled_on_disconnect(request: Request) -> Iterator[None]:
    """Cancel the handler if the client goes away, so its request leaves the queue unserved."""
    handler = asyncio.current_task()
    assert handler is not None

    async def watch() -> None:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handler.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


def openapi_route() -> Route:
    """GET /v2/openapi.yaml: the OpenAPI description of our HTTP endpoints (runtime/server/http/openapi.yaml)."""
    document = (Path(__file__).parent / "openapi.yaml").read_bytes()

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/yaml")

    return Route("/v2/openapi.yaml", openapi, methods=["GET"])


def http_server(
    engine: EngineApi, settings: Settings, extensions: Sequence[BaseRoute] = (), *, reuse_port: bool = False
) -> AsgiServer:
    """The inference port: the ASGI app, with POST .../infer answered by the fast path (fast.py)."""
    return AsgiServer(
        build_app(engine, settings, extensions),
        settings.http_address,
        settings.http_port,
        settings,
        reuse_port=reuse_port,
        protocol=InferProtocol.serving(InferCall(engine, settings)),
    )

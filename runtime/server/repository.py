"""The admin API over HTTP and gRPC: Triton's model-repository extension plus our own swap controls.

HTTP: POST /v2/repository/index, /v2/repository/models/{m}/load, .../unload (Triton), and
.../rollback, .../traffic, .../labels (ours). gRPC: RepositoryIndex, RepositoryModelLoad,
RepositoryModelUnload; our controls travel as RepositoryModelLoad parameters (see README).
Every call checks the bearer token first when one is configured. The operations are runtime/admin.py's.
"""
from __future__ import annotations

from typing import Any

import grpc
import orjson
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.admin import AdminApi, IndexRow, kind_of, parse_json_text
from runtime.config import Settings
from runtime.errors import InvalidInput, quoted
from runtime._pb import grpc_service_pb2 as pb
from runtime.server.grpc.converters import parse
from runtime.server.grpc.service import answers_errors as grpc_answers_errors
from runtime.server.grpc.service import generic_handler, unary_handlers
from runtime.server.http.codec import read_body
from runtime.server.http.responses import answers_errors, json_response


def index_json(row: IndexRow) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": row.name}
    if row.version is not None:
        doc["version"] = row.version
    doc |= {"state": row.state, "reason": row.reason}
    if row.traffic_weight is not None:
        doc["traffic_weight"] = row.traffic_weight
    if row.labels is not None:
        doc["labels"] = list(row.labels)
    return doc


# ---- HTTP ---------------------------------------------------------------------------------------


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in request body: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object")
    return doc


def http_routes(admin: AdminApi, settings: Settings) -> list[Route]:
    limit = settings.max_request_bytes

    async def authorized_body(request: Request) -> dict[str, Any]:
        admin.authenticate(request.headers.get("authorization"))
        return await _json_body(request, limit)

    @answers_errors
    async def index(request: Request) -> Response:
        doc = await authorized_body(request)
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f"repository index: 'ready' must be true or false, got {kind_of(ready)}")
        return json_response([index_json(row) for row in await admin.index(ready)])

    async def parameters_of(request: Request, call: str) -> dict[str, Any]:
        """The body's "parameters" object of a load or unload (Triton's), {} when absent."""
        parameters = (await authorized_body(request)).get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput(
                f"model {quoted(request.path_params['model'])}: {call} 'parameters' must be a JSON object, got {kind_of(parameters)}"
            )
        return parameters

    @answers_errors
    async def load(request: Request) -> Response:
        await admin.load(request.path_params["model"], await parameters_of(request, "load"))
        return Response(status_code=200)

    @answers_errors
    async def unload(request: Request) -> Response:
        await admin.unload(request.path_params["model"], await parameters_of(request, "unload"))
        return Response(status_code=200)

    @answers_errors
    async def rollback(request: Request) -> Response:
        await authorized_body(request)
        versions = await admin.rollback(request.path_params["model"])
        return json_response({"versions": [str(v) for v in versions]})

    @answers_errors
    async def traffic(request: Request) -> Response:
        doc = await authorized_body(request)
        await admin.traffic(request.path_params["model"], doc.get("weights"))
        return Response(status_code=200)

    @answers_errors
    async def labels(request: Request) -> Response:
        doc = await authorized_body(request)
        await admin.labels(request.path_params["model"], doc.get("labels"))
        return Response(status_code=200)

    base = "/v2/repository/models/{model}/"
    return [
        Route("/v2/repository/index", index, methods=["POST"]),
        Route(base + "load", load, methods=["POST"]),
        Route(base + "unload", unload, methods=["POST"]),
        Route(base + "rollback", rollback, methods=["POST"]),
        Route(base + "traffic", traffic, methods=["POST"]),
        Route(base + "labels", labels, methods=["POST"]),
    ]


# ---- gRPC ---------------------------------------------------------------------------------------


def _credential(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None


def _parameter(value: pb.ModelRepositoryParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


class RepositoryService:
    def __init__(self, admin: AdminApi) -> None:
        self.admin = admin

    @grpc_answers_errors
    async def RepositoryIndex(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        self.admin.authenticate(_credential(context))
        request = parse(pb.RepositoryIndexRequest, raw)
        reply = pb.RepositoryIndexResponse()
        for row in await self.admin.index(request.ready):
            extras = []
            if row.traffic_weight is not None:
                extras.append(f"traffic weight {row.traffic_weight:.3g}")
            if row.labels is not None:
                extras.append("labels " + ",".join(row.labels))
            reply.models.add(
                name=row.name,
                version=row.version or "",
                state=row.state,
                reason="; ".join([row.reason, *extras]) if row.reason else "; ".join(extras),
            )
        return reply

    @grpc_answers_errors
    async def RepositoryModelLoad(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        self.admin.authenticate(_credential(context))
        request = parse(pb.RepositoryModelLoadRequest, raw)
        parameters = {key: _parameter(value) for key, value in request.parameters.items()}
        name = request.model_name
        if "action" not in parameters:
            await self.admin.load(name, parameters, binary_files=True)
            return pb.RepositoryModelLoadResponse()
        action = parameters.pop("action")
        if action == "rollback":
            await self.admin.rollback(name)
        elif action in ("traffic", "labels"):
            value = parse_json_text(parameters.get(action), f"model {quoted(name)}: action {action!r}: parameter {action!r}")
            if action == "traffic":
                await self.admin.traffic(name, value)
            else:
                await self.admin.labels(name, value)
        else:
            raise InvalidInput(
                f"model {quoted(name)}: unknown action {quoted(action)} ({kind_of(action)}); use rollback, traffic or labels"
            )
        return pb.RepositoryModelLoadResponse()

    @grpc_answers_errors
    async def RepositoryModelUnload(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        self.admin.authenticate(_credential(context))
        request = parse(pb.RepositoryModelUnloadRequest, raw)
        await self.admin.unload(request.model_name, {key: _parameter(value) for key, value in request.parameters.items()})
        return pb.RepositoryModelUnloadResponse()


def grpc_handler(admin: AdminApi) -> grpc.GenericRpcHandler:
    service = RepositoryService(admin)
    return generic_handler(
        unary_handlers(service, ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"))
    )

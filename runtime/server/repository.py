"""The admin API: Triton's model-repository extension over HTTP and gRPC, plus our own swap controls.

HTTP: POST /v2/repository/index, /v2/repository/models/{m}/load, .../unload (Triton), and
.../rollback, .../traffic, .../labels (ours). gRPC: RepositoryIndex, RepositoryModelLoad,
RepositoryModelUnload; our controls travel as RepositoryModelLoad parameters (see README).
Every call checks the bearer token first when one is configured.
"""
from __future__ import annotations

import hmac
import json
from typing import Any

import grpc
import orjson
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.config import Settings
from runtime.errors import Code, InvalidInput, RuntimeServingError
from runtime.repository.model_config import config_from_json
from runtime.repository.registry import ModelRegistry, decode_file_parameter
from runtime.server import grpc as grpc_server
from runtime.server._pb import grpc_service_pb2 as pb
from runtime.server.http import answers_errors, json_response, read_body


class Unauthenticated(RuntimeServingError):
    code = Code.UNAUTHENTICATED


class NotAllowed(RuntimeServingError):
    code = Code.FAILED_PRECONDITION


class Admin:
    """Transport-free admin operations: token check, control-mode rules, parameter decoding."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    def authenticate(self, credential: str | None) -> None:
        token = self.settings.admin_token
        if not token:
            return
        expected = f"Bearer {token}"
        if credential is None or not hmac.compare_digest(credential.encode(), expected.encode()):
            raise Unauthenticated("the admin API needs 'Authorization: Bearer <token>' with the configured token")

    def _allow_changes(self) -> None:
        mode = self.settings.model_control_mode
        if mode == "none":
            raise NotAllowed("model changes are not allowed in --model-control-mode none (use explicit)")
        if mode == "poll":
            raise NotAllowed("model changes through the API are not allowed in --model-control-mode poll")

    def index(self, ready_only: bool) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        known = set()
        for entry in self.registry.entries():
            known.add(entry.name)
            records = {**entry.unloaded, **entry.failed, **entry.serving}
            if not records:
                if not ready_only:
                    rows.append({"name": entry.name, "state": "UNAVAILABLE", "reason": entry.error or "not loaded"})
                continue
            labels_by_version: dict[int, list[str]] = {}
            for label, version in entry.labels.items():
                labels_by_version.setdefault(version, []).append(label)
            total = sum(entry.weights.values())
            for version, record in sorted(records.items()):
                serving = version in entry.serving
                if ready_only and not serving:
                    continue
                row: dict[str, Any] = {
                    "name": entry.name,
                    "version": str(version),
                    "state": record.state.value,
                    "reason": record.reason,
                }
                if serving:
                    if entry.weights:
                        row["traffic_weight"] = entry.weights.get(version, 0.0) / total
                    if version in labels_by_version:
                        row["labels"] = sorted(labels_by_version[version])
                rows.append(row)
        if not ready_only:
            for name in self.registry.store.model_names():
                if name not in known:
                    rows.append({"name": name, "state": "UNAVAILABLE", "reason": "not loaded"})
        return rows

    async def load(self, name: str, parameters: dict[str, Any]) -> list[int]:
        self._allow_changes()
        override = None
        files: dict[str, bytes] = {}
        for key, value in parameters.items():
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidInput("parameter 'config' must be a string of JSON model configuration")
                try:
                    override = config_from_json(json.loads(value), f"model {name!r}: parameters.config")
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"model {name!r}: parameters.config is not JSON: {exc}") from None
            elif key.startswith("file:"):
                path, content = decode_file_parameter(key, value)
                files[path] = content
            else:
                raise InvalidInput(f"unknown load parameter {key!r} (config, file:<version>/<path>)")
        if files and override is None:
            raise InvalidInput("file: parameters need a 'config' parameter too (as Triton's API requires)")
        return await self.registry.load(name, override, files or None)

    async def unload(self, name: str) -> None:
        self._allow_changes()
        await self.registry.unload(name)

    async def rollback(self, name: str) -> list[int]:
        self._allow_changes()
        return await self.registry.rollback(name)

    def traffic(self, name: str, weights: Any) -> None:
        self._allow_changes()
        if not isinstance(weights, dict):
            raise InvalidInput('traffic needs {"weights": {"<version>": <weight>, ...}}')
        parsed: dict[int, float] = {}
        for version, weight in weights.items():
            if not str(version).isdigit() or not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise InvalidInput(f"traffic weight {version!r}: {weight!r} must map a version number to a number")
            parsed[int(version)] = float(weight)
        self.registry.set_traffic(name, parsed)

    def labels(self, name: str, labels: Any) -> None:
        self._allow_changes()
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in labels.items()
        ):
            raise InvalidInput('labels needs {"labels": {"<label>": <version number>, ...}}')
        self.registry.set_labels(name, labels)


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


def http_routes(admin: Admin, settings: Settings) -> list[Route]:
    limit = settings.max_request_bytes

    async def authorized_body(request: Request) -> dict[str, Any]:
        admin.authenticate(request.headers.get("authorization"))
        return await _json_body(request, limit)

    @answers_errors
    async def index(request: Request) -> Response:
        doc = await authorized_body(request)
        return json_response(admin.index(bool(doc.get("ready", False))))

    @answers_errors
    async def load(request: Request) -> Response:
        doc = await authorized_body(request)
        parameters = doc.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be a JSON object")
        await admin.load(request.path_params["model"], parameters)
        return Response(status_code=200)

    @answers_errors
    async def unload(request: Request) -> Response:
        await authorized_body(request)
        await admin.unload(request.path_params["model"])
        return Response(status_code=200)

    @answers_errors
    async def rollback(request: Request) -> Response:
        await authorized_body(request)
        versions = await admin.rollback(request.path_params["model"])
        return json_response({"versions": [str(v) for v in versions]})

    @answers_errors
    async def traffic(request: Request) -> Response:
        doc = await authorized_body(request)
        admin.traffic(request.path_params["model"], doc.get("weights"))
        return Response(status_code=200)

    @answers_errors
    async def labels(request: Request) -> Response:
        doc = await authorized_body(request)
        admin.labels(request.path_params["model"], doc.get("labels"))
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
    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    @grpc_server.answers_errors
    async def RepositoryIndex(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        self.admin.authenticate(_credential(context))
        request = grpc_server.parse(pb.RepositoryIndexRequest, raw)
        reply = pb.RepositoryIndexResponse()
        for row in self.admin.index(request.ready):
            reason = row.get("reason", "")
            extras = []
            if "traffic_weight" in row:
                extras.append(f"traffic weight {row['traffic_weight']:.3g}")
            if "labels" in row:
                extras.append("labels " + ",".join(row["labels"]))
            reply.models.add(
                name=row["name"],
                version=row.get("version", ""),
                state=row["state"],
                reason="; ".join([reason, *extras]) if reason else "; ".join(extras),
            )
        return reply

    @grpc_server.answers_errors
    async def RepositoryModelLoad(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        self.admin.authenticate(_credential(context))
        request = grpc_server.parse(pb.RepositoryModelLoadRequest, raw)
        parameters = {key: _parameter(value) for key, value in request.parameters.items()}
        action = parameters.pop("action", None)
        name = request.model_name
        if action is None:
            await self.admin.load(name, parameters)
        elif action == "rollback":
            await self.admin.rollback(name)
        elif action in ("traffic", "labels"):
            raw_json = parameters.get(action)
            if not isinstance(raw_json, str):
                raise InvalidInput(f"action {action!r} needs a string parameter {action!r} holding JSON")
            try:
                value = json.loads(raw_json)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"parameter {action!r} is not JSON: {exc}") from None
            if action == "traffic":
                self.admin.traffic(name, value)
            else:
                self.admin.labels(name, value)
        else:
            raise InvalidInput(f"unknown action {action!r} (rollback, traffic, labels)")
        return pb.RepositoryModelLoadResponse()

    @grpc_server.answers_errors
    async def RepositoryModelUnload(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        self.admin.authenticate(_credential(context))
        request = grpc_server.parse(pb.RepositoryModelUnloadRequest, raw)
        await self.admin.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def grpc_handler(admin: Admin) -> grpc.GenericRpcHandler:
    service = RepositoryService(admin)
    return grpc_server.generic_handler(
        grpc_server.unary_handlers(service, ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"))
    )

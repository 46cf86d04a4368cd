"""The admin API: Triton's model-repository extension over HTTP and gRPC, plus our own swap controls.

HTTP: POST /v2/repository/index, /v2/repository/models/{m}/load, .../unload (Triton), and
.../rollback, .../traffic, .../labels (ours). gRPC: RepositoryIndex, RepositoryModelLoad,
RepositoryModelUnload; our controls travel as RepositoryModelLoad parameters (see README).
Every call checks the bearer token first when one is configured.
"""
from __future__ import annotations

import hmac
import math
import re
from typing import Any

import grpc
import orjson
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.config import Settings
from runtime.errors import Code, InvalidInput, RuntimeServingError, quoted
from runtime.repository.model_config import config_from_json
from runtime.repository.registry import ModelRegistry, decode_file_parameter
from runtime.repository.store import MAX_VERSION, VERSION, check_model_name
from runtime.server import grpc as grpc_server
from runtime.server._pb import grpc_service_pb2 as pb
from runtime.server.http import answers_errors, json_response, read_body


class Unauthenticated(RuntimeServingError):
    code = Code.UNAUTHENTICATED


class NotAllowed(RuntimeServingError):
    code = Code.FAILED_PRECONDITION


# Traffic weights are relative; the bound keeps their sums finite and the split exact.
MAX_TRAFFIC_WEIGHT = 1e9
LABEL = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def parse_json_text(text: object, where: str) -> Any:
    """A JSON document carried in a string parameter; orjson bounds nesting and refuses NaN and Infinity."""
    if not isinstance(text, str):
        raise InvalidInput(f"{where} must be a string holding JSON, got {_kind(text)}")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{where} is not JSON: {exc}") from None


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

    async def load(self, name: str, parameters: dict[str, Any], binary_files: bool = False) -> list[int]:
        """Triton's load: `config` (JSON text) and `file:<version>/<path>` (base64 text, or bytes when `binary_files`)."""
        self._allow_changes()
        check_model_name(name)
        override = None
        files: dict[str, bytes] = {}
        for key, value in parameters.items():
            if key == "config":
                where = f"model {name!r}: load parameter 'config'"
                doc = parse_json_text(value, where)
                if not isinstance(doc, dict):
                    raise InvalidInput(f"{where} must be a JSON object (a model configuration), got {_kind(doc)}")
                try:
                    override = config_from_json(doc, where)
                except (TypeError, ValueError, RecursionError) as exc:  # ParseDict's own, beside ParseError
                    raise InvalidInput(f"{where} is not a model configuration: {quoted(str(exc))}") from None
            elif key.startswith("file:"):
                path, content = decode_file_parameter(name, key, value, binary_files)
                files[path] = content
            else:
                raise InvalidInput(f"model {name!r}: unknown load parameter {quoted(key)} (config, file:<version>/<path>)")
        if files and override is None:
            raise InvalidInput(f"model {name!r}: file: parameters need a 'config' parameter too (as Triton's API requires)")
        return await self.registry.load(name, override, files or None)

    async def unload(self, name: str) -> None:
        self._allow_changes()
        await self.registry.unload(name)

    async def rollback(self, name: str) -> list[int]:
        self._allow_changes()
        return await self.registry.rollback(name)

    def traffic(self, name: str, weights: Any) -> None:
        self._allow_changes()
        check_model_name(name)
        if not isinstance(weights, dict):
            raise InvalidInput(f'model {name!r}: traffic needs {{"weights": {{"<version>": <weight>, ...}}}}, got {_kind(weights)}')
        parsed: dict[int, float] = {}
        for version, weight in weights.items():
            where = f"model {name!r}: traffic weight for version {quoted(version)}"
            if not isinstance(version, str) or not VERSION.match(version) or int(version) > MAX_VERSION:
                raise InvalidInput(f"{where}: the key must be a version number (1 to {MAX_VERSION})")
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise InvalidInput(f"{where} must be a number, got {_kind(weight)}")
            finite = isinstance(weight, int) or math.isfinite(weight)  # ints compare exactly, however large
            if not finite or not 0 <= weight <= MAX_TRAFFIC_WEIGHT:
                raise InvalidInput(f"{where} must be between 0 and {MAX_TRAFFIC_WEIGHT:g}, got {quoted(weight)}")
            parsed[int(version)] = float(weight)
        self.registry.set_traffic(name, parsed)

    def labels(self, name: str, labels: Any) -> None:
        self._allow_changes()
        check_model_name(name)
        if not isinstance(labels, dict):
            raise InvalidInput(f'model {name!r}: labels needs {{"labels": {{"<label>": <version number>, ...}}}}, got {_kind(labels)}')
        for label, version in labels.items():
            if not isinstance(label, str) or not LABEL.match(label) or label.isdigit():
                raise InvalidInput(
                    f"model {name!r}: label {quoted(label)} must be 1-64 letters, digits, '_', '-', '.', not all digits"
                )
            if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
                raise InvalidInput(
                    f"model {name!r}: label {label!r} must name a version number (1 to {MAX_VERSION}), got {quoted(version)}"
                )
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
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f"repository index: 'ready' must be true or false, got {_kind(ready)}")
        return json_response(admin.index(ready))

    @answers_errors
    async def load(request: Request) -> Response:
        doc = await authorized_body(request)
        parameters = doc.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput(
                f"model {quoted(request.path_params['model'])}: load 'parameters' must be a JSON object, got {_kind(parameters)}"
            )
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
                self.admin.traffic(name, value)
            else:
                self.admin.labels(name, value)
        else:
            raise InvalidInput(
                f"model {quoted(name)}: unknown action {quoted(action)} ({_kind(action)}); use rollback, traffic or labels"
            )
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

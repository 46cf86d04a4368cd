"""Triton's trace extension over HTTP and gRPC: read and change which requests are traced, at run time.

HTTP: GET/POST /v2/trace/setting and /v2/models/{m}/trace/setting (a JSON object of settings; a
null value clears one). gRPC: inference.GRPCInferenceService/TraceSetting (no settings: read them;
an empty value list clears one). Behind the admin token when one is configured. The settings and
their meaning are runtime/tracing/control.py's.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.admin import check_token
from runtime.config import Settings
from runtime.engine import EngineApi
from runtime.errors import InvalidInput, quoted
from runtime._pb import grpc_service_pb2 as pb
from runtime.server.grpc.converters import parse
from runtime.server.grpc.service import answers_errors as grpc_answers_errors
from runtime.server.grpc.service import generic_handler, unary_handlers
from runtime.server.http.responses import answers_errors, json_response
from runtime.server.repository import _credential as credential
from runtime.server.repository import _json_body as json_body
from runtime.tracing.control import SettingValue, TraceSettingsApi


def _setting(key: str, value: Any, where: str) -> SettingValue | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):  # trace_rate: 100 as well as "100"
        return str(value)
    raise InvalidInput(f"{where}: {key} must be a string or a list of strings, got {value!r}")


def http_routes(engine: EngineApi, control: TraceSettingsApi, settings: Settings) -> list[Route]:
    limit = settings.max_request_bytes

    @answers_errors
    async def trace_setting(request: Request) -> Response:
        check_token(settings, request.headers.get("authorization"))
        model = request.path_params.get("model", "")
        if model:
            await engine.model_ready(model, "", strict=True)  # 404 for a model the repository does not have
        if request.method == "GET":
            return json_response(await control.trace_settings(model))
        where = f"model {quoted(model)}: trace settings" if model else "trace settings"
        doc = await json_body(request, limit)
        changes = {key: _setting(key, value, where) for key, value in doc.items()}
        return json_response(await control.update_trace_settings(model, changes))

    return [
        Route("/v2/trace/setting", trace_setting, methods=["GET", "POST"]),
        Route("/v2/models/{model}/trace/setting", trace_setting, methods=["GET", "POST"]),
    ]


class TraceService:
    def __init__(self, engine: EngineApi, control: TraceSettingsApi, settings: Settings) -> None:
        self.engine = engine
        self.control = control
        self.settings = settings

    @grpc_answers_errors
    async def TraceSetting(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        check_token(self.settings, credential(context))
        request = parse(pb.TraceSettingRequest, raw)
        model = request.model_name
        if model:
            await self.engine.model_ready(model, "", strict=True)
        if request.settings:
            changes: dict[str, SettingValue | None] = {
                key: list(value.value) or None for key, value in request.settings.items()
            }
            current = await self.control.update_trace_settings(model, changes)
        else:
            current = await self.control.trace_settings(model)
        reply = pb.TraceSettingResponse()
        for key, setting in current.items():
            reply.settings[key].value.extend([setting] if isinstance(setting, str) else setting)
        return reply


def grpc_handler(engine: EngineApi, control: TraceSettingsApi, settings: Settings) -> grpc.GenericRpcHandler:
    return generic_handler(unary_handlers(TraceService(engine, control, settings), ("TraceSetting",)))

"""Triton's logging extension over HTTP and gRPC: read and change this process's logging at run time.

HTTP: GET/POST /v2/logging (a JSON object of settings). gRPC: inference.GRPCInferenceService/
LogSettings (no settings: read them). Behind the admin token when one is configured. The settings
and their meaning are runtime/tracing/logs.py's.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.admin import check_token
from runtime.config import Settings
from runtime._pb import grpc_service_pb2 as pb
from runtime.server.grpc.converters import parse
from runtime.server.grpc.service import answers_errors as grpc_answers_errors
from runtime.server.grpc.service import generic_handler, unary_handlers
from runtime.server.http.responses import answers_errors, json_response
from runtime.server.repository import _credential as credential
from runtime.server.repository import _json_body as json_body
from runtime.tracing.logs import LogSettingsApi


def http_routes(control: LogSettingsApi, settings: Settings) -> list[Route]:
    @answers_errors
    async def logging_settings(request: Request) -> Response:
        check_token(settings, request.headers.get("authorization"))
        if request.method == "GET":
            return json_response(await control.log_settings())
        return json_response(await control.update_log_settings(await json_body(request, settings.max_request_bytes)))

    return [Route("/v2/logging", logging_settings, methods=["GET", "POST"])]


class LogService:
    def __init__(self, control: LogSettingsApi, settings: Settings) -> None:
        self.control = control
        self.settings = settings

    @grpc_answers_errors
    async def LogSettings(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        check_token(self.settings, credential(context))
        request = parse(pb.LogSettingsRequest, raw)
        if request.settings:
            changes = {
                key: getattr(value, choice) if (choice := value.WhichOneof("parameter_choice")) else None
                for key, value in request.settings.items()
            }
            current = await self.control.update_log_settings(changes)
        else:
            current = await self.control.log_settings()
        reply = pb.LogSettingsResponse()
        for key, setting in current.items():
            if isinstance(setting, bool):
                reply.settings[key].bool_param = setting
            elif isinstance(setting, int):
                reply.settings[key].uint32_param = setting
            else:
                reply.settings[key].string_param = setting
        return reply


def grpc_handler(control: LogSettingsApi, settings: Settings) -> grpc.GenericRpcHandler:
    return generic_handler(unary_handlers(LogService(control, settings), ("LogSettings",)))

"""HTTP answers: JSON bodies, and the one mapping of core errors to HTTP statuses."""
from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from runtime.errors import Code, RuntimeServingError
from runtime.server.protocol import JSON

log = logging.getLogger(__name__)

STATUS_BY_CODE = {
    Code.INVALID_ARGUMENT: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.FAILED_PRECONDITION: 409,
    Code.ALREADY_EXISTS: 409,
    Code.TOO_LARGE: 413,
    Code.CANCELLED: 499,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.RESOURCE_EXHAUSTED: 503,
    Code.DEADLINE_EXCEEDED: 504,
}
NUMPY_JSON = orjson.OPT_SERIALIZE_NUMPY

Handler = Callable[[Request], Awaitable[Response]]


def error_response(status: int, message: str) -> Response:
    # Both tritonclients parse {"error": "..."} out of any non-200 answer.
    return Response(orjson.dumps({"error": message}), status_code=status, media_type=JSON)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=NUMPY_JSON), status_code=status, media_type=JSON)


def error_status(exc: Exception, where: str) -> tuple[int, str]:
    """The HTTP status and message that answer `exc`: core errors by their code; anything unexpected
    is logged (naming `where`, e.g. the method and path) and a 500 that names the failure."""
    if isinstance(exc, RuntimeServingError):
        return STATUS_BY_CODE[exc.code], exc.message
    if isinstance(exc, ClientDisconnect):  # gone mid-body (or cut off as too slow): nobody to answer
        return STATUS_BY_CODE[Code.CANCELLED], "client disconnected"
    log.error("unhandled error on %s", where, exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}: {exc}"


def answers_errors(handler: Handler) -> Handler:
    """Map core errors to HTTP statuses; anything unexpected is a 500 that names the failure."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # never let one request take the server down
            return error_response(*error_status(exc, f"{request.method} {request.url.path}"))

    return wrapped

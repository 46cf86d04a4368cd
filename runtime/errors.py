"""Errors of the core, each with a transport-free code; servers map codes to statuses."""
from __future__ import annotations

import enum

# What an error message may quote of a client's text, and how long a whole message may grow: a
# 10 MB tensor name must not come back in a 10 MB error body.
QUOTE_LIMIT = 64
MESSAGE_LIMIT = 4096


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """repr(value) for an error message, cut to `limit` characters with how much was left out."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def capped(message: str, limit: int = MESSAGE_LIMIT) -> str:
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters)"


class Code(enum.Enum):
    """What went wrong, for every transport. The statuses each code maps to live with the servers:
    runtime/server/http/responses.py (STATUS_BY_CODE) and runtime/server/grpc/service.py."""

    INVALID_ARGUMENT = "invalid_argument"  # HTTP 400, gRPC INVALID_ARGUMENT
    NOT_FOUND = "not_found"  # HTTP 404, gRPC NOT_FOUND
    UNAVAILABLE = "unavailable"  # HTTP 503, gRPC UNAVAILABLE: overload, not ready, draining
    DEADLINE_EXCEEDED = "deadline_exceeded"  # HTTP 504, gRPC DEADLINE_EXCEEDED: queue timeout or deadline
    CANCELLED = "cancelled"  # HTTP 499, gRPC CANCELLED: the client went away
    UNAUTHENTICATED = "unauthenticated"  # HTTP 401, gRPC UNAUTHENTICATED
    PERMISSION_DENIED = "permission_denied"  # HTTP 403, gRPC PERMISSION_DENIED
    TOO_LARGE = "too_large"  # HTTP 413, gRPC RESOURCE_EXHAUSTED
    RESOURCE_EXHAUSTED = "resource_exhausted"  # HTTP 503, gRPC RESOURCE_EXHAUSTED: memory budget, threads
    FAILED_PRECONDITION = "failed_precondition"  # HTTP 409, gRPC FAILED_PRECONDITION
    ALREADY_EXISTS = "already_exists"  # HTTP 409, gRPC ALREADY_EXISTS: e.g. a shared-memory region's name
    INTERNAL = "internal"  # HTTP 500, gRPC INTERNAL: model execution failed, or a bug


class RuntimeServingError(Exception):
    """An error to be answered to the client: a code and a message naming what was wrong."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, code: Code | None = None) -> None:
        message = capped(message)
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidInput(RuntimeServingError):
    code = Code.INVALID_ARGUMENT


class ModelNotFound(RuntimeServingError):
    code = Code.NOT_FOUND


class Unavailable(RuntimeServingError):
    code = Code.UNAVAILABLE


class QueueFull(Unavailable):
    """Overload: the model's queue is at its configured bound."""


class RequestTimeout(RuntimeServingError):
    code = Code.DEADLINE_EXCEEDED


class RequestCancelled(RuntimeServingError):
    code = Code.CANCELLED


class PayloadTooLarge(RuntimeServingError):
    code = Code.TOO_LARGE


class ExecutionError(RuntimeServingError):
    code = Code.INTERNAL


class ModelLoadError(RuntimeServingError):
    """A model version could not be loaded; the reason names file, field or provider."""

    code = Code.INVALID_ARGUMENT

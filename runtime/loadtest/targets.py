"""Where the gRPC user sends its calls, from locust's --host and --grpc-host. No locust import here.

`--grpc-host` wins. Otherwise --host is the gRPC target when it is one (host:port, grpc://host:port),
as when V2GrpcUser runs alone. An HTTP --host (http[s]://...) is the HTTP user's: the gRPC target is
then derived only from Triton's (and model-runtime's) default ports, HTTP 8000 -> gRPC 8001; for
any other HTTP URL there is nothing to derive it from, and the run is refused with a message that
says to pass --grpc-host, instead of every gRPC call failing against the HTTP port.
"""

from __future__ import annotations

from urllib.parse import urlsplit

TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001


class TargetError(ValueError):
    """No gRPC target can be told from the options; the message says what to pass."""


def _bare(target: str) -> str:
    if "://" in target:
        target = target.split("://", 1)[1]
    return target.rstrip("/")


def grpc_target(grpc_host: str, host: str) -> str:
    """host:port for the gRPC channel, or TargetError naming --grpc-host."""
    if grpc_host:
        return _bare(grpc_host)
    if not host:
        raise TargetError("the gRPC user needs a target: pass --grpc-host HOST:PORT (or --host HOST:PORT)")
    scheme = host.split("://", 1)[0].lower() if "://" in host else ""
    if scheme not in ("http", "https"):
        return _bare(host)
    parts = urlsplit(host)
    if parts.port == TRITON_HTTP_PORT and parts.hostname:
        name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{name}:{TRITON_GRPC_PORT}"
    raise TargetError(
        f"--host {host} is an HTTP URL, so the gRPC user cannot use it, and its port is not Triton's "
        f"{TRITON_HTTP_PORT} (whose gRPC neighbour is {TRITON_GRPC_PORT}): pass --grpc-host HOST:PORT, "
        "or name one user class (V2HttpUser or V2GrpcUser)"
    )

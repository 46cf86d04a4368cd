"""The one ASGI server helper: an ASGI app served by uvicorn on its own socket (the HTTP, admin and metrics ports)."""
from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
from typing import Any, Iterator

import orjson
import uvicorn

from runtime.config import Settings
from runtime.server.protocol import JSON, GuardedHttpToolsProtocol


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the app's shutdown sequence owns the signals."""

    drained: bool = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        # uvicorn cancels the requests still running when its grace period is over; they are
        # still in the set right after (a cancelled task needs a loop turn to finish).
        self.drained = not self.server_state.tasks



_SHUTTING_DOWN = orjson.dumps({"error": "server shutting down: the request did not finish within the grace period"})


def _answers_cancellation(app: Any) -> Any:
    """ASGI wrapper: a request cancelled by uvicorn when the grace period runs out is answered 503 in
    JSON, and one cancelled because its client went away ends quietly, instead of uvicorn's
    'Exception in ASGI application' traceback and text 500 for both.
    """

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if scope["type"] != "http" or task is None:
                raise
            if hasattr(task, "uncancel"):  # Python >= 3.11: this task goes on to answer
                task.uncancel()
            if not started:
                headers = [(b"content-type", JSON.encode()), (b"connection", b"close")]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": _SHUTTING_DOWN})

    return wrapped


def tls_files(settings: Settings) -> tuple[str, str, str | None] | None:
    """(certificate, key, client CA or None) when TLS is configured; an error if half of it is."""
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None and client_ca is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert-file and --tls-key-file (--tls-client-ca-file is optional)")
    return str(cert), str(key), str(client_ca) if client_ca is not None else None


class AsgiServer:
    """One ASGI app served by uvicorn on its own socket, inside the running event loop.

    With `tls` and TLS files in the settings it serves HTTPS, requiring client certificates signed
    by --tls-client-ca-file when that is set. `protocol`: the connections' protocol, the guards
    (runtime/server/protocol.py) or a subclass (the inference port's fast path, http/fast.py).
    """

    def __init__(
        self,
        app: Any,
        address: str,
        port: int,
        settings: Settings,
        *,
        tls: bool = True,
        reuse_port: bool = False,
        protocol: type[GuardedHttpToolsProtocol] = GuardedHttpToolsProtocol,
    ) -> None:
        files = tls_files(settings) if tls else None
        tls_options: dict[str, Any] = {}
        if files is not None:
            cert, key, client_ca = files
            tls_options = {"ssl_certfile": cert, "ssl_keyfile": key}
            if client_ca is not None:
                tls_options |= {"ssl_ca_certs": client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        configured = protocol.configured(
            request_timeout_s=settings.http_header_timeout_secs,
            max_header_bytes=64 * 1024,
            max_connections=settings.http_max_connections,
        )
        config = uvicorn.Config(
            _answers_cancellation(app),
            loop="none",
            http=configured,
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_keep_alive=max(1, math.ceil(settings.http_keep_alive_timeout_secs)),
            timeout_graceful_shutdown=max(1, math.ceil(settings.exit_timeout_secs)),
            **tls_options,
        )
        config.load()  # a bad certificate or key fails here, before anything is bound
        self.tls = files is not None
        self._socket = _bind(address, port, reuse_port=reuse_port)
        self.port: int = self._socket.getsockname()[1]
        self._server = _Server(config)
        self._protocol = configured
        self._task: asyncio.Task[None] | None = None

    def new_connection(self) -> asyncio.Protocol:
        """The protocol object the server makes for each connection it accepts, over its app, limits and
        state (tests drive one through a transport of their own)."""
        return self._protocol(config=self._server.config, server_state=self._server.server_state, app_state={})

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self, deadline: float | None = None) -> bool:
        """Stop accepting, let in-flight requests finish until `deadline` (the loop's clock, which is
        time.monotonic()), answer the rest 503, then close. Without a deadline: --exit-timeout-secs.

        True when every request finished in time.
        """
        loop = asyncio.get_running_loop()
        if deadline is not None:
            # uvicorn sleeps 0.1 s before it starts waiting; its wait is what is left after that.
            self._server.config.timeout_graceful_shutdown = max(0.1, deadline - loop.time() - 0.1)  # type: ignore[assignment]
        self._server.should_exit = True
        if self._task is not None:
            limit = None if deadline is None else max(0.5, deadline - loop.time() + 0.5)
            done, _ = await asyncio.wait({self._task}, timeout=limit)
            if not done:  # uvicorn itself is stuck: its connections die with the process
                return False
        return self._server.drained


def _bind(address: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket; with `reuse_port` (SO_REUSEPORT) several worker processes share the port and
    the kernel spreads new connections over them."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock

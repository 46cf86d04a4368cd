"""The HTTP/1.1 fast path: POST /v2/models/{m}[/versions/{v}]/infer answered by the connection's
protocol itself, without ASGI; every other request goes to the ASGI app (app.build_app) as before.
app.http_server serves the inference port with it.

uvicorn's ASGI cycle per request is a scope dict, receive and send message dicts, an asyncio.Event,
Starlette's Request and Response, our cancellation wrapper and a watcher task for disconnects, and
two writes (head, then body). Here the parser's callbacks fill an `InferCycle`, one task answers it
through the same `InferCall` as the ASGI route, and the whole response goes out in one write.

Everything else stays uvicorn's and the guards' (runtime/server/protocol.py): the cycle is queued
behind the one being answered when pipelined, counts among the server's tasks (limits, drain on
shutdown), and the read, write and pipelining bounds apply to it as to any request.
"""
from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from runtime.server.http.codec import BINARY, body_too_large, check_declared_length, decoded_body
from runtime.server.http.infer import INFER_PATH, InferCall
from runtime.server.http.responses import error_status
from runtime.server.protocol import GuardedHttpToolsProtocol

_JSON_TYPE = b"content-type: application/json\r\n"
_BINARY_TYPE = b"content-type: " + BINARY.encode() + b"\r\n"
_CLOSE = b"connection: close\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SHUTTING_DOWN = orjson.dumps({"error": "server shutting down: the request did not finish within the grace period"})
# Never awaited: uvicorn sets its cycles' event on disconnect; an InferCycle is told by InferCycle.lost().
_UNUSED_EVENT = asyncio.Event()


class InferCycle(RequestResponseCycle):
    """One POST .../infer on a connection: what uvicorn's protocol reads of a cycle (response_started,
    response_complete, keep_alive, disconnected), the body as the parser hands it over, and the task
    that answers it."""

    def __init__(self, protocol: _InferRouting, model: str, version: str, path: str, keep_alive: bool) -> None:
        # Not RequestResponseCycle.__init__: none of its ASGI state is used.
        self.protocol = protocol
        self.model = model
        self.version = version
        self.path = path
        self.keep_alive = keep_alive
        self.headers = protocol.headers  # the parser's (lower-cased name, value) pairs
        self.expect_100_continue = protocol.expect_100_continue
        self.message_event = _UNUSED_EVENT
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def add(self, chunk: bytes) -> None:
        """A piece of the body: kept up to the limit; past it the rest is dropped and 413 answers."""
        if self.response_complete or self.too_large:
            return
        self.size += len(chunk)
        if self.size > self.protocol.infer.limit:
            self.too_large = True
            self.chunks = []
            self._wake()
            return
        self.chunks.append(chunk)

    def complete(self) -> None:
        self.more_body = False
        self._wake()

    def lost(self) -> None:
        """The connection closed: a request still running is cancelled, so it leaves the queue unserved."""
        if self.task is not None and not self.response_complete:
            self.task.cancel()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def run(self) -> None:
        try:
            status, parts, header_length = await self._answer()
        except asyncio.CancelledError:
            if self.disconnected or self.protocol.transport.is_closing():
                return  # the client went away: nobody to answer
            # uvicorn cancels what still runs when the shutdown grace period is over: 503, not silence.
            task = self.task
            assert task is not None
            task.uncancel()
            self.keep_alive = False
            status, parts, header_length = 503, [_SHUTTING_DOWN], None
        await self._send(status, parts, header_length)

    async def _answer(self) -> tuple[int, list[bytes], int | None]:
        infer = self.protocol.infer
        declared = header_length = encoding = None
        traceparent = ""
        for name, value in self.headers:
            if name == b"content-length":
                declared = value.decode("latin-1")
            elif name == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif name == b"content-encoding":
                encoding = value.decode("latin-1")
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
        try:
            check_declared_length(declared, infer.limit)
            if self.more_body and not self.too_large:
                if self.expect_100_continue:
                    self.protocol.transport.write(_CONTINUE)
                while self.more_body and not self.too_large:
                    self.protocol.flow.resume_reading()  # the guards' gate decides
                    self._waiter = self.protocol.loop.create_future()
                    await self._waiter
            if self.too_large:
                raise body_too_large(infer.limit)
            body = decoded_body(b"".join(self.chunks), encoding or "", infer.limit)
            self.chunks = []
            parts, length = await infer(self.model, self.version, body, header_length, traceparent)
            return 200, parts, length
        except Exception as exc:  # never let one request take the server down
            status, message = error_status(exc, f"POST {self.path}")
            return status, [orjson.dumps({"error": message})], None

    async def _send(self, status: int, parts: list[bytes], header_length: int | None) -> None:
        """The status line, headers and body in one write; then the next pipelined request starts."""
        protocol = self.protocol
        if protocol.flow.write_paused and not self.disconnected:
            await protocol.flow.drain()  # the client is not reading: hold the answer as uvicorn does
        if self.disconnected:
            return
        size = sum(len(part) for part in parts)
        head = [STATUS_LINE[status], protocol.default_headers()]
        if header_length is None:
            head.append(_JSON_TYPE)
        else:
            head += [_BINARY_TYPE, b"inference-header-content-length: %d\r\n" % header_length]
        head.append(b"content-length: %d\r\n" % size)
        if not self.keep_alive:
            head.append(_CLOSE)
        head.append(b"\r\n")
        self.response_started = True
        protocol.transport.write(b"".join([*head, *parts]))
        self.response_complete = True
        if not self.keep_alive:
            protocol.transport.close()
        protocol.on_response_complete()


class _InferRouting(HttpToolsProtocol):
    """Between the guards and uvicorn's protocol in InferProtocol's MRO: the guards' callbacks run
    first, then this sends POST .../infer to an InferCycle and everything else on to uvicorn."""

    infer: InferCall  # set by InferProtocol.serving
    _defaults: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")

    def default_headers(self) -> bytes:
        """uvicorn's default headers (date, server) as bytes, joined again only when uvicorn renews them (every second)."""
        current = self.server_state.default_headers
        cached, joined = self._defaults
        if current is not cached:
            joined = b"".join(b"%s: %s\r\n" % (name, value) for name, value in current)
            type(self)._defaults = (current, joined)
        return joined

    def on_headers_complete(self) -> None:
        cycle = self._infer_cycle()
        if cycle is None:
            super().on_headers_complete()
            return
        existing = self.cycle
        self.cycle = cycle
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)
        else:  # pipelined: queued behind the request being answered, as uvicorn queues its own
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))

    def _infer_cycle(self) -> InferCycle | None:
        """An InferCycle for POST .../infer; None for anything else, and while the guards refuse requests."""
        if self.app is not self.config.loaded_app or self.parser.get_method() != b"POST":
            return None
        try:
            path = httptools.parse_url(self.url).path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return None  # uvicorn's path answers it
        if "%" in path:
            path = urllib.parse.unquote(path)
        match = INFER_PATH.fullmatch(path)
        if match is None:
            return None
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        return InferCycle(self, match["model"], match["version"] or "", path, keep_alive)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if type(cycle) is not InferCycle:
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(cycle.run())
        cycle.task = task
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is InferCycle:
            cycle.add(body)  # no flow-control pause per 64 KiB: the cycle holds the body to its limit
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is InferCycle:
            cycle.complete()
        else:
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if type(cycle) is InferCycle:
            cycle.lost()


class InferProtocol(GuardedHttpToolsProtocol, _InferRouting):
    """The inference port's protocol: the guards, then the infer fast path, then uvicorn."""

    @classmethod
    def serving(cls, infer: InferCall) -> type[InferProtocol]:
        """A subclass that answers POST .../infer with `infer` (uvicorn makes one protocol object per connection)."""

        class Serving(cls):  # type: ignore[valid-type,misc]
            pass

        Serving.infer = infer
        return Serving

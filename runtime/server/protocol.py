"""uvicorn's httptools protocol with the connection guards it lacks (slow, stalled and greedy clients),
for every HTTP port (inference, admin, metrics)."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import orjson
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

JSON = "application/json"

_OVERLOADED = orjson.dumps({"error": "too many concurrent HTTP connections or requests; retry later"})


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", JSON.encode()),
                (b"content-length", str(len(_OVERLOADED)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _OVERLOADED})



class _ConnectionFlow(FlowControl):
    """uvicorn's flow control, except that reading resumes only when the connection's gate allows it.

    uvicorn resumes reading on every `receive()` and after every response, whatever is queued: a
    client that pipelines requests and never reads the answers had its requests parsed and queued
    without bound (hundreds of thousands, GBs of RSS).
    """

    def __init__(self, transport: asyncio.Transport, gate: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._gate = gate

    def resume_reading(self) -> None:
        if self.read_paused and self._gate():
            super().resume_reading()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits it lacks against slow or stalled clients.

    - A request's headers and body must arrive within `request_timeout_s` of its first byte (of the
      connection, for the first request): slowloris clients get 408 and are disconnected.
    - Headers larger than `max_header_bytes` get 431 (httptools itself buffers them without bound).
    - A client that stops reading its answer for `request_timeout_s` is disconnected.
    - Beyond `max_connections` connections, or as many running requests, requests are answered
      503 with our JSON error at once (uvicorn's own limit answers text and logs each one).
    - Per-connection flow control: while `max_pipelined` requests wait behind the one being answered,
      or the transport's write buffer is above its high-water mark (the client is not reading), the
      connection is not read, and bytes already read are held unparsed; a greedy pipelining client
      is held to a few requests and one read's worth of bytes, and other connections are served.
      What a connection holds is dropped when it closes.
    Idle keep-alive connections are uvicorn's `timeout_keep_alive`.
    """

    request_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 4096
    max_pipelined: int = 4
    # Bytes handed to the parser at a time: it cannot stop inside a buffer, so the pipeline may
    # overshoot `max_pipelined` by at most the requests that fit in one piece.
    feed_bytes: int = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # enforced below, answered in JSON
        self._read_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._reading_headers = True
        self._discarding = False  # answered and closing: input is read and dropped
        self._held = bytearray()  # read but not parsed while the connection is backed up
        self._release_scheduled = False

    @classmethod
    def configured(
        cls, request_timeout_s: float, max_header_bytes: int, max_connections: int
    ) -> type[GuardedHttpToolsProtocol]:
        """A subclass with these limits (uvicorn makes one protocol object per connection)."""

        class Configured(cls):  # type: ignore[valid-type,misc]
            pass

        Configured.request_timeout_s = request_timeout_s
        Configured.max_header_bytes = max_header_bytes
        Configured.max_connections = max_connections
        return Configured

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _ConnectionFlow(transport, self._may_read)
        self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._read_deadline, self._write_deadline):
            if handle is not None:
                handle.cancel()
        self._read_deadline = self._write_deadline = None
        super().connection_lost(exc)
        # Queued requests reference this protocol (their cycles' on_response) and it them: without
        # this they wait for the cyclic garbage collector, which an idle server may not run for long.
        self.pipeline.clear()
        self._held = bytearray()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._held:  # backed up: keep the bytes in order behind those already held
            self._held += data
            self.flow.pause_reading()
            return
        self._feed(memoryview(data))

    def _feed(self, data: memoryview) -> None:
        step = self.feed_bytes
        while data:
            if self._backed_up():
                self._held = bytearray(data)
                self.flow.pause_reading()
                return
            piece, data = data[:step], data[step:]
            if self._reading_headers:
                self._header_bytes += len(piece)
            super().data_received(piece)  # type: ignore[arg-type]  # httptools takes any buffer
            if self._reading_headers and self._header_bytes > self.max_header_bytes:
                self._refuse(431, f"request headers exceed {self.max_header_bytes} bytes")
            if self._discarding or self.transport.is_closing():
                return

    def _backed_up(self) -> bool:
        return len(self.pipeline) >= self.max_pipelined or self.flow.write_paused

    def _may_read(self) -> bool:
        """The flow-control gate: False keeps the transport paused; held bytes are parsed first."""
        if self._backed_up() or self.transport.is_closing():
            return False
        if self._held:
            if not self._release_scheduled:
                # Not from inside uvicorn's callbacks (receive(), on_response_complete): parsing
                # starts new requests, so do it from the loop.
                self._release_scheduled = True
                self.loop.call_soon(self._release_held)
            return False
        return True

    def _release_held(self) -> None:
        self._release_scheduled = False
        if self.transport.is_closing() or self._discarding or self._backed_up():
            return
        held, self._held = self._held, bytearray()
        self._feed(memoryview(held))
        self.flow.resume_reading()  # the gate decides again

    def on_response_complete(self) -> None:
        super().on_response_complete()  # resumes reading (refused while full), then starts the next
        if not self.transport.is_closing():
            self.flow.resume_reading()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:
            self._arm_read_deadline()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes = 0
        busy = len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections
        app = self.app
        if busy:
            self.app = _overloaded
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        self._reading_headers = True

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.request_timeout_s, self._stalled_reader)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        if not self.transport.is_closing():
            self.flow.resume_reading()

    def _arm_read_deadline(self) -> None:
        self._read_deadline = self.loop.call_later(self.request_timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._held:  # the client sent it; we are the ones not reading
            self._arm_read_deadline()
            return
        waiting_for_body = self.cycle is not None and not self.cycle.response_complete
        if not waiting_for_body and not self._header_bytes:
            self.transport.close()  # connected, never sent a byte: like an idle keep-alive
            return
        self._refuse(408, f"request headers and body not received within {self.request_timeout_s:g}s")

    def _refuse(self, status: int, message: str) -> None:
        if self.transport.is_closing() or self._discarding:
            return
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        if not self._reading_headers and self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # the app is answering already: cut it short
            return
        body = orjson.dumps({"error": message})
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        # Close our side but read (and drop) what the client still sends for a moment: closing with
        # unread input makes the kernel reset the connection, and the client may lose our answer.
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)
        else:
            self.transport.close()

    def _stalled_reader(self) -> None:
        self._write_deadline = None
        self.transport.abort()  # close() would wait for the buffer to drain, which it never does


"""The third-party internals the server relies on still exist with the shapes it uses.

GuardedHttpToolsProtocol (runtime/server/protocol.py) subclasses uvicorn's httptools protocol,
overrides its callbacks and reads undocumented attributes; runtime/server/asgi.py subclasses
uvicorn.Server; the metrics text writes bucket bounds the way prometheus_client does. pyproject.toml
bounds uvicorn below the next minor release: when raising that bound, these tests say what moved.
"""
from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from runtime.server.asgi import _Server
from runtime.server.protocol import GuardedHttpToolsProtocol, _ConnectionFlow

OVERRIDDEN = [
    "connection_made",
    "connection_lost",
    "data_received",
    "on_response_complete",
    "on_message_begin",
    "on_headers_complete",
    "on_message_complete",
    "pause_writing",
    "resume_writing",
]


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("name", OVERRIDDEN)
def test_the_overridden_uvicorn_callbacks_exist_with_our_signatures(name: str) -> None:
    theirs = getattr(HttpToolsProtocol, name)
    assert getattr(GuardedHttpToolsProtocol, name) is not theirs, f"{name} is no longer overridden"
    assert _parameters(theirs) == _parameters(getattr(GuardedHttpToolsProtocol, name))


def test_flow_control_has_what_the_connection_gate_uses() -> None:
    assert _parameters(FlowControl.__init__) == ["self", "transport"]
    flow = FlowControl(_Transport())
    assert flow.read_paused is False and flow.write_paused is False
    for method in ("pause_reading", "resume_reading", "pause_writing", "resume_writing"):
        assert callable(getattr(flow, method)), method


def test_uvicorn_server_has_what_the_asgi_server_subclass_uses() -> None:
    assert inspect.isfunction(uvicorn.Server.capture_signals)
    assert _parameters(uvicorn.Server.shutdown) == ["self", "sockets"]
    assert _parameters(uvicorn.Server.serve) == ["self", "sockets"]
    server = _Server(uvicorn.Config(_ok, loop="none", lifespan="off", log_config=None))
    assert server.started is False and server.should_exit is False
    assert isinstance(server.server_state.tasks, set)
    assert isinstance(server.config.timeout_graceful_shutdown, (int, float, type(None)))
    with server.capture_signals():  # ours: uvicorn installs no signal handlers
        pass


class _Transport(asyncio.Transport):
    """Just enough of a socket transport for one protocol object; it records what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.asyncio
async def test_the_uvicorn_attributes_the_guards_read_exist_and_mean_what_they_meant() -> None:
    config = uvicorn.Config(_ok, loop="none", lifespan="off", log_config=None, access_log=False)
    config.load()
    cls = GuardedHttpToolsProtocol.configured(request_timeout_s=30.0, max_header_bytes=64 * 1024, max_connections=16)
    state = ServerState()
    protocol = cls(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    try:
        # connection_made replaced uvicorn's flow control with ours; the rest is uvicorn's state.
        assert isinstance(protocol.flow, _ConnectionFlow)
        assert protocol.transport is transport and protocol.loop is asyncio.get_running_loop()
        assert protocol.limit_concurrency is None
        assert protocol.connections is state.connections and protocol in protocol.connections
        assert protocol.tasks is state.tasks
        assert protocol.cycle is None and len(protocol.pipeline) == 0
        assert protocol.app is config.loaded_app

        protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        cycle = protocol.cycle
        assert cycle is not None
        # The request's cycle was built from the attributes on_headers_complete reads: our flow control,
        # and the app we swap in for an overloaded server.
        assert cycle.flow is protocol.flow
        assert cycle.response_complete is False and cycle.response_started is False
        while not cycle.response_complete:
            await asyncio.sleep(0)
        assert transport.written.startswith(b"HTTP/1.1 200") and transport.written.endswith(b"ok")
        assert cycle.response_started is True
        while protocol.tasks:
            await asyncio.sleep(0)
        assert len(protocol.pipeline) == 0
    finally:
        protocol.connection_lost(None)


@pytest.mark.asyncio
async def test_on_headers_complete_runs_the_app_the_protocol_holds_then() -> None:
    """The overload guard swaps `self.app` around uvicorn's on_headers_complete."""
    config = uvicorn.Config(_ok, loop="none", lifespan="off", log_config=None, access_log=False)
    config.load()
    cls = GuardedHttpToolsProtocol.configured(request_timeout_s=30.0, max_header_bytes=64 * 1024, max_connections=0)
    protocol = cls(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    try:
        protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        while protocol.tasks or not transport.written:
            await asyncio.sleep(0)
        assert transport.written.startswith(b"HTTP/1.1 503"), bytes(transport.written)
        assert protocol.app is config.loaded_app
    finally:
        protocol.connection_lost(None)


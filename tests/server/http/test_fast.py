"""The inference port's fast path (runtime/server/http/fast.py) driven in process: the protocol object
the port makes for a connection, a transport that records what it is given, a real engine.

What these pin down is what a socket cannot show: one write per infer answer, which requests skip
ASGI, the order of pipelined answers, and that a vanished client's request leaves the queue.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pytest

from runtime.examples import save_model
from runtime.server.asgi import AsgiServer
from runtime.server.http.app import http_server
from tests.conftest import OpenEngine
from tests.engine import InProcess
from tests.models import FIXED_WINDOW, build_identity

WINDOW = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 9000000 }\n"  # 9 s
LIMIT = 4096  # --max-request-bytes


class Recording(asyncio.Transport):
    """A transport that keeps every write and says whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.fixture
async def port(tmp_path: Path, open_engine: OpenEngine) -> AsyncIterator[tuple[AsgiServer, InProcess]]:
    repo = tmp_path / "repo"
    save_model(build_identity("FP32"), repo, "identity", config_pbtxt="max_batch_size: 8\n")
    save_model(build_identity("FP32"), repo, "waiting", config_pbtxt=WINDOW + FIXED_WINDOW)
    opened = await open_engine(repo, http_port=0, max_request_bytes=LIMIT)
    server = http_server(opened.engine, opened.settings)
    yield server, opened


def connect(server: AsgiServer) -> tuple[asyncio.Protocol, Recording]:
    protocol = server.new_connection()
    transport = Recording()
    protocol.connection_made(transport)
    return protocol, transport


def infer_request(model: str = "identity", values: tuple[float, ...] = (1.0, 2.0), headers: bytes = b"") -> bytes:
    """A binary-tensor infer request as tritonclient sends it."""
    header = json.dumps(
        {
            "inputs": [{"name": "INPUT0", "shape": [1, len(values)], "datatype": "FP32",
                        "parameters": {"binary_data_size": 4 * len(values)}}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    body = header + np.array(values, np.float32).tobytes()
    return (
        b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: %d\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (model.encode(), len(header), len(body), headers)
    ) + body


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def output(answer: bytes) -> list[float]:
    status, headers, body = parse(answer)
    assert status == 200, answer
    length = int(headers["inference-header-content-length"])
    doc = json.loads(body[:length])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == len(body) - length
    return np.frombuffer(body[length:], np.float32).tolist()


async def until(condition: Any, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def test_an_infer_answer_is_one_write_and_the_connection_stays_open(port: tuple[AsgiServer, InProcess]) -> None:
    server, _ = port
    protocol, transport = connect(server)
    protocol.data_received(infer_request(values=(1.5, -2.0)))
    await until(lambda: transport.writes, "the answer")
    await asyncio.sleep(0.05)
    assert len(transport.writes) == 1  # status line, headers and body together
    status, headers, body = parse(transport.writes[0])
    assert headers["content-type"] == "application/octet-stream"
    assert int(headers["content-length"]) == len(body)
    assert "connection" not in headers and not transport.closed  # keep-alive
    assert output(transport.writes[0]) == [1.5, -2.0]


async def test_other_routes_still_go_through_the_asgi_app(port: tuple[AsgiServer, InProcess]) -> None:
    server, _ = port
    protocol, transport = connect(server)
    protocol.data_received(b"GET /v2/models/identity/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(lambda: len(transport.writes) == 2, "uvicorn's head and body")
    status, _, _ = parse(b"".join(transport.writes))
    assert status == 200
    protocol.data_received(b"GET /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(lambda: len(transport.writes) == 4, "Starlette's 405")
    assert parse(b"".join(transport.writes[2:]))[0] == 405


async def test_pipelined_infers_are_answered_in_order(port: tuple[AsgiServer, InProcess]) -> None:
    server, _ = port
    protocol, transport = connect(server)
    protocol.data_received(b"".join(infer_request(values=(float(i), 0.0)) for i in range(3)))
    await until(lambda: len(transport.writes) == 3, "three answers")
    assert [output(answer)[0] for answer in transport.writes] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("request_line", [b"HTTP/1.0", b"close"])
async def test_a_client_that_closes_gets_connection_close(port: tuple[AsgiServer, InProcess], request_line: bytes) -> None:
    server, _ = port
    protocol, transport = connect(server)
    raw = infer_request()
    if request_line == b"HTTP/1.0":
        raw = raw.replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    else:
        raw = raw.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n", 1)
    protocol.data_received(raw)
    await until(lambda: transport.closed, "the close")
    assert len(transport.writes) == 1
    assert parse(transport.writes[0])[1]["connection"] == "close"


async def test_expect_100_continue_is_answered_before_the_body(port: tuple[AsgiServer, InProcess]) -> None:
    server, _ = port
    protocol, transport = connect(server)
    raw = infer_request(headers=b"Expect: 100-continue\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    protocol.data_received(head + b"\r\n\r\n")
    await until(lambda: transport.writes, "100 Continue")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    protocol.data_received(body)
    await until(lambda: len(transport.writes) == 2, "the answer")
    assert output(transport.writes[1]) == [1.0, 2.0]


async def test_bodies_over_the_limit_are_refused(port: tuple[AsgiServer, InProcess]) -> None:
    server, _ = port
    protocol, transport = connect(server)
    # Declared too large: 413 before any of the body arrives.
    protocol.data_received(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
    await until(lambda: transport.writes, "the 413")
    status, _, body = parse(transport.writes[0])
    assert status == 413 and f"exceeds the limit of {LIMIT} bytes" in json.loads(body)["error"]
    # Chunked, no length: 413 once the body passes the limit; the connection goes on.
    protocol, transport = connect(server)
    chunk = b"x" * 1024
    protocol.data_received(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        protocol.data_received(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    await until(lambda: transport.writes, "the 413")
    assert parse(transport.writes[0])[0] == 413
    protocol.data_received(b"0\r\n\r\n" + infer_request())
    await until(lambda: len(transport.writes) == 2, "the next answer")
    assert output(transport.writes[1]) == [1.0, 2.0]


async def test_a_client_that_goes_away_takes_its_request_out_of_the_queue(port: tuple[AsgiServer, InProcess]) -> None:
    server, opened = port
    protocol, transport = connect(server)
    protocol.data_received(infer_request("waiting"))
    queue = opened.registry.get("waiting", "").queue
    await until(lambda: queue.stats.queued == 1, "the request in its 9 s window")
    protocol.connection_lost(None)
    await until(lambda: queue.stats.queued == 0, "the request leaving the queue")
    await asyncio.sleep(0.05)
    assert transport.writes == []


async def test_errors_are_json_with_the_core_status(port: tuple[AsgiServer, InProcess]) -> None:
    server, _ = port
    protocol, transport = connect(server)
    protocol.data_received(infer_request("nosuchmodel"))
    await until(lambda: transport.writes, "the 404")
    status, headers, body = parse(transport.writes[0])
    assert status == 404 and headers["content-type"] == "application/json"
    assert "nosuchmodel" in json.loads(body)["error"]

"""Slow or stalled clients cannot exhaust the server.

HTTP (real server, --http-header-timeout-secs 1): slowloris headers and stalled bodies get 408 and are
cut off; a connection that never sends is closed; oversized headers get 431; beyond
--http-max-connections requests are answered 503 at once; a client that stops reading its answer is
disconnected; other clients are served throughout.
gRPC: idle streams cannot pin the server: each connection has a stream limit, the server a call limit
(RESOURCE_EXHAUSTED beyond it), and a stream with nothing pending ends after its idle timeout.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from tests.engine import in_process_engine
from tests.serving import RunningServer, running_server

from runtime.examples import build_mlp, save_model, write_example_repository
from tests.models import build_identity
from runtime._pb import grpc_service_pb2 as pb
from runtime.server.grpc.server import GrpcServer

TIMEOUT_S = 1.0
MAX_CONNECTIONS = 40
MLP = {"inputs": [{"name": "INPUT", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = write_example_repository(tmp_path_factory.mktemp("repo"))
    save_model(build_identity("UINT8"), repo, "identity_uint8")
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    args = ["--http-header-timeout-secs", str(TIMEOUT_S), "--http-max-connections", str(MAX_CONNECTIONS)]
    with running_server(repository, tmp_path_factory.mktemp("server"), args) as running:
        yield running


async def infer_ok(url: str) -> float:
    """Seconds one normal request took; it must succeed."""
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.post(f"{url}/v2/models/mlp/infer", json=MLP, timeout=aiohttp.ClientTimeout(total=10)) as r:
            assert r.status == 200, await r.text()
    return time.monotonic() - started


async def trickle(port: int, start: bytes, every_s: float = 0.2) -> tuple[bytes, float]:
    """Send `start`, then one more byte every `every_s` until the server answers or closes.

    The server's answer (up to its closing the connection) and how long after connecting it came.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(start)
    received = b""
    try:
        while time.monotonic() - started < 10:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), every_s)
            except TimeoutError:
                writer.write(b"x")
                continue
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return received, time.monotonic() - started


async def test_slowloris_headers_and_bodies_are_cut_off(server: RunningServer) -> None:
    url = f"http://{server.http_url}"
    headers = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: test\r\nX-Slow: "
    body = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n{\"inputs\": "
    slow = [asyncio.ensure_future(trickle(server.http_port, headers)) for _ in range(12)]
    # A stalled body sends nothing more (a trickle would also count as body).
    stalled = [asyncio.ensure_future(trickle(server.http_port, body, every_s=60)) for _ in range(12)]
    await asyncio.sleep(0.3)
    # Others are served while the slow clients hold their connections.
    assert max([await infer_ok(url) for _ in range(5)]) < TIMEOUT_S
    for answer, after_s in await asyncio.gather(*slow, *stalled):
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'{"error":"request headers and body not received within 1s"}' in answer
        assert TIMEOUT_S * 0.9 < after_s < TIMEOUT_S + 3
    assert await infer_ok(url) < TIMEOUT_S
    assert "Traceback" not in server.log()


async def test_silent_connections_are_closed_and_the_limit_answers_503(server: RunningServer) -> None:
    url = f"http://{server.http_url}"
    silent = [await asyncio.open_connection("127.0.0.1", server.http_port) for _ in range(MAX_CONNECTIONS)]
    await asyncio.sleep(0.1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.post(f"{url}/v2/models/mlp/infer", json=MLP) as response:
            assert response.status == 503
            assert "too many concurrent HTTP connections" in (await response.json())["error"]
    # Connections that never send a byte are closed quietly after the timeout, freeing the slots.
    started = time.monotonic()
    for reader, writer in silent:
        assert await asyncio.wait_for(reader.read(), timeout=TIMEOUT_S + 3) == b""
        writer.close()
    assert time.monotonic() - started < TIMEOUT_S + 3
    assert await infer_ok(url) < TIMEOUT_S


async def test_oversized_headers_get_431(server: RunningServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n")
    try:
        for _ in range(100):  # 100 x 1 KiB of headers, past the 64 KiB bound
            writer.write(b"X-Padding: " + b"p" * 1010 + b"\r\n")
            await writer.drain()
    except ConnectionResetError:
        pass
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


async def test_a_client_that_stops_reading_is_disconnected(server: RunningServer) -> None:
    """An 8 MiB answer to a client that never reads: the server gives up after the timeout."""
    size = 8 * 1024 * 1024
    header = (
        b'{"inputs":[{"name":"INPUT0","shape":[1,%d],"datatype":"UINT8","parameters":{"binary_data_size":%d}}],'
        b'"parameters":{"binary_data_output":true}}' % (size, size)
    )
    request = (
        b"POST /v2/models/identity_uint8/infer HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n"
        b"Inference-Header-Content-Length: %d\r\n\r\n" % (len(header) + size, len(header))
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.http_port))
    sock.sendall(request + header + bytes(size))
    await asyncio.sleep(TIMEOUT_S + 1.5)  # never read: the answer stalls in the socket buffers
    assert await infer_ok(f"http://{server.http_url}") < TIMEOUT_S
    sock.settimeout(5)
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    assert received < size, "the whole answer arrived: the server waited for the stalled reader"


# ---- gRPC -----------------------------------------------------------------------------------------


IDLE_S = 0.5
WINDOWED = 'name: "windowed"\nmax_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000000 }\n'


@pytest.fixture
async def grpc_target(tmp_path: Path) -> AsyncIterator[str]:
    """A GrpcServer in this process with small limits: 6 calls, 3 streams per connection, 0.5 s idle."""
    save_model(build_mlp(), tmp_path, "mlp")
    save_model(build_mlp(), tmp_path, "windowed", config_pbtxt=WINDOWED)
    async with in_process_engine(
        tmp_path, grpc_address="127.0.0.1", grpc_port=0,
        grpc_max_concurrent_rpcs=6, grpc_max_streams_per_connection=3, grpc_stream_idle_timeout_secs=IDLE_S,
    ) as core:  # fmt: skip
        server = GrpcServer(core.engine, core.settings)
        await server.start()
        try:
            yield f"127.0.0.1:{server.port}"
        finally:
            await server.stop(1)


def infer_request(model: str = "mlp") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), dtype=np.float32).tobytes())
    return request


def unary(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def streams(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamMultiCallable:
    return channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )


async def test_idle_streams_end_after_the_idle_timeout(grpc_target: str) -> None:
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        idle = streams(channel)()
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(idle.read(), timeout=5)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "idle" in (ended.value.details() or "")
        assert IDLE_S * 0.8 < time.monotonic() - started < IDLE_S + 2

        # Waiting for an answer is not idle: a request held 1 s in the batching window is answered.
        busy = streams(channel)()
        await busy.write(infer_request("windowed"))
        answer = await asyncio.wait_for(busy.read(), timeout=5)
        assert not answer.error_message and answer.infer_response.outputs
        await busy.done_writing()
        assert await busy.read() == grpc.aio.EOF


async def test_idle_streams_cannot_take_every_call(grpc_target: str) -> None:
    async with grpc.aio.insecure_channel(grpc_target) as first, grpc.aio.insecure_channel(
        grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as second, grpc.aio.insecure_channel(grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]) as third:
        held = [streams(first)() for _ in range(3)]  # the first connection's whole stream allowance
        for call in held:
            await call.wait_for_connection()
        # Another connection is served at once.
        started = time.monotonic()
        await unary(second)(infer_request(), timeout=5)
        assert time.monotonic() - started < IDLE_S
        # The first connection's next call waits for a stream, which the idle timeout frees.
        await unary(first)(infer_request(), timeout=5)
        assert time.monotonic() - started >= IDLE_S * 0.8
        # Past the server's call limit a new call is refused at once, not queued.
        held = [streams(second)() for _ in range(3)] + [streams(third)() for _ in range(3)]
        for call in held:
            await call.wait_for_connection()
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unary(first)(infer_request(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < IDLE_S
        for call in held:
            call.cancel()

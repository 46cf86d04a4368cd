"""Graceful shutdown on SIGTERM/SIGINT, end to end against a real server process.

On the signal the server stops accepting (new connections are refused, so a readiness probe fails),
drains what it accepted — queued requests and running batches, over HTTP and gRPC — within
--exit-timeout-secs, and exits 0. Past the grace period it cancels what is left (answered 503) and
exits 1.
"""
from __future__ import annotations

import asyncio
import io
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.models import FIXED_WINDOW
from tests.serving import RunningServer, start_server

from runtime.examples import build_mlp, build_wide_mlp, save_model
from runtime.loadtest.inputs import binary_body
from runtime._pb import grpc_service_pb2 as pb

# Requests wait in the batching window (1.5 s) unless 32 rows come: at the signal they are queued.
WINDOWED = """\
name: "windowed"
max_batch_size: 32
dynamic_batching { max_queue_delay_microseconds: 1500000 }
""" + FIXED_WINDOW
# No batching: 256-row requests run one at a time, ~70 ms each: at the signal one runs, others queue.
HEAVY = """\
name: "heavy"
max_batch_size: 256
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    save_model(build_mlp(), repo, "windowed", config_pbtxt=WINDOWED)
    save_model(build_wide_mlp(), repo, "heavy", config_pbtxt=HEAVY)
    return repo


def start(repository: Path, work_dir: Path, grace_s: float) -> RunningServer:
    return start_server(repository, work_dir, ["--exit-timeout-secs", str(grace_s), "--allow-metrics", "false"])


def body(name: str, rows: int, width: int) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request body (JSON would be megabytes for the heavy model) and its headers."""
    payload, header_length = binary_body({name: np.random.default_rng(rows).random((rows, width), dtype=np.float32)})
    return payload, {"Inference-Header-Content-Length": str(header_length)}


async def http_infer(url: str, model: str, request: tuple[bytes, dict[str, str]]) -> int:
    payload, headers = request
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v2/models/{model}/infer", data=payload, headers=headers) as response:
            await response.read()
            return response.status


async def grpc_infer(target: str, model: str) -> grpc.StatusCode:
    x = np.ones((1, 16), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(x.tobytes())
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        try:
            response = await call(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            return error.code()
        assert response.outputs[0].name == "PROBABILITIES"
        return grpc.StatusCode.OK


async def probe(url: str) -> int | None:
    """Status of GET /v2/health/ready on a new connection; None when the connection is refused."""
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.get(f"{url}/v2/health/ready", timeout=aiohttp.ClientTimeout(total=2)) as response:
                return response.status
    except aiohttp.ClientConnectionError:
        return None


async def wait_for_exit(server: RunningServer, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while server.process.poll() is None:
        if time.monotonic() > deadline:
            server.process.kill()
            raise AssertionError(f"server still running {timeout_s}s after the signal:\n{server.log()[-3000:]}")
        await asyncio.sleep(0.05)
    return server.process.returncode


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_every_accepted_request(repository: Path, tmp_path: Path, signum: int) -> None:
    server = start(repository, tmp_path, grace_s=20)
    url = f"http://{server.http_url}"
    try:
        assert await probe(url) == 200
        in_flight = [
            *(asyncio.ensure_future(http_infer(url, "windowed", body("INPUT", 1, 16))) for _ in range(8)),
            *(asyncio.ensure_future(http_infer(url, "heavy", body("INPUT", 256, 512))) for _ in range(4)),
            *(asyncio.ensure_future(grpc_infer(server.grpc_url, "windowed")) for _ in range(4)),
        ]
        await asyncio.sleep(0.7)  # every request sent and queued; the window holds them for 1.5 s
        assert not any(task.done() for task in in_flight[:8]), "the windowed requests finished too early"
        signalled = time.monotonic()
        server.process.send_signal(signum)

        # Not ready at once: new connections are refused (or answered 503) while the drain goes on.
        while (status := await probe(url)) == 200:
            assert time.monotonic() - signalled < 5, "still ready 5 s after the signal"
            await asyncio.sleep(0.02)
        assert status in (None, 503)
        assert await grpc_infer(server.grpc_url, "windowed") == grpc.StatusCode.UNAVAILABLE
        assert server.process.poll() is None, "exited before the queued requests were answered"

        results = await asyncio.gather(*in_flight)
        assert results[:12] == [200] * 12, results
        assert results[12:] == [grpc.StatusCode.OK] * 4, results
        assert await wait_for_exit(server, timeout_s=15) == 0
        assert "stopped cleanly" in server.log()
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def open_stream(channel: grpc.aio.Channel) -> Any:
    """ModelStreamInfer on a raw channel: requests go as serialized bytes, replies come back parsed."""
    return channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )


def ones_request(model: str, width: int) -> Any:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT", datatype="FP32", shape=[1, width])
    request.raw_input_contents.append(np.ones((1, width), dtype=np.float32).tobytes())
    return request


async def test_idle_stream_does_not_hold_the_shutdown(repository: Path, tmp_path: Path) -> None:
    """An open ModelStreamInfer with nothing pending ends (UNAVAILABLE) at the signal, not after the grace."""
    server = start(repository, tmp_path, grace_s=20)
    try:
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            stream = open_stream(channel)
            call = stream()
            request = ones_request("heavy", 512)
            await call.write(request.SerializeToString())
            first = await call.read()
            assert not first.error_message and first.infer_response.outputs
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(call.read(), timeout=10)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (ended.value.details() or "")
        assert await wait_for_exit(server, timeout_s=10) == 0
        assert time.monotonic() - signalled < 8, "the idle stream held the shutdown"
    finally:
        server.stop()


async def test_grace_period_over_cancels_and_exits_1(repository: Path, tmp_path: Path) -> None:
    """What cannot finish within --exit-timeout-secs is cancelled (answered 503), and the exit status says so."""
    slow = """\
name: "windowed"
max_batch_size: 32
dynamic_batching { max_queue_delay_microseconds: 6000000 }
""" + FIXED_WINDOW
    repo = tmp_path / "repo"
    save_model(build_mlp(), repo, "windowed", config_pbtxt=slow)
    server = start(repo, tmp_path / "work", grace_s=1)
    url = f"http://{server.http_url}"
    try:
        request = asyncio.ensure_future(http_infer(url, "windowed", body("INPUT", 1, 16)))
        await asyncio.sleep(0.5)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(request, timeout=10) == 503
        assert await wait_for_exit(server, timeout_s=10) == 1
        assert time.monotonic() - signalled < 5
        assert "grace period (1s) over" in server.log()
        assert "Exception in ASGI application" not in server.log()
    finally:
        server.stop()


# ---- exit within --exit-timeout-secs, whatever the clients do --------------------------------

# Exit must come within the grace period plus this: signal delivery, the last statuses, the exit.
SLACK_S = 2.0


def build_slow(layers: int, width: int = 1024) -> onnx.ModelProto:
    """OUTPUT = INPUT @ I @ I ... (`layers` MatMuls): a 1024-row request keeps one core busy for
    about layers / 120 seconds inside onnxruntime, where no cancellation reaches it."""
    weights = numpy_helper.from_array(np.eye(width, dtype=np.float32), "W")
    nodes, previous = [], "INPUT"
    for index in range(layers):
        output = "OUTPUT" if index == layers - 1 else f"h{index}"
        nodes.append(helper.make_node("MatMul", [previous, "W"], [output]))
        previous = output
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", width])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def hostile_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("hostile")
    save_model(build_mlp(), repo, "quick", config_pbtxt='name: "quick"\nmax_batch_size: 32\n')
    save_model(build_slow(1800), repo, "slow", config_pbtxt='name: "slow"\nmax_batch_size: 1024\n')
    return repo


def start_hostile(repository: Path, work_dir: Path, grace_s: float) -> RunningServer:
    return start_server(
        repository,
        work_dir,
        ["--exit-timeout-secs", str(grace_s), "--allow-metrics", "false", "--max-request-bytes", str(64 << 20)],
    )


async def wait_for_log(server: RunningServer, fragment: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while fragment not in server.log():
        assert time.monotonic() < deadline, f"{fragment!r} never logged:\n{server.log()[-3000:]}"
        await asyncio.sleep(0.02)


async def open_idle_http(port: int) -> asyncio.StreamWriter:
    """A keep-alive connection that was answered once and then sends nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    return writer


async def open_half_request(port: int, body: bool) -> asyncio.StreamWriter:
    """A client that stops sending part-way through its request (headers, or body)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    if body:
        writer.write(b"POST /v2/models/quick/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inputs\": [")
    else:
        writer.write(b"POST /v2/models/quick/infer HTTP/1.1\r\nHost: x\r\nContent-")
    await writer.drain()
    return writer


async def test_idle_and_stalled_clients_do_not_delay_the_exit(hostile_repository: Path, tmp_path: Path) -> None:
    """Idle keep-alive HTTP, an idle gRPC stream and channel, half-sent requests, a stream whose
    answers are never read: the process exits within the grace period (plus the slack)."""
    server = start_hostile(hostile_repository, tmp_path, grace_s=3)
    writers = []
    try:
        writers.append(await open_idle_http(server.http_port))
        writers.append(await open_half_request(server.http_port, body=False))
        writers.append(await open_half_request(server.http_port, body=True))
        async with grpc.aio.insecure_channel(server.grpc_url) as idle_channel, grpc.aio.insecure_channel(
            server.grpc_url
        ) as stream_channel:
            await idle_channel.channel_ready()
            streams = open_stream(stream_channel)
            call = streams()
            request = ones_request("quick", 16)
            await call.write(request.SerializeToString())
            assert not (await call.read()).error_message
            unread = streams()
            for _ in range(200):
                await asyncio.wait_for(unread.write(request.SerializeToString()), timeout=10)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            status = await wait_for_exit(server, timeout_s=15)
            took = time.monotonic() - signalled
        assert took < 3 + SLACK_S, f"exit took {took:.1f}s with a 3 s grace period:\n{server.log()[-2000:]}"
        assert status in (0, 1)
    finally:
        for writer in writers:
            writer.close()
        server.stop()


async def test_idle_connections_do_not_hold_a_long_grace_period(hostile_repository: Path, tmp_path: Path) -> None:
    """With nothing accepted unfinished, idle keep-alive HTTP connections, an idle gRPC channel and
    an idle stream do not make the process wait for its 20 s grace period: it exits at once, 0."""
    server = start_hostile(hostile_repository, tmp_path, grace_s=20)
    writers = [await open_idle_http(server.http_port) for _ in range(3)]
    try:
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            await channel.channel_ready()
            call = open_stream(channel)()
            request = ones_request("quick", 16)
            await call.write(request.SerializeToString())
            assert not (await call.read()).error_message
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            status = await wait_for_exit(server, timeout_s=25)
            took = time.monotonic() - signalled
        assert took < SLACK_S, f"exit took {took:.1f}s with only idle clients:\n{server.log()[-2000:]}"
        assert status == 0
    finally:
        for writer in writers:
            writer.close()
        server.stop()


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_slow_model_in_flight_exits_within_the_grace_period(
    hostile_repository: Path, tmp_path: Path, transport: str
) -> None:
    """A batch that runs inside onnxruntime for ~15 s cannot be interrupted: at the end of a 2 s
    grace period its caller is answered (503 / UNAVAILABLE) and the process exits, exit status 1,
    instead of living until the batch ends (or aborting in the interpreter's teardown)."""
    server = start_hostile(hostile_repository, tmp_path, grace_s=2)
    url = f"http://{server.http_url}"
    x = np.ones((1024, 1024), dtype=np.float32)
    try:
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            if transport == "http":
                payload, headers = body("INPUT", 1024, 1024)

                async def post_large() -> object:
                    # A stream, not bytes: aiohttp warns (an error here) about sending 4 MB of bytes at once.
                    async with aiohttp.ClientSession() as session:
                        async with session.post(
                            f"{url}/v2/models/slow/infer", data=io.BytesIO(payload), headers=headers
                        ) as reply:
                            await reply.read()
                            return reply.status

                call = asyncio.ensure_future(post_large())
                refused: object = 503
            else:
                request = pb.ModelInferRequest(model_name="slow")
                request.inputs.add(name="INPUT", datatype="FP32", shape=[1024, 1024])
                request.raw_input_contents.append(x.tobytes())
                infer = channel.unary_unary(
                    "/inference.GRPCInferenceService/ModelInfer",
                    request_serializer=pb.ModelInferRequest.SerializeToString,
                    response_deserializer=pb.ModelInferResponse.FromString,
                )

                async def grpc_call() -> object:
                    try:
                        await infer(request, timeout=60)
                    except grpc.aio.AioRpcError as error:
                        return error.code()
                    return grpc.StatusCode.OK

                call = asyncio.ensure_future(grpc_call())
                refused = grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(1.0)  # the request is in and its batch runs
            assert not call.done()
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(call, timeout=20) == refused
            status = await wait_for_exit(server, timeout_s=20)
            took = time.monotonic() - signalled
        assert took < 2 + SLACK_S, f"exit took {took:.1f}s with a 2 s grace period:\n{server.log()[-2000:]}"
        assert status == 1, server.log()[-2000:]
        assert "grace period (2s) over" in server.log()
    finally:
        server.stop()


async def _client_loop(
    target: str, model: str, until: asyncio.Event, codes: list[grpc.StatusCode], shape: tuple[int, int] = (1, 16)
) -> None:
    """Unary calls one after another on one channel until `until` is set (bounded by the test)."""
    x = np.ones(shape, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT", datatype="FP32", shape=list(shape))
    request.raw_input_contents.append(x.tobytes())
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        while not until.is_set():
            try:
                await call(request, timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    await asyncio.sleep(0.005)  # as a retrying client would, briefly


async def test_grpc_calls_during_the_drain_are_answered_or_unavailable(hostile_repository: Path, tmp_path: Path) -> None:
    """Calls keep coming while the server drains: each gets a real answer or UNAVAILABLE (which
    clients retry), never CANCELLED; calls still held when the grace is over get UNAVAILABLE too.
    Repeated, because the bad outcomes are races around the moment the server stops."""
    for attempt in range(3):
        server = start_hostile(hostile_repository, tmp_path / str(attempt), grace_s=1.5)
        try:
            until = asyncio.Event()
            codes: list[grpc.StatusCode] = []
            held_codes: list[grpc.StatusCode] = []
            loops = [asyncio.ensure_future(_client_loop(server.grpc_url, "quick", until, codes)) for _ in range(6)]
            # Accepted, running inside onnxruntime when the grace period ends.
            held = [asyncio.ensure_future(_client_loop(server.grpc_url, "slow", until, held_codes, (1024, 1024)))]
            while len(codes) < 50:  # traffic is flowing before the signal
                await asyncio.sleep(0.01)
            server.process.send_signal(signal.SIGTERM)
            status = await wait_for_exit(server, timeout_s=15)
            until.set()
            await asyncio.wait_for(asyncio.gather(*loops, *held), timeout=40)
            seen = set(codes) | set(held_codes)
            assert seen <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, (
                f"attempt {attempt}: {[code for code in codes + held_codes if code not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)]}"
            )
            assert grpc.StatusCode.UNAVAILABLE in codes
            assert held_codes and set(held_codes) == {grpc.StatusCode.UNAVAILABLE}, held_codes
            assert status == 1, server.log()[-2000:]  # the held call did not finish
        finally:
            server.stop()

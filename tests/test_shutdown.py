"""Graceful shutdown on SIGTERM/SIGINT, end to end against a real server process.

On the signal the server stops accepting (new connections are refused, so a readiness probe fails),
drains what it accepted — queued requests and running batches, over HTTP and gRPC — within
--exit-timeout-secs, and exits 0. Past the grace period it cancels what is left (answered 503) and
exits 1.
"""
from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from serving import RunningServer, start_server

from runtime.examples import build_mlp, build_wide_mlp, save_model
from runtime.loadtest.inputs import binary_body
from runtime.server._pb import grpc_service_pb2 as pb

# Requests wait in the batching window (1.5 s) unless 32 rows come: at the signal they are queued.
WINDOWED = """\
name: "windowed"
max_batch_size: 32
dynamic_batching { max_queue_delay_microseconds: 1500000 }
"""
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


async def test_idle_stream_does_not_hold_the_shutdown(repository: Path, tmp_path: Path) -> None:
    """An open ModelStreamInfer with nothing pending ends (UNAVAILABLE) at the signal, not after the grace."""
    server = start(repository, tmp_path, grace_s=20)
    try:
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            stream = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                request_serializer=lambda raw: raw,
                response_deserializer=pb.ModelStreamInferResponse.FromString,
            )
            call = stream()
            request = pb.ModelInferRequest(model_name="heavy")
            request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 512])
            request.raw_input_contents.append(np.ones((1, 512), dtype=np.float32).tobytes())
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
"""
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

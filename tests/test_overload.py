"""Sustained overload: every request is answered — served, or refused fast with 503 / UNAVAILABLE —, memory
stays flat, served requests wait no longer than the bounded queue allows, and the server recovers at
once. Loopback only, bounded in time (a few seconds of load) and count.

The model takes ~25 ms a request (more on a busy machine) and runs one at a time (no batching); the
queue holds 4. Over HTTP requests arrive at 4x the rate the server can serve (measured first), open
loop, for 4 s; over gRPC 48 clients send back to back for 2 s.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from tests.serving import RunningServer, running_server

from runtime.examples import build_wide_mlp, save_model
from runtime.loadtest.inputs import binary_body, grpc_request_bytes

QUEUE = 4
CONCURRENCY = 48  # gRPC clients
LOAD_S = 4.0
ROWS = 64
FACTOR = 4
HEAVY = "name: \"heavy\"\nmax_batch_size: 64\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    save_model(build_wide_mlp(), repo, "heavy", config_pbtxt=HEAVY)
    args = ["--default-max-queue-size", str(QUEUE), "--allow-metrics", "false"]
    with running_server(repo, tmp_path_factory.mktemp("server"), args) as running:
        yield running


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


SAMPLE = {"INPUT": np.random.default_rng(0).random((ROWS, 512), dtype=np.float32)}
BODY, HEADER_LENGTH = binary_body(SAMPLE)
HEADERS = {"Inference-Header-Content-Length": str(HEADER_LENGTH)}


async def one(session: aiohttp.ClientSession, url: str) -> tuple[int, float, bytes]:
    started = time.monotonic()
    async with session.post(f"{url}/v2/models/heavy/infer", data=BODY, headers=HEADERS) as response:
        body = await response.read()
        return response.status, time.monotonic() - started, body


async def test_overload_is_served_or_refused_fast_and_recovers(server: RunningServer) -> None:
    url = f"http://{server.http_url}"
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        for _ in range(3):
            await one(session, url)  # warm up
        alone = statistics.median([(await one(session, url))[1] for _ in range(8)])
        baseline_rss = rss_bytes(server.process.pid)

        peak_rss = baseline_rss
        interval = alone / FACTOR  # the server serves about 1 / alone requests a second
        started = time.monotonic()
        pending: list[asyncio.Task[tuple[int, float, bytes]]] = []

        async def sample_memory() -> None:
            nonlocal peak_rss
            while time.monotonic() < started + LOAD_S + 1:
                peak_rss = max(peak_rss, rss_bytes(server.process.pid))
                await asyncio.sleep(0.1)

        sampler = asyncio.ensure_future(sample_memory())
        for index in range(int(LOAD_S / interval)):
            await asyncio.sleep(max(0.0, started + index * interval - time.monotonic()))
            pending.append(asyncio.ensure_future(one(session, url)))
        offered_s = time.monotonic() - started
        results = await asyncio.gather(*pending)
        await sampler
        assert len(pending) / offered_s > FACTOR * 0.7 / alone, "the client could not offer the load"

        statuses = {status for status, _, _ in results}
        served = [latency for status, latency, _ in results if status == 200]
        refused = [latency for status, latency, body in results if status == 503]
        assert statuses <= {200, 503}, statuses
        assert served and len(refused) > len(served), (len(served), len(refused))
        assert all(b"queue is full" in body for status, _, body in results if status == 503)
        # Refusals are immediate; served requests waited at most for the bounded queue ahead of them.
        assert p99(refused) < 0.5, p99(refused)
        budget = (QUEUE + 2) * alone * 2 + 0.25
        assert p99(served) < budget, (p99(served), budget, alone)
        assert peak_rss - baseline_rss < 150 * 1024 * 1024, (baseline_rss, peak_rss)

        # Load gone: served at once, as fast as before.
        after = [await one(session, url) for _ in range(5)]
        assert [status for status, _, _ in after] == [200] * 5
        assert max(latency for _, latency, _ in after) < alone * 5 + 0.2


async def test_grpc_overload_is_ok_or_unavailable(server: RunningServer) -> None:
    request = grpc_request_bytes("heavy", "", SAMPLE)
    codes: list[grpc.StatusCode] = []
    stop_at = time.monotonic() + 2.0
    async with grpc.aio.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def client() -> None:
            while time.monotonic() < stop_at:
                try:
                    await infer(request, timeout=30)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
                    assert "queue is full" in (error.details() or "")

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
        await infer(request, timeout=5)
    assert server.process.poll() is None

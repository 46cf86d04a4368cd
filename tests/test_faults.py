"""A model whose execution raises fails only the requests it ran on; the process and other models serve on.

`failing` (tests.models.build_failing) raises in onnxruntime when any value is >= 100. Without
dynamic batching each request runs alone, so exactly the bad requests fail. With dynamic batching a
bad request fails the batch it is in (every request of a failed batch gets the error), and only that
batch: the next batch runs as usual.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import grpc
import numpy as np
import pytest
from tests.serving import RunningServer, running_server

from runtime.examples import save_model, write_example_repository
from tests.models import FAILING_INSTANCE_GROUP, build_failing
from runtime._pb import grpc_service_pb2 as pb

ALONE = """\
name: "failing"
max_batch_size: 8
"""
BATCHED = """\
name: "failing_batched"
max_batch_size: 64
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = write_example_repository(tmp_path_factory.mktemp("repo"))
    save_model(build_failing(), repo, "failing", config_pbtxt=ALONE + FAILING_INSTANCE_GROUP)
    save_model(build_failing(), repo, "failing_batched", config_pbtxt=BATCHED + FAILING_INSTANCE_GROUP)
    with running_server(repo, tmp_path_factory.mktemp("server")) as running:
        yield running


def values(index: int, bad: bool) -> np.ndarray:
    row = np.array([[index % 100, 1, 2, 3]], dtype=np.float32)
    if bad:
        row[0, 2] = 100 + index  # out of the model's table: onnxruntime raises
    return row


def is_bad(index: int) -> bool:
    return index % 3 == 0


async def http_infer(session: aiohttp.ClientSession, url: str, model: str, x: np.ndarray) -> tuple[int, dict]:
    body = {"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    async with session.post(f"{url}/v2/models/{model}/infer", json=body) as response:
        return response.status, await response.json()


async def test_http_only_the_bad_requests_fail(server: RunningServer) -> None:
    url = f"http://{server.http_url}"
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(http_infer(session, url, "failing", values(i, is_bad(i))) for i in range(45)))
        for index, (status, doc) in enumerate(results):
            if is_bad(index):
                assert status == 500, (index, doc)
                assert "execution failed" in doc["error"] and "out of data bounds" in doc["error"], doc
                assert "model 'failing' version 1" in doc["error"], doc
            else:
                assert status == 200, (index, doc)
                expected = np.floor(values(index, False)) ** 2
                assert doc["outputs"][0]["data"] == expected.ravel().tolist()
        # The process, the model and the other models are all still serving.
        assert server.process.poll() is None
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/failing/ready", "/v2/models/mlp/ready"):
            async with session.get(url + path) as response:
                assert response.status == 200, path
        status, doc = await http_infer(session, url, "failing", values(7, False))
        assert status == 200
        mlp = {"inputs": [{"name": "INPUT", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
        async with session.post(f"{url}/v2/models/mlp/infer", json=mlp) as response:
            assert response.status == 200


def grpc_request(model: str, x: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


async def test_grpc_unary_and_stream_only_the_bad_requests_fail(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        async def one(index: int) -> grpc.StatusCode:
            try:
                await infer(grpc_request("failing", values(index, is_bad(index))), timeout=30)
            except grpc.aio.AioRpcError as error:
                assert "execution failed" in (error.details() or "")
                return error.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(one(i) for i in range(30)))
        for index, code in enumerate(codes):
            assert code == (grpc.StatusCode.INTERNAL if is_bad(index) else grpc.StatusCode.OK), index

        # A stream carries each failure as an error message and goes on answering.
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        requests = [grpc_request("failing", values(i, is_bad(i))) for i in range(12)]
        for index, request in enumerate(requests):
            request.id = str(index)
        answers = [answer async for answer in stream(iter(requests), timeout=30)]
        assert len(answers) == 12
        errors = [a for a in answers if a.error_message]
        assert len(errors) == sum(is_bad(i) for i in range(12))
        assert all("execution failed" in a.error_message for a in errors)
        assert sorted(int(a.infer_response.id) for a in answers if not a.error_message) == [
            i for i in range(12) if not is_bad(i)
        ]
    assert server.process.poll() is None


async def test_a_failed_batch_fails_only_itself(server: RunningServer) -> None:
    """With dynamic batching, a bad request takes its batch down with it, and nothing more."""
    url = f"http://{server.http_url}"
    async with aiohttp.ClientSession() as session:
        together = await asyncio.gather(
            *(http_infer(session, url, "failing_batched", values(i, i == 0)) for i in range(6))
        )
        assert together[0][0] == 500
        assert all(status in (200, 500) for status, _ in together)
        after = await asyncio.gather(*(http_infer(session, url, "failing_batched", values(i, False)) for i in range(6)))
        assert [status for status, _ in after] == [200] * 6

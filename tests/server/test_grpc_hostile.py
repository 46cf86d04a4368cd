"""gRPC driven as a hostile or careless client would: streams that are never read, and requests
that are wrong in every way a protobuf allows. Each mistake is the client's: INVALID_ARGUMENT (or
NOT_FOUND) naming what was wrong, never INTERNAL or UNKNOWN, and the server goes on serving.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from runtime.examples import save_model, write_example_repository
from tests.models import build_identity
from runtime._pb import grpc_service_pb2 as pb
from tests.serving import RunningServer, running_server

# A stream request/answer of 64 KiB: the gRPC and socket buffers outside the server's control hold
# a few hundred of them, while a server that reads without bound holds thousands within seconds.
WIDTH = 16 * 1024
GREEDY_SECONDS = 6.0
GREEDY_CAP = 3000  # stop sending here: an unbounded server would have ~400 MB queued by then


@pytest.fixture(scope="module", params=[1, 3], ids=["workers1", "workers3"])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The hostile clients against one process and against --workers 3 (supervisor, engine, 3 front ends)."""
    repo = write_example_repository(tmp_path_factory.mktemp("repo"))
    save_model(build_identity("FP32"), repo, "identity_fp32")
    with running_server(
        repo, tmp_path_factory.mktemp("server"), ["--allow-metrics", "false"], workers=request.param
    ) as running:
        yield running


def rss_bytes(server: RunningServer) -> int:
    """Resident memory of all the server's processes together."""
    total = 0
    for pid in server.pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def identity_request(rows: int = 1, width: int = WIDTH, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity_fp32", id=request_id)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[rows, width])
    request.raw_input_contents.append(np.ones((rows, width), dtype=np.float32).tobytes())
    return request


def simple_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(range(16))
    return request


def stream_method(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamMultiCallable:
    return channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )


def unary(channel: grpc.Channel, raw: bytes) -> pb.ModelInferResponse:
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda payload: payload,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    return call(raw, timeout=30)


async def test_stream_that_is_never_read_is_bounded(server: RunningServer) -> None:
    """The client writes as fast as the server takes requests and reads nothing: the server stops
    taking them after a bounded number (its writes are stuck), its memory stays flat, and other
    clients are served meanwhile; when the stream is cancelled everything is released."""
    raw = identity_request().SerializeToString()
    async with grpc.aio.insecure_channel(server.grpc_url) as warm:
        await warm.channel_ready()
    before = rss_bytes(server)
    accepted = 0
    async with grpc.aio.insecure_channel(server.grpc_url) as greedy:
        call = stream_method(greedy)()
        began = time.monotonic()
        ends = began + GREEDY_SECONDS
        while accepted < GREEDY_CAP and (left := ends - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(call.write(raw), timeout=left)
            except TimeoutError:
                break  # the server stopped taking requests: what this test wants to see
            accepted += 1
        elapsed = time.monotonic() - began
        grown = rss_bytes(server) - before
        # Someone else is served while the greedy stream is stalled.
        with grpc.insecure_channel(server.grpc_url) as other:
            answer = unary(other, simple_request().SerializeToString())
        assert answer.outputs[0].name in ("OUTPUT0", "OUTPUT1")
        call.cancel()
    print(f"greedy stream: {accepted} requests accepted in {elapsed:.1f}s; server RSS grew {grown / 2**20:.0f} MiB")
    assert accepted < GREEDY_CAP // 2, f"{accepted} requests taken from a stream that reads nothing"
    assert grown < 120 * 2**20, f"server RSS grew {grown / 2**20:.0f} MiB for one unread stream"

    # Released: a fresh stream is answered at once, and memory does not keep climbing.
    async with grpc.aio.insecure_channel(server.grpc_url) as channel:
        call = stream_method(channel)()
        await call.write(identity_request(width=4, request_id="after").SerializeToString())
        reply = await asyncio.wait_for(call.read(), timeout=10)
        assert not reply.error_message and reply.infer_response.id == "after"
        await call.done_writing()
    assert rss_bytes(server) - before < 160 * 2**20


async def test_stream_reader_that_reads_slowly_gets_every_answer(server: RunningServer) -> None:
    """Back-pressure loses nothing: 300 requests (more than a stream may hold pending), read late,
    are each answered once, in some order, with their ids."""
    async with grpc.aio.insecure_channel(server.grpc_url) as channel:
        call = stream_method(channel)()

        async def send() -> None:
            for index in range(300):
                await call.write(identity_request(width=256, request_id=str(index)).SerializeToString())
            await call.done_writing()

        sender = asyncio.ensure_future(send())
        await asyncio.sleep(0.5)  # let the stream fill up before anything is read
        ids = []
        async for reply in call:
            assert not reply.error_message, reply.error_message
            ids.append(reply.infer_response.id)
        await sender
    assert sorted(ids, key=int) == [str(index) for index in range(300)]


async def test_stream_errors_carry_the_request_id(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_url) as channel:
        call = stream_method(channel)()
        bad = identity_request(width=4, request_id="req-7")
        bad.model_name = "no_such_model"
        await call.write(bad.SerializeToString())
        wrong = identity_request(width=4, request_id="req-8")
        wrong.inputs[0].shape[:] = [1, 5]  # data for 4 values
        await call.write(wrong.SerializeToString())
        await call.write(b"\xff\xff\xff")  # not a protobuf: nothing to echo, but still an answer
        await call.done_writing()
        replies = [reply async for reply in call]
    by_id = {reply.infer_response.id: reply for reply in replies}
    assert set(by_id) == {"req-7", "req-8", ""}, replies
    assert "no_such_model" in by_id["req-7"].error_message
    assert by_id["req-7"].infer_response.model_name == "no_such_model"
    assert "INPUT0" in by_id["req-8"].error_message
    assert "malformed" in by_id[""].error_message


# ---- client mistakes over unary ModelInfer ----------------------------------------------------


def with_two_content_fields() -> pb.ModelInferRequest:
    request = simple_request()
    request.inputs[0].contents.fp32_contents.extend([1.0] * 16)
    return request


def with_wrong_content_field() -> pb.ModelInferRequest:
    request = simple_request()
    del request.inputs[1].contents.int_contents[:]
    request.inputs[1].contents.fp32_contents.extend([1.0] * 16)
    return request


def with_shared_memory_output() -> pb.ModelInferRequest:
    request = simple_request()
    output = request.outputs.add(name="OUTPUT0")
    output.parameters["shared_memory_region"].string_param = "region0"
    output.parameters["shared_memory_byte_size"].int64_param = 64
    return request


def with_shared_memory_input() -> pb.ModelInferRequest:
    request = simple_request()
    request.inputs[0].parameters["shared_memory_region"].string_param = "region0"
    return request


def with_classification(kind: str) -> pb.ModelInferRequest:
    request = simple_request()
    param = request.outputs.add(name="OUTPUT0").parameters["classification"]
    if kind == "bool":
        param.bool_param = True
    elif kind == "string":
        param.string_param = "three"
    elif kind == "negative":
        param.int64_param = -2
    else:
        param.double_param = 2.5
    return request


def with_repeated_output() -> pb.ModelInferRequest:
    request = simple_request()
    request.outputs.add(name="OUTPUT0")
    request.outputs.add(name="OUTPUT0")
    return request


def with_repeated_input() -> pb.ModelInferRequest:
    request = simple_request()
    request.inputs.append(request.inputs[0])
    return request


def with_huge_shape() -> pb.ModelInferRequest:
    request = simple_request()
    request.inputs[0].shape[:] = [2**62, 2**62]
    return request


def with_many_dims() -> pb.ModelInferRequest:
    request = simple_request()
    request.inputs[0].shape[:] = [1] * 65
    return request


def with_unknown_datatype() -> pb.ModelInferRequest:
    request = simple_request()
    request.inputs[0].datatype = "COMPLEX128"
    return request


def with_count_mismatch() -> pb.ModelInferRequest:
    request = simple_request()
    request.inputs[0].contents.int_contents.append(99)
    return request


def with_raw_count_mismatch() -> pb.ModelInferRequest:
    request = simple_request()
    for tensor in request.inputs:
        tensor.ClearField("contents")
    request.raw_input_contents.append(np.zeros(16, dtype=np.int32).tobytes())
    return request


def with_raw_and_contents() -> pb.ModelInferRequest:
    request = simple_request()
    request.raw_input_contents.extend([np.zeros(16, dtype=np.int32).tobytes()] * 2)
    return request


def with_priority(kind: str) -> pb.ModelInferRequest:
    request = simple_request()
    if kind == "string":
        request.parameters["priority"].string_param = "high"
    else:
        request.parameters["timeout"].double_param = 1.5
    return request


def with_long_name() -> pb.ModelInferRequest:
    request = simple_request()
    request.inputs[0].name = "X" * 100_000
    return request


# (request bytes, expected status, fragments every message must contain)
MISTAKES: dict[str, tuple[bytes, grpc.StatusCode, tuple[str, ...]]] = {
    "garbage bytes": (b"\x0a\xff\xff\xff\xff\x0f", grpc.StatusCode.INVALID_ARGUMENT, ("malformed",)),
    "two content fields": (
        with_two_content_fields().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("'INPUT0'", "int_contents", "fp32_contents"),
    ),
    "wrong content field": (
        with_wrong_content_field().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("'INPUT1'", "fp32_contents", "int_contents"),
    ),
    "shared memory output": (
        with_shared_memory_output().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("'OUTPUT0'", "shared-memory region 'region0'"),
    ),
    "shared memory input": (
        with_shared_memory_input().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("'INPUT0'", "'shared_memory_region' needs 'shared_memory_byte_size'"),
    ),
    **{
        f"classification {kind}": (
            with_classification(kind).SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("'OUTPUT0'", "classification"),
        )
        for kind in ("bool", "string", "negative", "double")
    },
    "repeated output": (with_repeated_output().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("'OUTPUT0'", "twice")),
    "repeated input": (with_repeated_input().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("'INPUT0'", "twice")),
    "huge shape": (with_huge_shape().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("INPUT0", "too large")),
    "65 dims": (with_many_dims().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("INPUT0", "64")),
    "unknown datatype": (with_unknown_datatype().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("INPUT0", "COMPLEX128")),
    "count mismatch": (with_count_mismatch().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("INPUT0", "17 values")),
    "raw count mismatch": (with_raw_count_mismatch().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("raw_input_contents",)),
    "raw and contents": (with_raw_and_contents().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("INPUT0", "raw_input_contents")),
    "priority string": (with_priority("string").SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("priority",)),
    "timeout double": (with_priority("double").SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("timeout",)),
    "unknown model": (
        pb.ModelInferRequest(model_name="no_such_model").SerializeToString(), grpc.StatusCode.NOT_FOUND, ("no_such_model",),
    ),
    "long model name": (
        pb.ModelInferRequest(model_name="m" * 100_000).SerializeToString(), grpc.StatusCode.NOT_FOUND, ("mmmm", "more characters"),
    ),
    "long input name": (with_long_name().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, ("XXXX", "more characters")),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_client_mistake_is_a_client_error(server: RunningServer, mistake: str) -> None:
    raw, code, fragments = MISTAKES[mistake]
    with grpc.insecure_channel(server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            unary(channel, raw)
        error: grpc.Call = caught.value  # type: ignore[assignment]
        details = error.details() or ""
        assert error.code() == code, f"{error.code()}: {details}"
        for fragment in fragments:
            assert fragment in details, f"{fragment!r} not in {details!r}"
        # Client text is quoted with errors.quoted (64 characters), not echoed up to the message cap.
        assert len(details) < 1000, f"the error echoes {len(details)} characters"
        # The server goes on serving the same connection.
        answer = unary(channel, simple_request().SerializeToString())
        assert {output.name for output in answer.outputs} == {"OUTPUT0", "OUTPUT1"}

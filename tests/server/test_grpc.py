"""The gRPC endpoint, driven by the official tritonclient.grpc against a real server."""
from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.serving import RunningServer
from tests.server.conftest import MAX_REQUEST_BYTES


@pytest.fixture(scope="module")
def client(server: RunningServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


def simple_inputs() -> tuple[list[grpcclient.InferInput], np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, a, b


def assert_still_serving(client: grpcclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)


def expect_error(call, code: str, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as caught:
        call()
    message = caught.value.message()
    assert caught.value.status() == code, f"{caught.value.status()}: {message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_standard_grpc_health(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_stream_infer(client: grpcclient.InferenceServerClient) -> None:
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for value in range(5):
            data = np.full((1, 4), value, dtype=np.float32)
            tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
            tensor.set_data_from_numpy(data)
            client.async_stream_infer("identity_fp32", [tensor], request_id=str(value))
        bad = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
        bad.set_data_from_numpy(np.zeros((1, 4), dtype=np.int32))
        client.async_stream_infer("identity_fp32", [bad], request_id="bad")
        seen = {}
        errors = []
        for _ in range(6):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                seen[result.get_response().id] = result.as_numpy("OUTPUT0")  # type: ignore[attr-defined]
    finally:
        client.stop_stream()
    assert sorted(seen) == ["0", "1", "2", "3", "4"]
    for key, array in seen.items():
        np.testing.assert_array_equal(array, np.full((1, 4), float(key), dtype=np.float32))
    assert len(errors) == 1 and "INT32" in errors[0]


def test_raw_size_not_matching_shape(server: RunningServer) -> None:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(bytes(12))
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "12 bytes" in caught.value.details()


def test_typed_contents(server: RunningServer) -> None:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="identity_int16")
    tensor = request.inputs.add(name="INPUT0", datatype="INT16", shape=[1, 3])
    tensor.contents.int_contents.extend([-5, 0, 300])
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        reply = call(request, timeout=10)
        assert np.frombuffer(reply.raw_output_contents[0], dtype=np.int16).tolist() == [-5, 0, 300]
        tensor.contents.int_contents[2] = 70000  # does not fit INT16
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "out of range" in caught.value.details()


def test_malformed_protobuf(server: RunningServer, client: grpcclient.InferenceServerClient) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInferRequest" in caught.value.details()
    assert_still_serving(client)


def test_oversized_message(server: RunningServer, client: grpcclient.InferenceServerClient) -> None:
    data = np.zeros((1, MAX_REQUEST_BYTES // 4 + 16), dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    expect_error(lambda: client.infer("identity_fp32", [tensor]), "StatusCode.RESOURCE_EXHAUSTED")
    assert_still_serving(client)



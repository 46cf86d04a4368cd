"""The gRPC endpoint, driven by the official tritonclient.grpc against a real server."""
from __future__ import annotations

import queue
from functools import partial

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.serving import RunningServer
from tests.server.conftest import DATATYPES, MAX_REQUEST_BYTES, identity_name
from tests.server.sample_data import sample_array


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


def test_health(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


def test_standard_grpc_health(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "model-runtime"
    assert "binary_tensor_data" in metadata.extensions


def test_model_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("simple")
    assert metadata.name == "simple"
    assert list(metadata.versions) == ["1"]
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]


def test_model_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("simple")
    assert client.is_model_ready("versioned", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("corrupt")


def test_model_config(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("mlp").config
    assert config.name == "mlp"
    assert config.max_batch_size == 32
    assert config.input[0].name == "INPUT"
    assert list(config.input[0].dims) == [16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    as_json = client.get_model_config("simple", as_json=True)["config"]
    assert as_json["max_batch_size"] == 8


def test_infer_simple(client: grpcclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs()
    result = client.infer("simple", inputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.model_name == "simple" and response.model_version == "1" and response.id == "r1"


def test_requested_output_subset(client: grpcclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs()
    result = client.infer("simple", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    data = sample_array(datatype, (2, 7))
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    got = client.infer(identity_name(datatype), [tensor]).as_numpy("OUTPUT0")
    assert got.shape == data.shape
    if datatype == "BYTES":
        assert [bytes(x) for x in got.ravel()] == [bytes(x) for x in data.ravel()]
    else:
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, data)


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


def test_unknown_model(client: grpcclient.InferenceServerClient) -> None:
    inputs, _, _ = simple_inputs()
    expect_error(lambda: client.infer("nope", inputs), "StatusCode.NOT_FOUND", "unknown model 'nope'")
    expect_error(lambda: client.infer("simple", inputs, model_version="4"), "StatusCode.NOT_FOUND", "no version 4")
    assert_still_serving(client)


def test_missing_and_extra_inputs(client: grpcclient.InferenceServerClient) -> None:
    inputs, _, _ = simple_inputs()
    expect_error(lambda: client.infer("simple", inputs[:1]), "StatusCode.INVALID_ARGUMENT", "missing input 'INPUT1'")
    extra = grpcclient.InferInput("EXTRA", [1, 16], "INT32")
    extra.set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
    expect_error(lambda: client.infer("simple", [*inputs, extra]), "StatusCode.INVALID_ARGUMENT", "'EXTRA'")


def test_wrong_datatype_and_shape(client: grpcclient.InferenceServerClient) -> None:
    inputs, _, _ = simple_inputs()
    wrong = grpcclient.InferInput("INPUT1", [1, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    expect_error(lambda: client.infer("simple", [inputs[0], wrong]), "StatusCode.INVALID_ARGUMENT", "FP32", "INT32")
    short = [grpcclient.InferInput(n, [1, 4], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in short:
        tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.int32))
    expect_error(lambda: client.infer("simple", short), "StatusCode.INVALID_ARGUMENT", "shape [1, 4]")


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


def test_corrupt_model_unavailable(client: grpcclient.InferenceServerClient) -> None:
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    expect_error(lambda: client.infer("corrupt", [tensor]), "StatusCode.UNAVAILABLE", "not a readable ONNX model")

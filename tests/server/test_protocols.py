"""Behaviour HTTP and gRPC share, driven by the official tritonclients (`either`: ids http and grpc)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.server.conftest import DATATYPES, Client, identity_name
from tests.server.sample_data import sample_array


def simple_inputs(client: Client) -> tuple[list[object], np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    return [client.input("INPUT0", a), client.input("INPUT1", b)], a, b


def assert_still_serving(client: Client) -> None:
    inputs, a, b = simple_inputs(client)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)


# ---- health and metadata -----------------------------------------------------------------------


def test_health(either: Client) -> None:
    assert either.triton.is_server_live()
    assert either.triton.is_server_ready()


def test_server_metadata(either: Client) -> None:
    metadata = either.server_metadata()
    assert metadata["name"] == "model-runtime"
    assert "binary_tensor_data" in metadata["extensions"]
    assert "model_configuration" in metadata["extensions"]


def test_model_metadata(either: Client) -> None:
    metadata = either.model_metadata("simple")
    assert metadata["name"] == "simple"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    assert [name for name, _, _ in metadata["outputs"]] == ["OUTPUT0", "OUTPUT1"]


def test_model_ready(either: Client) -> None:
    assert either.triton.is_model_ready("simple")
    assert either.triton.is_model_ready("versioned", "1")
    assert not either.triton.is_model_ready("versioned", "7")
    assert not either.triton.is_model_ready("no_such_model")
    assert not either.triton.is_model_ready("nope")
    assert not either.triton.is_model_ready("corrupt")


def test_model_config(either: Client) -> None:
    # The configuration as JSON: ours over HTTP; protobuf's JSON (int64 and uint64 as strings) over gRPC.
    def int64(value: int) -> object:
        return value if either.protocol == "http" else str(value)

    config = either.model_config("simple")
    assert config["name"] == "simple"
    assert config["max_batch_size"] == 8
    assert config["input"][0] == {**config["input"][0], "name": "INPUT0", "data_type": "TYPE_INT32", "dims": [int64(16)]}
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    config = either.model_config("mlp")
    assert config["name"] == "mlp"
    assert config["max_batch_size"] == 32
    assert config["input"][0]["name"] == "INPUT"
    assert config["input"][0]["dims"] == [int64(16)]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == int64(500)


# ---- inference -----------------------------------------------------------------------------------


def test_infer_simple(either: Client) -> None:
    inputs, a, b = simple_inputs(either)
    result = either.infer("simple", inputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert either.response_fields(result) == ("simple", "1", "r1")


def test_requested_output_subset(either: Client) -> None:
    inputs, a, b = simple_inputs(either)
    result = either.infer("simple", inputs, outputs=[either.output("OUTPUT1")])
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(either: Client, datatype: str) -> None:
    data = sample_array(datatype, (2, 7))
    got = either.infer(identity_name(datatype), [either.input("INPUT0", data, datatype)]).as_numpy("OUTPUT0")
    assert got.shape == data.shape
    if datatype == "BYTES":
        # tritonclient.http hands JSON strings back as str, binary ones as bytes
        assert [x.encode() if isinstance(x, str) else bytes(x) for x in got.ravel()] == [bytes(x) for x in data.ravel()]
    else:
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, data)


# ---- bad input ----------------------------------------------------------------------------------


def test_unknown_model_and_version(either: Client) -> None:
    inputs, _, _ = simple_inputs(either)
    either.expect_error(lambda: either.infer("nope", inputs), "NOT_FOUND", "unknown model 'nope'")
    either.expect_error(lambda: either.triton.get_model_metadata("nope"), "NOT_FOUND", "nope")
    either.expect_error(lambda: either.infer("simple", inputs, model_version="3"), "NOT_FOUND", "no version 3", "available: 1")
    either.expect_error(lambda: either.infer("simple", inputs, model_version="4"), "NOT_FOUND", "no version 4")
    assert_still_serving(either)


def test_missing_and_extra_inputs(either: Client) -> None:
    inputs, _, _ = simple_inputs(either)
    either.expect_error(lambda: either.infer("simple", inputs[:1]), "INVALID_ARGUMENT", "missing input 'INPUT1'", "'simple'")
    extra = either.input("INPUT9", np.zeros((1, 16), dtype=np.int32))
    either.expect_error(lambda: either.infer("simple", [*inputs, extra]), "INVALID_ARGUMENT", "unexpected input 'INPUT9'")
    assert_still_serving(either)


def test_wrong_datatype_and_shape(either: Client) -> None:
    inputs, _, _ = simple_inputs(either)
    wrong = either.input("INPUT1", np.zeros((1, 16), dtype=np.float32))
    either.expect_error(lambda: either.infer("simple", [inputs[0], wrong]), "INVALID_ARGUMENT", "'INPUT1'", "FP32", "INT32")
    short = [either.input(name, np.zeros((1, 8), dtype=np.int32)) for name in ("INPUT0", "INPUT1")]
    either.expect_error(lambda: either.infer("simple", short), "INVALID_ARGUMENT", "'INPUT0'", "shape [1, 8]", "16")


def test_corrupt_model_fails_alone(either: Client) -> None:
    tensor = either.input("INPUT0", np.ones((1, 4), dtype=np.float32))
    either.expect_error(lambda: either.infer("corrupt", [tensor]), "UNAVAILABLE", "corrupt", "not a readable ONNX model")
    assert_still_serving(either)


# ---- the classification extension: one rule for both ---------------------------------------------


@pytest.mark.parametrize(
    "value, accepted",
    [(2, True), (0, True), ("3", False), (-1, False), (True, False), (1.5, False), (None, False)],
    ids=["int", "zero", "digit-string", "negative", "true", "fraction", "null"],
)
def test_both_protocols_read_the_classification_parameter_alike(either: Client, value: object, accepted: bool) -> None:
    """README: a non-negative integer (0: an ordinary tensor); strings, booleans, fractions and null are refused."""
    inputs, a, b = simple_inputs(either)
    if either.protocol == "http":
        output = either.module.InferRequestedOutput("OUTPUT0")
        output._parameters["classification"] = value  # tritonclient.http writes the parameter as given
    else:
        output = either.module.InferRequestedOutput("OUTPUT0")
        parameter = output._output.parameters["classification"]  # None: a parameter with no value set
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
    if not accepted:
        either.expect_error(lambda: either.infer("simple", inputs, outputs=[output]), "INVALID_ARGUMENT", "'OUTPUT0'", "classification")
        return
    got = either.infer("simple", inputs, outputs=[output]).as_numpy("OUTPUT0")
    if value:
        assert got.shape == (1, value) and got.dtype == object
        assert got[0, 0].decode().split(":")[1] == str(int(np.argmax(a + b)))
    else:
        np.testing.assert_array_equal(got, a + b)

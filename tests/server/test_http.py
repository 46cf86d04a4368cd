"""The HTTP/REST endpoint, driven by the official tritonclient.http against a real server."""
from __future__ import annotations

import gzip
import http.client
import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving import RunningServer
from tests.server.conftest import DATATYPES, MAX_REQUEST_BYTES, identity_name
from tests.server.sample_data import sample_array


@pytest.fixture(scope="module")
def client(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url)


def raw_request(
    server: RunningServer, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def simple_inputs(binary: bool = True) -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs, a, b


def assert_still_serving(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs()
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def expect_error(call, status: int, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as caught:
        call()
    message = caught.value.message()
    assert str(caught.value.status()) == str(status), f"status {caught.value.status()}: {message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---- health and metadata -----------------------------------------------------------------------


def test_model_metadata_names_execution_providers(client: httpclient.InferenceServerClient) -> None:
    """The rest of the metadata: tests/server/test_protocols.py, over both protocols."""
    assert client.get_model_metadata("simple")["parameters"]["execution_providers"] == "CPUExecutionProvider"


def test_model_metadata_by_version(client: httpclient.InferenceServerClient) -> None:
    assert client.get_model_metadata("versioned")["versions"] == ["1", "2"]
    assert client.get_model_metadata("versioned", "1")["versions"] == ["1"]


def test_auto_completed_config(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("image_cnn")  # ships without config.pbtxt
    assert config["max_batch_size"] == 4
    assert config["input"][0]["name"] == "IMAGE"
    assert config["input"][0]["data_type"] == "TYPE_UINT8"
    assert config["input"][0]["dims"] == [32, 32, 3]
    assert "dynamic_batching" in config


# ---- inference -----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_simple_binary_or_json(client: httpclient.InferenceServerClient, binary: bool) -> None:
    inputs, a, b = simple_inputs(binary)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary),
    ]
    result = client.infer("simple", inputs, outputs=outputs, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["model_name"] == "simple"
    assert response["model_version"] == "1"
    assert response["id"] == "req-7"


def test_mixed_binary_and_json_outputs(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs(binary=False)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_nested_json_data(server: RunningServer) -> None:
    body = {
        "inputs": [
            {"name": "INPUT0", "shape": [2, 16], "datatype": "INT32", "data": [list(range(16)), list(range(16))]},
            {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32", "data": [[1] * 16, [2] * 16]},
        ]
    }
    status, raw = raw_request(server, "POST", "/v2/models/simple/infer", json.dumps(body).encode())
    assert status == 200, raw
    outputs = {o["name"]: o for o in json.loads(raw)["outputs"]}
    assert outputs["OUTPUT0"]["shape"] == [2, 16]
    assert outputs["OUTPUT0"]["data"] == [i + 1 for i in range(16)] + [i + 2 for i in range(16)]
    assert "parameters" not in outputs["OUTPUT0"]


def test_nan_and_infinity_literals_in_json_data(server: RunningServer) -> None:
    """perf_analyzer's random FP32 inputs come as JSON with NaN/Infinity literals; Triton reads them."""
    body = b'{"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [NaN, Infinity, -Infinity, 1.5]}],' \
        b' "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": true}}]}'
    status, raw = raw_request(server, "POST", "/v2/models/identity_fp32/infer", body)
    assert status == 200, raw
    values = np.frombuffer(raw[-16:], dtype=np.float32)  # the binary output closes the body
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf and values[3] == 1.5
    status, raw = raw_request(server, "POST", "/v2/models/identity_fp32/infer", body.replace(b"NaN", b"NaX"))
    assert status == 400 and b"near" in raw and b"NaX" in raw, raw


def test_gzip_request_body(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs()
    result = client.infer("simple", inputs, request_compression_algorithm="gzip")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips_binary_or_json(client: httpclient.InferenceServerClient, datatype: str, binary: bool) -> None:
    data = sample_array(datatype, (3, 5))
    tensor = httpclient.InferInput("INPUT0", list(data.shape), datatype)
    tensor.set_data_from_numpy(data, binary_data=binary)
    result = client.infer(
        identity_name(datatype), [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    )
    got = result.as_numpy("OUTPUT0")
    assert got.shape == data.shape
    if datatype == "BYTES":
        # tritonclient hands JSON strings back as str, binary ones as bytes
        assert [x.encode() if isinstance(x, str) else bytes(x) for x in got.ravel()] == list(data.ravel())
    else:
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, data)


def test_infer_specific_version(client: httpclient.InferenceServerClient) -> None:
    data = np.ones((1, 4), dtype=np.float32)
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("versioned", [tensor], model_version="1")
    assert result.get_response()["model_version"] == "1"
    result = client.infer("versioned", [tensor])
    assert result.get_response()["model_version"] == "2"


def test_text_model_lowercases(client: httpclient.InferenceServerClient) -> None:
    data = np.array([b"Hello", b"WORLD", "Stra\u00dfe".encode()], dtype=object)
    tensor = httpclient.InferInput("TEXT", [3], "BYTES")
    tensor.set_data_from_numpy(data)
    result = client.infer("text", [tensor])
    assert [bytes(x) for x in result.as_numpy("LOWER")] == [b"hello", b"world", "stra\u00dfe".encode()]


# ---- bad input ----------------------------------------------------------------------------------


def test_batch_over_max_batch_size(client: httpclient.InferenceServerClient) -> None:
    tensors = []
    for name in ("INPUT0", "INPUT1"):
        tensor = httpclient.InferInput(name, [9, 16], "INT32")
        tensor.set_data_from_numpy(np.zeros((9, 16), dtype=np.int32))
        tensors.append(tensor)
    expect_error(lambda: client.infer("simple", tensors), 400, "batch size 9", "max_batch_size 8")


def test_json_data_count_not_matching_shape(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(15))}]}
    status, raw = raw_request(server, "POST", "/v2/models/identity_int32/infer", json.dumps(body).encode())
    assert status == 400
    assert "'INPUT0'" in json.loads(raw)["error"]


def test_binary_size_not_matching_shape(server: RunningServer) -> None:
    header = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}
    ).encode()
    status, raw = raw_request(
        server, "POST", "/v2/models/identity_fp32/infer", header + bytes(12),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400
    error = json.loads(raw)["error"]
    assert "'INPUT0'" in error and "12 bytes" in error and "16" in error


def test_binary_header_length_past_body(server: RunningServer) -> None:
    header = b'{"inputs": []}'
    status, raw = raw_request(
        server, "POST", "/v2/models/identity_fp32/infer", header, {"Inference-Header-Content-Length": "4096"}
    )
    assert status == 400
    assert "past the end" in json.loads(raw)["error"]


def test_binary_data_size_past_body(server: RunningServer) -> None:
    header = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]}
    ).encode()
    status, raw = raw_request(
        server, "POST", "/v2/models/identity_fp32/infer", header + bytes(16),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400
    assert "runs past" in json.loads(raw)["error"]


def test_bytes_length_prefix_overrun(server: RunningServer) -> None:
    payload = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 1000) + b"xy"
    header = json.dumps(
        {
            "inputs": [
                {"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES", "parameters": {"binary_data_size": len(payload)}}
            ]
        }
    ).encode()
    status, raw = raw_request(
        server, "POST", "/v2/models/identity_bytes/infer", header + payload,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400
    error = json.loads(raw)["error"]
    assert "'INPUT0'" in error and "1000" in error


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2, 3]", b'{"inputs": 5}', b'{"inputs": [{"name": 1}]}', b""],
    ids=["syntax", "array", "inputs-not-list", "name-not-string", "empty"],
)
def test_malformed_json(server: RunningServer, client: httpclient.InferenceServerClient, body: bytes) -> None:
    status, raw = raw_request(server, "POST", "/v2/models/simple/infer", body)
    assert status == 400
    assert json.loads(raw)["error"]
    assert_still_serving(client)


def test_oversized_body(server: RunningServer, client: httpclient.InferenceServerClient) -> None:
    status, raw = raw_request(server, "POST", "/v2/models/simple/infer", bytes(MAX_REQUEST_BYTES + 1))
    assert status == 413
    assert "exceeds the limit" in json.loads(raw)["error"]
    assert_still_serving(client)


def test_oversized_after_decompression(server: RunningServer) -> None:
    bomb = gzip.compress(bytes(MAX_REQUEST_BYTES * 2))
    status, raw = raw_request(server, "POST", "/v2/models/simple/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413
    assert "decompressed" in json.loads(raw)["error"]


def test_unsupported_config_field_is_named(client: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("INPUT0", [1, 4], "INT32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.int32))
    expect_error(lambda: client.infer("bad_config", [tensor]), 503, "sequence_batching")


def test_invalid_utf8_for_string_model(client: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("TEXT", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object))
    expect_error(lambda: client.infer("text", [tensor]), 400, "'TEXT'", "UTF-8")
    assert_still_serving(client)


def test_unknown_output_requested(client: httpclient.InferenceServerClient) -> None:
    inputs, _, _ = simple_inputs()
    expect_error(
        lambda: client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT7")]),
        400, "unknown output 'OUTPUT7'",
    )


def test_error_bodies_are_json(server: RunningServer) -> None:
    status, raw = raw_request(server, "GET", "/v2/models/nope/config")
    assert status == 404
    assert json.loads(raw) == {"error": "unknown model 'nope'"}

"""Fuzzing: every request decoder takes any input and answers only InvalidInput (CodecError below it);
the HTTP API, driven by schemathesis from runtime/server/http/openapi.yaml, answers no 5xx but the
documented 503, never crashes and never hangs. Both bounded in examples and time.
"""
from __future__ import annotations

import contextlib
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.serving import RunningServer, running_server

from runtime import codec
from runtime.codec import _py
from runtime.errors import InvalidInput
from runtime.examples import save_model, write_example_repository
from tests.models import build_identity
from runtime.server.grpc import converters as grpc_server
from runtime.server.http import codec as http_server
from runtime._pb import grpc_service_pb2 as pb
from runtime.tensors import array_from_json, array_from_raw
from runtime.types import DATATYPE_TO_NUMPY

try:
    from runtime.codec import _codec as _built
except ImportError:
    _built = None

# The codec fixture patches for the whole test, which is what every example needs.
# Bounded, and deterministic under CI (a new find there would block an unrelated change); random locally.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DATATYPES = [*DATATYPE_TO_NUMPY, "BF16", "FP8", "", "int32"]


@pytest.fixture(
    params=[
        pytest.param("python", id="python"),
        pytest.param("cython", id="cython", marks=pytest.mark.skipif(_built is None, reason="codec not built")),
    ]
)
def implementation(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """runtime.codec switched to one implementation, for the decoders above it (tensors, servers)."""
    module: ModuleType = _py if request.param == "python" else _built  # type: ignore[assignment]
    with contextlib.ExitStack() as stack:
        for name in ("decode_bytes", "json_to_array", "encode_bytes", "array_to_json"):
            stack.enter_context(mock.patch.object(codec, name, getattr(module, name)))
        yield module


# Shapes around the edges: empty, zero, negative, and products far past any buffer (or int64).
dims = st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63 - 1]))
shapes = st.lists(dims, max_size=4)
def json_trees(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | floats | st.text(max_size=8),
        lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=3),
        max_leaves=40,
    )


json_values = json_trees(st.floats())
json_documents = json_trees(st.floats(allow_nan=False, allow_infinity=False))  # what JSON text can carry


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


raw_buffers = st.one_of(
    st.binary(max_size=96),
    st.lists(st.binary(max_size=12), max_size=6).map(length_prefixed),  # well-formed BYTES
)


# ---- codec and tensors ----------------------------------------------------------------------------


@FUZZ
@given(buffer=raw_buffers, count=st.one_of(st.integers(-2, 8), st.sampled_from([2**31, 2**40, 2**62])))
def test_decode_bytes_only_raises_codec_error(implementation: ModuleType, buffer: bytes, count: int) -> None:
    try:
        array = implementation.decode_bytes(buffer, count)
    except codec.CodecError:
        return
    assert array.shape == (count,) and array.dtype == object


@FUZZ
@given(data=json_values, datatype=st.sampled_from(list(DATATYPE_TO_NUMPY)), count=st.integers(-1, 12))
def test_json_to_array_only_raises_codec_error(
    implementation: ModuleType, data: Any, datatype: str, count: int
) -> None:
    try:
        array = implementation.json_to_array(data, DATATYPE_TO_NUMPY[datatype], count)
    except codec.CodecError:
        return
    assert array.size == count


@FUZZ
@given(raw=raw_buffers, datatype=st.sampled_from(DATATYPES), shape=shapes)
def test_array_from_raw_only_raises_invalid_input(
    implementation: ModuleType, raw: bytes, datatype: str, shape: list[int]
) -> None:
    try:
        array = array_from_raw(memoryview(raw), datatype, shape, "x")
    except InvalidInput:
        return
    assert list(array.shape) == shape


@FUZZ
@given(data=json_values, datatype=st.sampled_from(DATATYPES), shape=shapes)
def test_array_from_json_only_raises_invalid_input(
    implementation: ModuleType, data: Any, datatype: str, shape: list[int]
) -> None:
    try:
        array = array_from_json(data, datatype, shape, "x")
    except InvalidInput:
        return
    assert list(array.shape) == shape


# ---- HTTP decoding --------------------------------------------------------------------------------


def input_tensors() -> st.SearchStrategy[Any]:
    """Mostly well-formed V2 input tensors (so decoding gets deep), with junk mixed in."""
    tensor = st.fixed_dictionaries(
        {"name": st.sampled_from(["INPUT", "INPUT0", "TEXT", ""]), "datatype": st.sampled_from(DATATYPES), "shape": shapes},
        optional={
            "data": json_values,
            "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-2, 40) | json_values}),
        },
    )
    return st.one_of(tensor, json_values)


infer_docs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"inputs": st.lists(input_tensors(), max_size=3)},
        optional={
            "id": json_values,
            "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "priority", "timeout", "x"]), json_values),
            "outputs": st.lists(
                st.one_of(
                    st.fixed_dictionaries(
                        {"name": st.text(max_size=6)},
                        optional={"parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]), json_values)},
                    ),
                    json_values,
                ),
                max_size=2,
            ),
        },
    ),
)


@FUZZ
@given(body=st.binary(max_size=64), header_length=st.none() | st.text(max_size=6) | st.integers(0, 80).map(str))
def test_split_body_only_raises_invalid_input(body: bytes, header_length: str | None) -> None:
    try:
        http_server.split_body(body, header_length)
    except InvalidInput:
        pass


@FUZZ
@given(doc=infer_docs, binary=raw_buffers)
def test_http_decode_infer_request_only_raises_invalid_input(implementation: ModuleType, doc: Any, binary: bytes) -> None:
    try:
        request, _ = http_server.decode_infer_request(doc, memoryview(binary), "m", "")
    except InvalidInput:
        return
    for name, array in request.inputs.items():
        assert isinstance(array, np.ndarray), name


@FUZZ
@given(doc=infer_docs, binary=raw_buffers)
def test_http_decode_of_a_whole_body_only_raises_invalid_input(doc: Any, binary: bytes) -> None:
    """The path the server takes: serialize, split at the header length, decode."""
    import orjson

    try:
        header = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        parsed, rest = http_server.split_body(header + binary, str(len(header)))
        http_server.decode_infer_request(parsed, rest, "m", "1")
    except InvalidInput:
        pass


# ---- gRPC decoding --------------------------------------------------------------------------------


def parameters() -> st.SearchStrategy[pb.InferParameter]:
    return st.one_of(
        st.booleans().map(lambda v: pb.InferParameter(bool_param=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.InferParameter(int64_param=v)),
        st.text(max_size=6).map(lambda v: pb.InferParameter(string_param=v)),
        st.floats(allow_nan=True).map(lambda v: pb.InferParameter(double_param=v)),
        st.integers(0, 2**64 - 1).map(lambda v: pb.InferParameter(uint64_param=v)),
        st.just(pb.InferParameter()),
    )


CONTENT_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id=draw(st.text(max_size=4)))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["INPUT", "INPUT0", ""])),
            datatype=draw(st.sampled_from(DATATYPES)),
            shape=draw(st.lists(st.one_of(st.integers(-3, 6), st.sampled_from([2**40, 2**63 - 1])), max_size=4)),
        )
        for field in draw(st.lists(st.sampled_from(sorted(CONTENT_FIELDS)), max_size=2, unique=True)):
            getattr(tensor.contents, field).extend(draw(st.lists(CONTENT_FIELDS[field], max_size=8)))
        for key in draw(st.lists(st.sampled_from(["binary_data_size", "x"]), max_size=2, unique=True)):
            tensor.parameters[key].CopyFrom(draw(parameters()))
    if draw(st.booleans()):
        request.raw_input_contents.extend(draw(st.lists(raw_buffers, max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        output = request.outputs.add(name=draw(st.text(max_size=4)))
        for key in draw(st.lists(st.sampled_from(["classification", "binary_data"]), max_size=2, unique=True)):
            output.parameters[key].CopyFrom(draw(parameters()))
    for key in draw(st.lists(st.sampled_from(["priority", "timeout", "x"]), max_size=2, unique=True)):
        request.parameters[key].CopyFrom(draw(parameters()))
    return request


@FUZZ
@given(request=grpc_requests())
def test_grpc_decode_infer_request_only_raises_invalid_input(
    implementation: ModuleType, request: pb.ModelInferRequest
) -> None:
    try:
        decoded = grpc_server.decode_infer_request(request, None)
    except InvalidInput:
        return
    assert set(decoded.inputs) == {t.name for t in request.inputs}


@FUZZ
@given(raw=st.one_of(st.binary(max_size=80), grpc_requests().map(lambda r: r.SerializeToString()[:-1])))
def test_grpc_parse_and_decode_of_any_bytes_only_raises_invalid_input(raw: bytes) -> None:
    try:
        grpc_server.decode_infer_request(grpc_server.parse(pb.ModelInferRequest, raw), None)
    except InvalidInput:
        pass


# ---- schemathesis against the running HTTP API ----------------------------------------------------

MODELS = ["mlp", "simple", "text", "image_cnn", "identity_bytes", "identity_fp16"]
EXAMPLES_PER_OPERATION = 12
BUDGET_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = write_example_repository(tmp_path_factory.mktemp("repo"))
    save_model(build_identity("BYTES"), repo, "identity_bytes")
    save_model(build_identity("FP16"), repo, "identity_fp16")
    with running_server(repo, tmp_path_factory.mktemp("server"), ["--max-request-bytes", str(1 << 20)]) as running:
        yield running


SIGNATURES = {  # model -> inputs (name, datatype, dims after the batch dim; None: no batch dim)
    "mlp": [("INPUT", "FP32", [16])],
    "simple": [("INPUT0", "INT32", [16]), ("INPUT1", "INT32", [16])],
    "text": [("TEXT", "BYTES", None)],
    "image_cnn": [("IMAGE", "UINT8", [32, 32, 3])],
    "identity_bytes": [("INPUT0", "BYTES", [-1])],
    "identity_fp16": [("INPUT0", "FP16", [-1])],
}
ELEMENTS = {
    "FP32": st.floats(width=32, allow_nan=False, allow_infinity=False) | st.integers(-(2**31), 2**31),
    "FP16": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**20), 2**20),
    "INT32": st.integers(-(2**32), 2**32),
    "UINT8": st.integers(-2, 300),
    "BYTES": st.text(max_size=5) | st.integers(0, 9),
}


@st.composite
def near_valid_requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(model, V2 JSON body) with the model's input names and types, and varied shapes and data."""
    model = draw(st.sampled_from(sorted(SIGNATURES)))
    inputs = []
    for name, datatype, dims in SIGNATURES[model]:
        batch = [draw(st.integers(0, 3))] if dims is not None else []
        shape = batch + [draw(st.integers(0, 3)) if d < 0 else d for d in dims or [-1]]
        if draw(st.integers(0, 9)) == 0:
            shape = draw(st.lists(st.integers(0, 4), max_size=4))
        count = int(np.prod(shape)) if shape else 1
        data = draw(st.lists(ELEMENTS[datatype], min_size=count, max_size=count) | json_documents)
        inputs.append({"name": name, "datatype": draw(st.sampled_from([datatype, datatype, "FP64"])), "shape": shape, "data": data})
    body: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        body["parameters"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "binary_data_output": st.booleans(),
                    "priority": st.integers(-1, 3) | st.text(max_size=2),
                    "timeout": st.integers(-1, 10**7) | st.floats(allow_nan=False, allow_infinity=False),
                },
            )
        )
    if draw(st.booleans()):
        outputs = ["PROBABILITIES", "OUTPUT0", "OUTPUT1", "LOWER", "NOPE"]
        body["outputs"] = [
            {"name": draw(st.sampled_from(outputs)), "parameters": {"classification": draw(st.integers(-1, 3) | json_documents)}}
            for _ in range(draw(st.integers(1, 2)))
        ]
    return model, body


def test_http_api_against_its_openapi_description(server: RunningServer) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    import requests
    import yaml
    from schemathesis import GenerationMode
    from schemathesis.checks import status_code_conformance

    base_url = f"http://{server.http_url}"
    with urllib.request.urlopen(f"{base_url}/v2/openapi.yaml", timeout=10) as served:
        document = yaml.safe_load(served.read())
    assert document == yaml.safe_load((Path(http_server.__file__).parent / "openapi.yaml").read_text())
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    session = requests.Session()
    deadline = time.monotonic() + BUDGET_S
    calls = 0
    statuses: set[int] = set()

    for operation in operations:
        names = [p.name for p in operation.path_parameters]
        strategies = [operation.as_strategy()]
        if operation.body:  # negative path parameters are only empty strings: bodies are where it pays
            strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        if names:
            for model in MODELS:
                fixed = {"model": model} | ({"version": "1"} if "version" in names else {})
                strategies.append(operation.as_strategy(path_parameters=fixed))
        if operation.path.endswith("/infer"):  # deep: right names and types, shapes and data varied
            version = {"version": "1"} if "version" in names else {}
            strategies.append(
                near_valid_requests().map(
                    lambda pair, op=operation, v=version: op.Case(
                        path_parameters={"model": pair[0]} | v, body=pair[1], media_type="application/json"
                    )
                )
            )

        @settings(
            max_examples=EXAMPLES_PER_OPERATION * (3 if operation.body else 1),
            deadline=None,
            database=None,
            derandomize=bool(os.environ.get("CI")),
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(strategies))
        def exercise(case: Any) -> None:
            nonlocal calls
            if time.monotonic() > deadline:
                return
            response = case.call(base_url=base_url, session=session, timeout=10)
            calls += 1
            statuses.add(response.status_code)
            # No 5xx but the documented 503 (overload, model not ready, shutting down).
            assert response.status_code < 500 or response.status_code == 503, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}\n"
                f"{case.as_curl_command()}"
            )
            case.validate_response(response, checks=[status_code_conformance])  # statuses it documents

        exercise()
    assert calls > len(operations) * 5
    assert {200, 400, 404} <= statuses, statuses
    assert server.process.poll() is None
    with urllib.request.urlopen(f"{base_url}/v2/health/ready", timeout=5) as ready:
        assert ready.status == 200

"""Sample requests for the load-test users: made from a model's metadata, or read from a file.

Pure numpy and JSON; no locust and no gevent here, so tests and other tools can use it in any process.

A sample is `{input name: ndarray}`. Made from metadata, each `-1` dim becomes `batch_size` if it is the
first dim and `variable_dim` otherwise; values are seeded random numbers in a small range (0..9 for
integers, [0, 1) for floats, 8 lowercase letters for BYTES), so models like `failing` see valid input.
A file holds samples as V2 inference request bodies (JSON: one body, or a list of them; the same
`{"inputs": [{"name", "shape", "datatype", "data"}]}` the HTTP endpoint takes) or as a `.npz` archive
of arrays named after the inputs (one sample).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from runtime.errors import InvalidInput
from runtime.tensors import array_from_json, raw_from_array
from runtime.types import DATATYPE_TO_NUMPY, Array, datatype_of

Sample = dict[str, Array]


def sample_shape(shape: Sequence[int], batch_size: int, variable_dim: int) -> list[int]:
    return [(batch_size if index == 0 else variable_dim) if dim < 0 else int(dim) for index, dim in enumerate(shape)]


def random_array(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> Array:
    try:
        dtype = DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        raise ValueError(f"no sample data for datatype {datatype!r}") from None
    dims = tuple(shape)
    if datatype == "BYTES":
        letters = rng.integers(ord("a"), ord("z") + 1, size=(*dims, 8), dtype=np.uint8)
        flat = [bytes(row) for row in letters.reshape(-1, 8)]
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(dims)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    if dtype.kind == "f":
        return rng.random(size=dims).astype(dtype)
    return rng.integers(0, 10, size=dims).astype(dtype)


def sample_from_metadata(
    metadata: Mapping[str, Any], batch_size: int = 1, variable_dim: int = 16, seed: int = 0
) -> Sample:
    """One sample for every input of a model, from its V2 metadata (`GET /v2/models/{m}` as JSON)."""
    rng = np.random.default_rng(seed)
    return {
        tensor["name"]: random_array(
            tensor["datatype"], sample_shape(tensor["shape"], batch_size, variable_dim), rng
        )
        for tensor in metadata["inputs"]
    }


def load_samples(path: Path) -> list[Sample]:
    """Samples from a `.npz` archive or a JSON file of V2 request bodies (see the module docstring)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return [{name: archive[name] for name in archive.files}]
    doc = json.loads(path.read_text())
    bodies = doc if isinstance(doc, list) else [doc]
    samples: list[Sample] = []
    for number, body in enumerate(bodies):
        try:
            samples.append(
                {
                    tensor["name"]: array_from_json(tensor["data"], tensor["datatype"], tensor["shape"], tensor["name"])
                    for tensor in body["inputs"]
                }
            )
        except (KeyError, TypeError, InvalidInput) as exc:
            raise ValueError(f"{path}: request {number} is not a V2 request body with data: {exc}") from None
    if not samples:
        raise ValueError(f"{path}: no requests")
    return samples


def _json_data(array: Array) -> list[Any]:
    if array.dtype.kind in "OSU":
        return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.ravel().tolist()]
    return list(array.ravel().tolist())


def json_body(sample: Sample) -> bytes:
    """A V2 request body with every input as JSON data, asking for JSON outputs."""
    inputs = [
        {"name": name, "shape": list(array.shape), "datatype": datatype_of(array), "data": _json_data(array)}
        for name, array in sample.items()
    ]
    return orjson.dumps({"inputs": inputs})


def binary_body(sample: Sample) -> tuple[bytes, int]:
    """A binary-extension body (JSON header, then the tensors' bytes) and its header's length.

    Outputs are asked for in binary too, as tritonclient and perf_analyzer do by default.
    """
    inputs = []
    blobs = []
    for name, array in sample.items():
        raw = raw_from_array(array)
        blobs.append(raw)
        inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    header = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    return b"".join([header, *blobs]), len(header)


def check_http_answer(body: bytes, header_length: str | None) -> int:
    """The number of outputs in a 200 answer; ValueError if the answer is malformed."""
    if header_length is None:
        doc = orjson.loads(body)
        binary_size = 0
    else:
        length = int(header_length)
        doc = orjson.loads(body[:length])
        binary_size = len(body) - length
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise ValueError("the answer has no outputs")
    declared = sum(int(o.get("parameters", {}).get("binary_data_size", 0)) for o in outputs)
    if declared != binary_size:
        raise ValueError(f"outputs declare {declared} binary bytes, the answer carries {binary_size}")
    return len(outputs)


def grpc_request_bytes(model: str, version: str, sample: Sample) -> bytes:
    """A serialized ModelInferRequest with every input in raw_input_contents."""
    from runtime._pb import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in sample.items():
        request.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        request.raw_input_contents.append(raw_from_array(array))
    data: bytes = request.SerializeToString()
    return data


def check_grpc_answer(raw: bytes) -> int:
    """The number of outputs in a ModelInferResponse; ValueError if it has none or is malformed."""
    from google.protobuf.message import DecodeError

    from runtime._pb import grpc_service_pb2 as pb

    try:
        response = pb.ModelInferResponse.FromString(raw)
    except DecodeError as exc:
        raise ValueError(f"malformed ModelInferResponse: {exc}") from None
    if not response.outputs:
        raise ValueError("the answer has no outputs")
    return len(response.outputs)


def grpc_metadata(raw: bytes) -> dict[str, Any]:
    """A serialized ModelMetadataResponse in the JSON form of `GET /v2/models/{m}`."""
    from runtime._pb import grpc_service_pb2 as pb

    response = pb.ModelMetadataResponse.FromString(raw)
    return {
        "name": response.name,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in response.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in response.outputs],
    }

"""The baseline a user would write by hand: FastAPI + one onnxruntime session, no batching.

Speaks just enough of the KServe V2 / Triton HTTP protocol for perf_analyzer and tritonclient:

    GET  /v2, /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/config     Triton model config (JSON)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer      V2 JSON, or the binary tensor extension

`session.run` is called right in the `async def` handler, on the event loop: one request at a time,
no batching, no thread pool. That is the point of this baseline; it imports nothing from `runtime`.

    python bench/naive_server.py --model PATH.onnx --name mlp --port 8000
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

Array = npt.NDArray[Any]
JsonDict = dict[str, Any]

HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
# What a malformed request can raise past our checks: numpy while decoding, onnxruntime while running.
REQUEST_ERRORS = (ValueError, TypeError, KeyError, InvalidArgument, Fail, RuntimeException)

# onnxruntime's type strings -> V2 datatype names.
ORT_TO_DATATYPE: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}
DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_DATATYPE: dict[np.dtype[Any], str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}


class BadRequest(Exception):
    """The request does not fit the protocol or the model; answered with HTTP 400."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output: V2 datatype and shape, -1 for dynamic dimensions."""

    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """The one session this server runs, with its signature."""

    name: str
    session: ort.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int


def tensor_spec(node: Any) -> TensorSpec:
    """An onnxruntime NodeArg as a TensorSpec; symbolic or unknown dims become -1."""
    if node.type not in ORT_TO_DATATYPE:
        raise ValueError(f"{node.name}: onnxruntime type {node.type} is not supported here")
    shape = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape]
    return TensorSpec(node.name, ORT_TO_DATATYPE[node.type], shape)


def load_model(model_path: str, name: str, max_batch_size: int, intra_op_threads: int) -> LoadedModel:
    """Open the ONNX file on the CPU provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    inputs = [tensor_spec(node) for node in session.get_inputs()]
    outputs = [tensor_spec(node) for node in session.get_outputs()]
    batchable = all(spec.shape and spec.shape[0] == -1 for spec in inputs + outputs)
    return LoadedModel(name, session, inputs, outputs, max_batch_size if batchable else 0)


# --- metadata and config -------------------------------------------------------------------------


def model_metadata(model: LoadedModel) -> JsonDict:
    """GET /v2/models/{name}: the V2 metadata, batch dimension included as -1."""

    def describe(spec: TensorSpec) -> JsonDict:
        return {"name": spec.name, "datatype": spec.datatype, "shape": spec.shape}

    return {
        "name": model.name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [describe(spec) for spec in model.inputs],
        "outputs": [describe(spec) for spec in model.outputs],
    }


def model_config(model: LoadedModel) -> JsonDict:
    """GET /v2/models/{name}/config: Triton's config JSON; dims leave out the batch dimension."""
    skip = 1 if model.max_batch_size > 0 else 0

    def describe(spec: TensorSpec) -> JsonDict:
        return {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": spec.shape[skip:]}

    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": model.max_batch_size,
        "input": [describe(spec) for spec in model.inputs],
        "output": [describe(spec) for spec in model.outputs],
    }


# --- request decoding ----------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[JsonDict, memoryview]:
    """The JSON header and the binary tail of a request (an empty tail for plain JSON)."""
    size = len(body) if header_length is None else int(header_length)
    if not 0 <= size <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} {size} does not fit a body of {len(body)} bytes")
    try:
        header = json.loads(body[:size])
    except ValueError as exc:
        raise BadRequest(f"request header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadRequest("request header must be a JSON object")
    return header, memoryview(body)[size:]


def decode_input(spec: JsonDict, tail: memoryview, offset: int) -> tuple[Array, int]:
    """One request input as an array, and the tail offset after its binary data (if any)."""
    try:
        dtype = DATATYPE_TO_NUMPY[spec["datatype"]]
        shape = [int(dim) for dim in spec["shape"]]
    except KeyError as exc:
        raise BadRequest(f"input {spec.get('name')!r}: missing or unsupported {exc}") from None
    binary_size = spec.get("parameters", {}).get("binary_data_size")
    if binary_size is None:
        return np.asarray(spec.get("data"), dtype=dtype).reshape(shape), offset
    end = offset + int(binary_size)
    if end > len(tail):
        raise BadRequest(f"input {spec['name']!r}: binary data runs past the end of the body")
    return np.frombuffer(tail[offset:end], dtype=dtype).reshape(shape), end


def decode_inputs(header: JsonDict, tail: memoryview) -> dict[str, Array]:
    """All inputs by name; binary tensors are read from the tail in input order."""
    arrays: dict[str, Array] = {}
    offset = 0
    for spec in header.get("inputs", []):
        try:
            arrays[spec["name"]], offset = decode_input(spec, tail, offset)
        except ValueError as exc:
            raise BadRequest(f"input {spec.get('name')!r}: {exc}") from None
    return arrays


def wanted_outputs(header: JsonDict, model: LoadedModel) -> list[tuple[str, bool]]:
    """(output name, send as binary) for each output to return; all outputs when none are named."""
    default_binary = bool(header.get("parameters", {}).get("binary_data_output", False))
    requested = header.get("outputs")
    if not requested:
        return [(spec.name, default_binary) for spec in model.outputs]
    return [
        (item["name"], bool(item.get("parameters", {}).get("binary_data", default_binary)))
        for item in requested
    ]


# --- response encoding ---------------------------------------------------------------------------


def encode_outputs(
    header: JsonDict, model: LoadedModel, results: dict[str, Array], wanted: list[tuple[str, bool]]
) -> Response:
    """A V2 response; outputs marked binary go after the JSON header, as the extension says."""
    outputs: list[JsonDict] = []
    chunks: list[bytes] = []
    for name, binary in wanted:
        array = np.ascontiguousarray(results[name])
        entry: JsonDict = {
            "name": name,
            "datatype": NUMPY_TO_DATATYPE[array.dtype],
            "shape": list(array.shape),
        }
        if binary:
            chunks.append(array.tobytes())
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    reply: JsonDict = {"model_name": model.name, "model_version": MODEL_VERSION, "outputs": outputs}
    if "id" in header:
        reply["id"] = header["id"]
    head = json.dumps(reply).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    headers = {HEADER_LENGTH: str(len(head))}
    return Response(b"".join([head, *chunks]), media_type="application/octet-stream", headers=headers)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# --- the app -------------------------------------------------------------------------------------


def run_model(model: LoadedModel, arrays: dict[str, Array], names: list[str]) -> dict[str, Array]:
    """session.run, right here on the caller's thread."""
    missing = [spec.name for spec in model.inputs if spec.name not in arrays]
    if missing:
        raise BadRequest(f"missing inputs: {missing}")
    unknown = [name for name in names if name not in {spec.name for spec in model.outputs}]
    if unknown:
        raise BadRequest(f"unknown outputs: {unknown}")
    values = model.session.run(names, arrays)
    return dict(zip(names, values))


def create_app(model: LoadedModel) -> FastAPI:
    """The FastAPI app serving `model` under its name, any version."""
    app = FastAPI(title="naive V2 server", docs_url=None, redoc_url=None, openapi_url=None)

    def known(name: str, version: str) -> bool:
        return name == model.name and version in ("", MODEL_VERSION)

    @app.get("/v2")
    async def server_metadata() -> JsonDict:
        return {"name": "naive-onnx", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str = "") -> Response:
        if not known(name, version):
            return error(404, f"unknown model {name!r} version {version!r}")
        return JSONResponse(model_metadata(model))

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def config(name: str, version: str = "") -> Response:
        if not known(name, version):
            return error(404, f"unknown model {name!r} version {version!r}")
        return JSONResponse(model_config(model))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "") -> Response:
        return Response(status_code=200 if known(name, version) else 404)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "") -> Response:
        if not known(name, version):
            return error(404, f"unknown model {name!r} version {version!r}")
        try:
            header, tail = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
            wanted = wanted_outputs(header, model)
            results = run_model(model, decode_inputs(header, tail), [name for name, _ in wanted])
        except BadRequest as exc:
            return error(400, str(exc))
        except REQUEST_ERRORS as exc:
            return error(400, f"{type(exc).__name__}: {exc}")
        return encode_outputs(header, model, results, wanted)

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="path to the .onnx file")
    parser.add_argument("--name", default="model", help="model name in URLs (default: model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=64, help="reported in /config (default: 64)")
    parser.add_argument(
        "--intra-op-threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = load_model(args.model, args.name, args.max_batch_size, args.intra_op_threads)
    uvicorn.run(create_app(model), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""The V2 JSON and binary-tensor codec: request bodies -> `InferRequest`, `InferResponse` -> bodies."""
from __future__ import annotations

import json
import re
import zlib
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from runtime import codec
from runtime.errors import InvalidInput, PayloadTooLarge, quoted
from runtime.server.http.responses import NUMPY_JSON
from runtime.server.protocol import JSON
from runtime.shm import parse_reference
from runtime.tensors import array_from_json, array_from_raw, check_shape, raw_from_array
from runtime.types import (
    DATATYPE_TO_NUMPY,
    Array,
    InferRequest,
    InferResponse,
    RequestedOutput,
    SharedInput,
    TensorSpec,
    datatype_of,
)
from runtime.validate import classification_count

HEADER_LENGTH = "inference-header-content-length"
BINARY = "application/octet-stream"  # the media type of a body with binary tensors


# ---- request decoding ---------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    check_declared_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return decoded_body(b"".join(chunks), request.headers.get("content-encoding", ""), limit)


def check_declared_length(declared: str | None, limit: int) -> None:
    """413 before any of the body is read when its Content-Length is over the limit."""
    if declared is not None and _digits(declared) and (len(declared) > 19 or int(declared) > limit):
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")


def decoded_body(body: bytes, encoding: str, limit: int) -> bytes:
    """The body as sent, or decompressed for Content-Encoding gzip or deflate."""
    if not encoding:
        return body
    encoding = encoding.lower()
    if encoding in ("gzip", "deflate"):
        return _decompress(body, encoding, limit)
    if encoding != "identity":
        raise InvalidInput(f"unsupported Content-Encoding {quoted(encoding)} (use gzip or deflate)")
    return body


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The decompressed body; a stream that is corrupt or ends early is named as such, not as bad JSON."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:  # a gzip body may be several members one after another (RFC 1952); each is checked
        decompressor = zlib.decompressobj(wbits)
        try:
            data = decompressor.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise InvalidInput(f"the {encoding} request body is corrupt: {exc}") from None
        size += len(data)
        if size > limit or decompressor.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
        if not decompressor.eof:
            raise InvalidInput(
                f"the {encoding} request body is truncated: its compressed stream ends after {len(body)} bytes"
            )
        parts.append(data)
        rest = decompressor.unused_data
        if not rest:
            return b"".join(parts)
        if encoding != "gzip":
            raise InvalidInput(f"the {encoding} request body is corrupt: {len(rest)} bytes follow the end of its stream")


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²' and other digits int() refuses."""
    return text.isascii() and text.isdigit()


def split_body(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON header as an object, and the binary section after it (empty without the extension)."""
    if header_length is None:
        json_part, binary = memoryview(body), memoryview(b"")
    else:
        if not _digits(header_length) or len(header_length) > 19:
            raise InvalidInput(
                f"Inference-Header-Content-Length {quoted(header_length)} is not a non-negative integer"
            )
        length = int(header_length)
        if length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {length} is past the end of the {len(body)}-byte body"
            )
        view = memoryview(body)
        json_part, binary = view[:length], view[length:]
    try:
        return orjson.loads(json_part), binary
    except orjson.JSONDecodeError as exc:
        error = exc
    if error.msg.startswith(("recursion limit", "depth limit")):
        raise _too_deep(bytes(json_part)) from None
    # NaN, Infinity and -Infinity are not JSON, but Triton's clients write them for float data
    # (perf_analyzer's random inputs do) and Triton reads them; the stdlib parser does too.
    try:
        return json.loads(bytes(json_part)), binary
    except RecursionError:  # the stdlib parser recurses per level: deep nesting plus a NaN gets here
        raise _too_deep(bytes(json_part)) from None
    except ValueError:
        near = bytes(json_part[max(0, error.pos - 20) : error.pos + 20]).decode("utf-8", "replace")
        raise InvalidInput(f"malformed JSON in request body: {error} (near {quoted(near)})") from None


# No V2 request nests deeper than this: a tensor's data has at most 64 levels (codec.MAX_DEPTH),
# inside the body, 'inputs' and the input object.
_JSON_MAX_DEPTH = 128
_JSON_TOKEN = re.compile(rb'["\[\]{}:,]')
_JSON_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*"', re.DOTALL)


def _too_deep(text: bytes) -> InvalidInput:
    """The error for JSON nested past what a parser takes, naming the tensor whose data it is.

    A scan of the structural characters only (strings are skipped whole by a regex) up to the first
    point deeper than _JSON_MAX_DEPTH: no recursion, and no cost beyond that point.
    """
    stack: list[list[Any]] = []  # ["{", key, name] or ["[", index]
    after_colon = False
    pos = 0
    while (match := _JSON_TOKEN.search(text, pos)) is not None:
        char, pos = match.group(), match.end()
        top = stack[-1] if stack else None
        if char == b'"':
            end = _JSON_STRING_REST.match(text, pos)
            if end is None:
                break
            if top is not None and top[0] == "{":
                value = _json_string(text[pos - 1 : end.end()])
                if not after_colon:
                    top[1] = value
                elif top[1] == "name":
                    top[2] = value
            pos = end.end()
        elif char == b":":
            after_colon = True
            continue
        elif char == b",":
            if top is not None and top[0] == "[":
                top[1] += 1
        elif char in (b"{", b"["):
            stack.append(["{", None, None] if char == b"{" else ["[", 0])
            if len(stack) > _JSON_MAX_DEPTH:
                break
        elif stack:
            stack.pop()
        after_colon = False
    where = "the request body"
    if len(stack) > 3 and stack[0][1] in ("inputs", "outputs") and stack[1][0] == "[" and stack[2][0] == "{":
        kind = stack[0][1][:-1]
        name = stack[2][2]
        where = f"{kind} {quoted(name)}" if isinstance(name, str) else f"{stack[0][1]}[{stack[1][1]}]"
        if stack[2][1] is not None:
            where += f": {quoted(stack[2][1])}"
    return InvalidInput(f"{where} is JSON nested deeper than {_JSON_MAX_DEPTH} levels (a tensor's data has at most 64)")


def _json_string(token: bytes) -> str | None:
    try:
        value = orjson.loads(token)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidInput(f"{what} must be a JSON {_JSON_NAMES.get(names, names)}")
    return value


_JSON_NAMES = {"dict": "object", "list": "array", "str": "string", "int": "integer", "bool": "boolean"}


def decode_infer_request(doc: Any, binary: memoryview, model: str, version: str) -> tuple[InferRequest, bool]:
    """The request, and parameters.binary_data_output: whether outputs not asking otherwise go binary.

    Every check is `type(value) is not T` before `_expect` builds its message: the values come from a
    JSON parser (exact types), and the messages, which name the tensor, cost more than the checks on
    the path every request takes.
    """
    if type(doc) is not dict:
        _expect(doc, dict, "the request body")
    raw_inputs = doc.get("inputs")
    if type(raw_inputs) is not list:
        _expect(raw_inputs, list, "'inputs'")
    offset = 0
    inputs: dict[str, Array] = {}
    shared: dict[str, SharedInput] = {}  # inputs in shared memory: the engine reads them
    for position, raw in enumerate(raw_inputs):
        if type(raw) is not dict:
            _expect(raw, dict, f"inputs[{position}]")
        name = raw.get("name")
        if type(name) is not str:
            _expect(name, str, f"inputs[{position}].name")
        datatype = raw.get("datatype")
        if type(datatype) is not str:
            _expect(datatype, str, f"{_input(name)}: 'datatype'")
        if datatype not in DATATYPE_TO_NUMPY:
            raise InvalidInput(
                f"{_input(name)}: unknown datatype {quoted(datatype)} (one of {', '.join(DATATYPE_TO_NUMPY)})"
            )
        shape = raw.get("shape")
        if type(shape) is not list:
            _expect(shape, list, f"{_input(name)}: 'shape'")
        for dim in shape:
            if type(dim) is not int:
                _expect(dim, int, f"{_input(name)}: every 'shape' entry")
        if name in inputs or name in shared:
            raise InvalidInput(f"{_input(name)} appears twice")
        params = raw.get("parameters", _NO_PARAMETERS)
        if type(params) is not dict:
            _expect(params, dict, f"{_input(name)}: 'parameters'")
        memory = parse_reference(params, _input(name)) if params else None
        if memory is not None:
            if "data" in raw or "binary_data_size" in params:
                raise InvalidInput(
                    f"{_input(name)} has both data and shared_memory_region {quoted(memory.region)}; send one of them"
                )
            shared[name] = SharedInput(datatype, check_shape(shape, name), memory)
            continue
        size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int:
                _expect(size, int, f"{_input(name)}: binary_data_size")
            if size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"{_input(name)}: binary_data_size {size} at offset {offset} runs past the "
                    f"{len(binary)} bytes of binary data"
                )
            inputs[name] = array_from_raw(binary[offset : offset + size], datatype, shape, name)
            offset += size
        elif "data" in raw:
            inputs[name] = array_from_json(raw["data"], datatype, shape, name)
        else:
            raise InvalidInput(f"{_input(name)} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the last input's data")

    params = doc.get("parameters", _NO_PARAMETERS)
    if type(params) is not dict:
        _expect(params, dict, "'parameters'")
    default_binary = params.get("binary_data_output")
    if default_binary is not None and type(default_binary) is not bool:
        _expect(default_binary, bool, "parameters.binary_data_output")
    requested: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if type(raw_outputs) is not list:
            _expect(raw_outputs, list, "'outputs'")
        requested = []
        for position, raw in enumerate(raw_outputs):
            if type(raw) is not dict:
                _expect(raw, dict, f"outputs[{position}]")
            name = raw.get("name")
            if type(name) is not str:
                _expect(name, str, f"outputs[{position}].name")
            out_params = raw.get("parameters", _NO_PARAMETERS)
            if type(out_params) is not dict:
                _expect(out_params, dict, f"{_output(name)}: 'parameters'")
            binary_flag = out_params.get("binary_data", default_binary)
            if binary_flag is not None and type(binary_flag) is not bool:
                _expect(binary_flag, bool, f"{_output(name)}: parameters.binary_data")
            if not out_params:
                requested.append(RequestedOutput(name, binary_flag))
                continue
            classification = classification_count(out_params["classification"], name) if "classification" in out_params else 0
            memory = parse_reference(out_params, _output(name))
            requested.append(RequestedOutput(name, binary_flag, classification, memory))
    # null is no id (tritonclient never sends one; others write null for "none")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        _expect(request_id, str, "'id'")
    request = InferRequest(
        model_name=model,
        model_version=version,
        inputs=inputs,
        requested_outputs=requested,
        id=request_id or "",
        protocol="http",
        parameters={k: v for k, v in params.items() if k != "binary_data_output"} if params else {},
        shared_inputs=shared or None,
    )
    return request, bool(default_binary)


_NO_PARAMETERS: dict[str, Any] = {}  # read only: what a tensor or request without 'parameters' has


def _input(name: str) -> str:
    return f"input {quoted(name)}"


def _output(name: str) -> str:
    return f"output {quoted(name)}"


# ---- response encoding --------------------------------------------------------------------------


def encode_infer_response(response: InferResponse, default_binary: bool) -> tuple[list[bytes], int | None]:
    """The answer's body as parts to join (the JSON header, then any binary outputs), and with binary
    outputs the JSON header's length (Inference-Header-Content-Length); None for a JSON-only answer."""
    wanted = response.requested_outputs or {}
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in response.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        requested = wanted.get(name)
        if requested is not None and requested.shared_memory is not None:
            # Written there by the engine: name, datatype and shape only. No parameters either, as Triton:
            # the C++ client (perf_analyzer) reads binary_data_size from any output that has parameters.
            entries.append(entry)
            continue
        binary = requested.binary if requested is not None and requested.binary is not None else default_binary
        if binary:
            raw = raw_from_array(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif array.dtype.kind in "OSU":
            entry["data"] = codec.array_to_json(array)
        else:
            entry["data"] = array.ravel()
        entries.append(entry)
    header: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        header["id"] = response.id
    header["outputs"] = entries
    payload = orjson.dumps(header, option=NUMPY_JSON)
    return [payload, *blobs], len(payload) if blobs else None


def infer_response(parts: list[bytes], header_length: int | None) -> Response:
    """encode_infer_response's answer as a Starlette response."""
    if header_length is None:
        return Response(parts[0], media_type=JSON)
    return Response(
        b"".join(parts),
        media_type=BINARY,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


def tensor_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


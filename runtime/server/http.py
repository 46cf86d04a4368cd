"""KServe V2 over HTTP/REST (Starlette on uvicorn): JSON and the binary tensor extension.

A thin adapter: decode to `InferRequest`, call the engine, encode the `InferResponse`.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import logging
import math
import re
import socket
import ssl
import zlib
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Sequence

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from runtime import codec
from runtime.config import Settings
from runtime.engine import Engine
from runtime.errors import Code, InvalidInput, PayloadTooLarge, RuntimeServingError, quoted
from runtime.repository.model_config import config_to_json
from runtime.tensors import array_from_json, array_from_raw, raw_from_array
from runtime.types import DATATYPE_TO_NUMPY, Array, InferRequest, InferResponse, RequestedOutput, TensorSpec, datatype_of

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"
STATUS_BY_CODE = {
    Code.INVALID_ARGUMENT: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.FAILED_PRECONDITION: 409,
    Code.TOO_LARGE: 413,
    Code.CANCELLED: 499,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.RESOURCE_EXHAUSTED: 503,
    Code.DEADLINE_EXCEEDED: 504,
}
_JSON = "application/json"
_NUMPY_JSON = orjson.OPT_SERIALIZE_NUMPY

Handler = Callable[[Request], Awaitable[Response]]


def error_response(status: int, message: str) -> Response:
    # Both tritonclients parse {"error": "..."} out of any non-200 answer.
    return Response(orjson.dumps({"error": message}), status_code=status, media_type=_JSON)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=_NUMPY_JSON), status_code=status, media_type=_JSON)


def answers_errors(handler: Handler) -> Handler:
    """Map core errors to HTTP statuses; anything unexpected is a 500 that names the failure."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except RuntimeServingError as exc:
            return error_response(STATUS_BY_CODE[exc.code], exc.message)
        except ClientDisconnect:  # gone mid-body (or cut off as too slow): nobody to answer
            return error_response(STATUS_BY_CODE[Code.CANCELLED], "client disconnected")
        except Exception as exc:  # never let one request take the server down
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    return wrapped


# ---- request decoding ---------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and _digits(declared) and (len(declared) > 19 or int(declared) > limit):
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        body = _decompress(body, encoding, limit)
    elif encoding not in ("", "identity"):
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
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


def _no_shared_memory(params: dict[str, Any], tensor: str) -> None:
    # Refused rather than ignored: an output answered inline is not where the client reads it.
    named = [key for key in _SHARED_MEMORY if key in params]
    if named:
        raise InvalidInput(
            f"{tensor}: parameters.{named[0]} asks for shared memory, which this server does not support "
            "yet; send the data in the request (JSON or the binary extension) instead"
        )


def decode_infer_request(doc: Any, binary: memoryview, model: str, version: str) -> InferRequest:
    _expect(doc, dict, "the request body")
    raw_inputs = _expect(doc.get("inputs"), list, "'inputs'")
    offset = 0
    inputs: dict[str, Array] = {}
    for position, raw in enumerate(raw_inputs):
        _expect(raw, dict, f"inputs[{position}]")
        name = _expect(raw.get("name"), str, f"inputs[{position}].name")
        tensor = f"input {quoted(name)}"
        datatype = _expect(raw.get("datatype"), str, f"{tensor}: 'datatype'")
        if datatype not in DATATYPE_TO_NUMPY:
            raise InvalidInput(f"{tensor}: unknown datatype {quoted(datatype)} (one of {', '.join(DATATYPE_TO_NUMPY)})")
        shape = _expect(raw.get("shape"), list, f"{tensor}: 'shape'")
        for dim in shape:
            _expect(dim, int, f"{tensor}: every 'shape' entry")
        if name in inputs:
            raise InvalidInput(f"{tensor} appears twice")
        params = _expect(raw.get("parameters", {}), dict, f"{tensor}: 'parameters'")
        _no_shared_memory(params, tensor)
        size = params.get("binary_data_size")
        if size is not None:
            _expect(size, int, f"{tensor}: binary_data_size")
            if size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"{tensor}: binary_data_size {size} at offset {offset} runs past the "
                    f"{len(binary)} bytes of binary data"
                )
            inputs[name] = array_from_raw(binary[offset : offset + size], datatype, shape, name)
            offset += size
        elif "data" in raw:
            inputs[name] = array_from_json(raw["data"], datatype, shape, name)
        else:
            raise InvalidInput(f"{tensor} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the last input's data")

    params = _expect(doc.get("parameters", {}), dict, "'parameters'")
    default_binary = params.get("binary_data_output")
    if default_binary is not None:
        _expect(default_binary, bool, "parameters.binary_data_output")
    requested: list[RequestedOutput] | None = None
    if doc.get("outputs") is not None:
        requested = []
        for position, raw in enumerate(_expect(doc["outputs"], list, "'outputs'")):
            _expect(raw, dict, f"outputs[{position}]")
            name = _expect(raw.get("name"), str, f"outputs[{position}].name")
            tensor = f"output {quoted(name)}"
            out_params = _expect(raw.get("parameters", {}), dict, f"{tensor}: 'parameters'")
            _no_shared_memory(out_params, tensor)
            binary_flag = out_params.get("binary_data", default_binary)
            if binary_flag is not None:
                _expect(binary_flag, bool, f"{tensor}: parameters.binary_data")
            classification = _expect(out_params.get("classification", 0), int, f"{tensor}: parameters.classification")
            if classification < 0:
                raise InvalidInput(f"{tensor}: parameters.classification must be >= 0, got {classification}")
            requested.append(RequestedOutput(name, binary_flag, classification))
    # null is no id (tritonclient never sends one; others write null for "none")
    request_id = doc.get("id")
    if request_id is not None:
        _expect(request_id, str, "'id'")
    return InferRequest(
        model_name=model,
        model_version=version,
        inputs=inputs,
        requested_outputs=requested,
        id=request_id or "",
        protocol="http",
        parameters={k: v for k, v in params.items() if k != "binary_data_output"} | (
            {"binary_data_output": bool(default_binary)} if default_binary is not None else {}
        ),
    )


# ---- response encoding --------------------------------------------------------------------------


def encode_infer_response(response: InferResponse, default_binary: bool) -> Response:
    wanted = {o.name: o for o in response.requested_outputs or ()}
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in response.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        requested = wanted.get(name)
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
    payload = orjson.dumps(header, option=_NUMPY_JSON)
    if not blobs:
        return Response(payload, media_type=_JSON)
    return Response(
        b"".join([payload, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(payload))},
    )


def tensor_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


# ---- the app ----------------------------------------------------------------------------------


def build_app(engine: Engine, settings: Settings, extensions: Sequence[BaseRoute] = ()) -> Any:
    limit = settings.max_request_bytes

    # The V2 spec's health answers are JSON objects (the KServe SDK parses them; tritonclient reads
    # only the status), the 503s too.
    async def live(request: Request) -> Response:
        alive = engine.live()
        return json_response({"live": alive}, 200 if alive else 503)

    async def ready(request: Request) -> Response:
        is_ready = engine.ready()
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    @answers_errors
    async def server_metadata(request: Request) -> Response:
        name, version, extensions = engine.server_metadata()
        return json_response({"name": name, "version": version, "extensions": extensions})

    @answers_errors
    async def model_metadata(request: Request) -> Response:
        model, version = _model_and_version(request)
        meta = engine.model_metadata(model, version)
        return json_response(
            {
                "name": meta.name,
                "versions": meta.versions,
                "platform": meta.platform,
                "inputs": [tensor_json(t) for t in meta.inputs],
                "outputs": [tensor_json(t) for t in meta.outputs],
                "parameters": {"execution_providers": ",".join(meta.execution_providers)},
            }
        )

    @answers_errors
    async def model_ready(request: Request) -> Response:
        model, version = _model_and_version(request)
        engine.registry.record(model, version)  # 404 for unknown models and versions
        is_ready = engine.model_ready(model, version)
        return json_response({"name": model, "ready": is_ready}, 200 if is_ready else 503)

    @answers_errors
    async def model_config(request: Request) -> Response:
        model, version = _model_and_version(request)
        return json_response(config_to_json(engine.model_config(model, version)))

    @answers_errors
    async def infer(request: Request) -> Response:
        model, version = _model_and_version(request)
        body = await read_body(request, limit)
        try:
            doc, binary = split_body(body, request.headers.get(HEADER_LENGTH))
            infer_request = decode_infer_request(doc, binary, model, version)
        except InvalidInput as exc:  # the engine's messages name the model; say it here too
            raise InvalidInput(f"model {quoted(model)}: {exc.message}") from None
        default_binary = bool(infer_request.parameters.pop("binary_data_output", False))
        with _cancelled_on_disconnect(request):
            response = await engine.infer(infer_request)
        return encode_infer_response(response, default_binary)

    model_routes = [
        ("", model_metadata, ["GET"]),
        ("/ready", model_ready, ["GET"]),
        ("/config", model_config, ["GET"]),
        ("/infer", infer, ["POST"]),
    ]
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
    ]
    for suffix, handler, methods in model_routes:
        routes.append(Route("/v2/models/{model}" + suffix, handler, methods=methods))
        routes.append(Route("/v2/models/{model}/versions/{version}" + suffix, handler, methods=methods))
    # Extensions first: their fixed paths (GET /v2/models/stats) must win over /v2/models/{model}.
    return _with_infer_fast_path(Starlette(routes=[*extensions, *routes]), infer)


_INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


def _with_infer_fast_path(app: Starlette, infer: Handler) -> Any:
    """ASGI app: POST .../infer goes straight to its handler; everything else through Starlette.

    Starlette's linear route scan and its two exception middlewares cost about 100 us of event-loop
    CPU per request on a 2-core machine (bench/profile.py); the infer handler answers its own
    errors (answers_errors), so they add nothing there.
    """

    async def route(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                scope["path_params"] = {key: value for key, value in match.groupdict().items() if value is not None}
                response = await infer(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await app(scope, receive, send)

    return route


def _model_and_version(request: Request) -> tuple[str, str]:
    params = request.path_params
    return params["model"], params.get("version", "")


@contextlib.contextmanager
def _cancelled_on_disconnect(request: Request) -> Iterator[None]:
    """Cancel the handler if the client goes away, so its request leaves the queue unserved."""
    handler = asyncio.current_task()
    assert handler is not None

    async def watch() -> None:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handler.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


def openapi_route() -> Route:
    """GET /v2/openapi.yaml: the OpenAPI description of our HTTP endpoints (runtime/server/openapi.yaml)."""
    document = (Path(__file__).parent / "openapi.yaml").read_bytes()

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/yaml")

    return Route("/v2/openapi.yaml", openapi, methods=["GET"])


# ---- serving ------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the app's shutdown sequence owns the signals."""

    drained: bool = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        # uvicorn cancels the requests still running when its grace period is over; they are
        # still in the set right after (a cancelled task needs a loop turn to finish).
        self.drained = not self.server_state.tasks


_OVERLOADED = orjson.dumps({"error": "too many concurrent HTTP connections or requests; retry later"})


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", _JSON.encode()),
                (b"content-length", str(len(_OVERLOADED)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _OVERLOADED})


_SHUTTING_DOWN = orjson.dumps({"error": "server shutting down: the request did not finish within the grace period"})


def _answers_cancellation(app: Any) -> Any:
    """ASGI wrapper: a request cancelled by uvicorn when the grace period runs out is answered 503 in
    JSON, and one cancelled because its client went away ends quietly, instead of uvicorn's
    'Exception in ASGI application' traceback and text 500 for both.
    """

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if scope["type"] != "http" or task is None:
                raise
            if hasattr(task, "uncancel"):  # Python >= 3.11: this task goes on to answer
                task.uncancel()
            if not started:
                headers = [(b"content-type", _JSON.encode()), (b"connection", b"close")]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": _SHUTTING_DOWN})

    return wrapped


class _ConnectionFlow(FlowControl):
    """uvicorn's flow control, except that reading resumes only when the connection's gate allows it.

    uvicorn resumes reading on every `receive()` and after every response, whatever is queued: a
    client that pipelines requests and never reads the answers had its requests parsed and queued
    without bound (hundreds of thousands, GBs of RSS).
    """

    def __init__(self, transport: asyncio.Transport, gate: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._gate = gate

    def resume_reading(self) -> None:
        if self.read_paused and self._gate():
            super().resume_reading()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits it lacks against slow or stalled clients.

    - A request's headers and body must arrive within `request_timeout_s` of its first byte (of the
      connection, for the first request): slowloris clients get 408 and are disconnected.
    - Headers larger than `max_header_bytes` get 431 (httptools itself buffers them without bound).
    - A client that stops reading its answer for `request_timeout_s` is disconnected.
    - Beyond `max_connections` connections, or as many running requests, requests are answered
      503 with our JSON error at once (uvicorn's own limit answers text and logs each one).
    - Per-connection flow control: while `max_pipelined` requests wait behind the one being answered,
      or the transport's write buffer is above its high-water mark (the client is not reading), the
      connection is not read, and bytes already read are held unparsed; a greedy pipelining client
      is held to a few requests and one read's worth of bytes, and other connections are served.
      What a connection holds is dropped when it closes.
    Idle keep-alive connections are uvicorn's `timeout_keep_alive`.
    """

    request_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 4096
    max_pipelined: int = 4
    # Bytes handed to the parser at a time: it cannot stop inside a buffer, so the pipeline may
    # overshoot `max_pipelined` by at most the requests that fit in one piece.
    feed_bytes: int = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # enforced below, answered in JSON
        self._read_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._reading_headers = True
        self._discarding = False  # answered and closing: input is read and dropped
        self._held = bytearray()  # read but not parsed while the connection is backed up
        self._release_scheduled = False

    @classmethod
    def configured(
        cls, request_timeout_s: float, max_header_bytes: int, max_connections: int
    ) -> type[GuardedHttpToolsProtocol]:
        """A subclass with these limits (uvicorn makes one protocol object per connection)."""

        class Configured(cls):  # type: ignore[valid-type,misc]
            pass

        Configured.request_timeout_s = request_timeout_s
        Configured.max_header_bytes = max_header_bytes
        Configured.max_connections = max_connections
        return Configured

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _ConnectionFlow(transport, self._may_read)
        self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._read_deadline, self._write_deadline):
            if handle is not None:
                handle.cancel()
        self._read_deadline = self._write_deadline = None
        super().connection_lost(exc)
        # Queued requests reference this protocol (their cycles' on_response) and it them: without
        # this they wait for the cyclic garbage collector, which an idle server may not run for long.
        self.pipeline.clear()
        self._held = bytearray()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._held:  # backed up: keep the bytes in order behind those already held
            self._held += data
            self.flow.pause_reading()
            return
        self._feed(memoryview(data))

    def _feed(self, data: memoryview) -> None:
        step = self.feed_bytes
        while data:
            if self._backed_up():
                self._held = bytearray(data)
                self.flow.pause_reading()
                return
            piece, data = data[:step], data[step:]
            if self._reading_headers:
                self._header_bytes += len(piece)
            super().data_received(piece)  # type: ignore[arg-type]  # httptools takes any buffer
            if self._reading_headers and self._header_bytes > self.max_header_bytes:
                self._refuse(431, f"request headers exceed {self.max_header_bytes} bytes")
            if self._discarding or self.transport.is_closing():
                return

    def _backed_up(self) -> bool:
        return len(self.pipeline) >= self.max_pipelined or self.flow.write_paused

    def _may_read(self) -> bool:
        """The flow-control gate: False keeps the transport paused; held bytes are parsed first."""
        if self._backed_up() or self.transport.is_closing():
            return False
        if self._held:
            if not self._release_scheduled:
                # Not from inside uvicorn's callbacks (receive(), on_response_complete): parsing
                # starts new requests, so do it from the loop.
                self._release_scheduled = True
                self.loop.call_soon(self._release_held)
            return False
        return True

    def _release_held(self) -> None:
        self._release_scheduled = False
        if self.transport.is_closing() or self._discarding or self._backed_up():
            return
        held, self._held = self._held, bytearray()
        self._feed(memoryview(held))
        self.flow.resume_reading()  # the gate decides again

    def on_response_complete(self) -> None:
        super().on_response_complete()  # resumes reading (refused while full), then starts the next
        if not self.transport.is_closing():
            self.flow.resume_reading()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:
            self._arm_read_deadline()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes = 0
        busy = len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections
        app = self.app
        if busy:
            self.app = _overloaded
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        self._reading_headers = True

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.request_timeout_s, self._stalled_reader)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        if not self.transport.is_closing():
            self.flow.resume_reading()

    def _arm_read_deadline(self) -> None:
        self._read_deadline = self.loop.call_later(self.request_timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._held:  # the client sent it; we are the ones not reading
            self._arm_read_deadline()
            return
        waiting_for_body = self.cycle is not None and not self.cycle.response_complete
        if not waiting_for_body and not self._header_bytes:
            self.transport.close()  # connected, never sent a byte: like an idle keep-alive
            return
        self._refuse(408, f"request headers and body not received within {self.request_timeout_s:g}s")

    def _refuse(self, status: int, message: str) -> None:
        if self.transport.is_closing() or self._discarding:
            return
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        if not self._reading_headers and self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # the app is answering already: cut it short
            return
        body = orjson.dumps({"error": message})
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        # Close our side but read (and drop) what the client still sends for a moment: closing with
        # unread input makes the kernel reset the connection, and the client may lose our answer.
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)
        else:
            self.transport.close()

    def _stalled_reader(self) -> None:
        self._write_deadline = None
        self.transport.abort()  # close() would wait for the buffer to drain, which it never does


def tls_files(settings: Settings) -> tuple[str, str, str | None] | None:
    """(certificate, key, client CA or None) when TLS is configured; an error if half of it is."""
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None and client_ca is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert-file and --tls-key-file (--tls-client-ca-file is optional)")
    return str(cert), str(key), str(client_ca) if client_ca is not None else None


class AsgiServer:
    """One ASGI app served by uvicorn on its own socket, inside the running event loop.

    With `tls` and TLS files in the settings it serves HTTPS, requiring client certificates signed
    by --tls-client-ca-file when that is set.
    """

    def __init__(self, app: Any, address: str, port: int, settings: Settings, *, tls: bool = True) -> None:
        files = tls_files(settings) if tls else None
        tls_options: dict[str, Any] = {}
        if files is not None:
            cert, key, client_ca = files
            tls_options = {"ssl_certfile": cert, "ssl_keyfile": key}
            if client_ca is not None:
                tls_options |= {"ssl_ca_certs": client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        protocol = GuardedHttpToolsProtocol.configured(
            request_timeout_s=settings.http_header_timeout_secs,
            max_header_bytes=64 * 1024,
            max_connections=settings.http_max_connections,
        )
        config = uvicorn.Config(
            _answers_cancellation(app),
            loop="none",
            http=protocol,
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_keep_alive=max(1, math.ceil(settings.http_keep_alive_timeout_secs)),
            timeout_graceful_shutdown=max(1, math.ceil(settings.exit_timeout_secs)),
            **tls_options,
        )
        config.load()  # a bad certificate or key fails here, before anything is bound
        self.tls = files is not None
        self._socket = _bind(address, port)
        self.port: int = self._socket.getsockname()[1]
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self, deadline: float | None = None) -> bool:
        """Stop accepting, let in-flight requests finish until `deadline` (the loop's clock, which is
        time.monotonic()), answer the rest 503, then close. Without a deadline: --exit-timeout-secs.

        True when every request finished in time.
        """
        loop = asyncio.get_running_loop()
        if deadline is not None:
            # uvicorn sleeps 0.1 s before it starts waiting; its wait is what is left after that.
            self._server.config.timeout_graceful_shutdown = max(0.1, deadline - loop.time() - 0.1)  # type: ignore[assignment]
        self._server.should_exit = True
        if self._task is not None:
            limit = None if deadline is None else max(0.5, deadline - loop.time() + 0.5)
            done, _ = await asyncio.wait({self._task}, timeout=limit)
            if not done:  # uvicorn itself is stuck: its connections die with the process
                return False
        return self._server.drained


def http_server(engine: Engine, settings: Settings, extensions: Sequence[BaseRoute] = ()) -> AsgiServer:
    return AsgiServer(build_app(engine, settings, extensions), settings.http_address, settings.http_port, settings)


def _bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock

"""KServe V2 over gRPC (grpc.aio): inference.GRPCInferenceService and grpc.health.v1.

A thin adapter: protobuf -> `InferRequest`, engine.infer, `InferResponse` -> protobuf. Requests
arrive as bytes and are parsed here, so a malformed message is INVALID_ARGUMENT, not INTERNAL.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runtime.config import Settings
from runtime.engine import Engine
from runtime.errors import Code, InvalidInput, RuntimeServingError, quoted
from runtime.server._pb import grpc_service_pb2 as pb
from runtime.tensors import array_from_raw, check_shape, element_count, numpy_dtype, raw_from_array
from runtime.types import Array, InferRequest, InferResponse, RequestedOutput, TensorSpec, datatype_of

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
STATUS_BY_CODE = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.CANCELLED: grpc.StatusCode.CANCELLED,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}

# InferTensorContents field for each datatype (narrow types travel in their family's 32-bit field).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
ALL_CONTENTS_FIELDS = tuple(sorted(set(CONTENTS_FIELD.values())))

# Parameters that ask for Triton's shared-memory extension, which this server does not offer yet:
# refused, never silently answered inline.
SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

# Requests one ModelStreamInfer stream may have running or answered-but-unwritten at once.
STREAM_MAX_PENDING = 64

Unary = Callable[[Any, bytes, grpc.aio.ServicerContext], Awaitable[Message]]


def parse(message_type: type[Message], raw: bytes) -> Any:
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise InvalidInput(f"malformed {message_type.DESCRIPTOR.name} protobuf: {exc}") from None


def answers_errors(handler: Unary) -> Unary:
    """Map core errors to gRPC status codes; anything unexpected is INTERNAL naming the failure."""

    @functools.wraps(handler)
    async def wrapped(self: Any, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        try:
            return await handler(self, raw, context)
        except RuntimeServingError as exc:
            await context.abort(STATUS_BY_CODE[exc.code], exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("unhandled error in %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: abort raises")

    return wrapped


# ---- decoding -----------------------------------------------------------------------------------


def _param_value(param: pb.InferParameter) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def _refuse_shared_memory(kind: str, name: str, parameters: Any) -> None:
    for key in SHARED_MEMORY_PARAMETERS:
        if key in parameters:
            raise InvalidInput(
                f"{kind} {quoted(name)}: parameter {key!r} asks for shared memory, which is not supported yet; "
                "send the data in the request (raw_input_contents or contents) and read outputs from the response"
            )


def decode_infer_request(request: pb.ModelInferRequest, deadline: float | None) -> InferRequest:
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw_contents)} entries for {len(request.inputs)} inputs; "
            "give one per input, or none"
        )
    inputs: dict[str, Array] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {quoted(name)} appears twice")
        _refuse_shared_memory("input", name, tensor.parameters)
        if raw_contents:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {quoted(name)} has both contents and raw_input_contents; send one of them")
            inputs[name] = array_from_raw(raw_contents[index], tensor.datatype, tensor.shape, name)
        else:
            inputs[name] = _array_from_contents(tensor, name)
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for output in request.outputs:
        if output.name in seen:
            raise InvalidInput(f"output {quoted(output.name)} is requested twice")
        seen.add(output.name)
        _refuse_shared_memory("output", output.name, output.parameters)
        classification = (
            _classification(output.parameters["classification"], output.name)
            if "classification" in output.parameters
            else 0
        )
        requested.append(RequestedOutput(output.name, classification=classification))
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        inputs=inputs,
        requested_outputs=requested or None,
        id=request.id,
        parameters={key: _param_value(value) for key, value in request.parameters.items()},
        deadline=deadline,
        protocol="grpc",
    )


def _classification(param: pb.InferParameter, output: str) -> int:
    value = _param_value(param) or 0
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(
            f"output {quoted(output)}: parameter 'classification' must be a non-negative integer, got {quoted(value)}"
        )
    return value


def _array_from_contents(tensor: pb.ModelInferRequest.InferInputTensor, name: str) -> Array:
    shape = check_shape(tensor.shape, name)
    dtype = numpy_dtype(tensor.datatype, name)
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(
            f"input {quoted(name)}: datatype {tensor.datatype} can only be sent as raw_input_contents"
        )
    given = [other for other in ALL_CONTENTS_FIELDS if len(getattr(tensor.contents, other))]
    if len(given) > 1:
        raise InvalidInput(
            f"input {quoted(name)}: contents has values in {len(given)} fields ({', '.join(given)}); "
            f"a {tensor.datatype} tensor sends them in contents.{field} only"
        )
    if given and given[0] != field:
        raise InvalidInput(
            f"input {quoted(name)}: values sent in contents.{given[0]}, but a {tensor.datatype} tensor "
            f"sends them in contents.{field}"
        )
    values = getattr(tensor.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input {quoted(name)}: {len(values)} values in contents.{field}, but shape {list(shape)} needs {count}"
        )
    if tensor.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    source = np.asarray(values)
    if dtype.kind in "iu" and source.size:
        info = np.iinfo(dtype)
        if source.min() < info.min or source.max() > info.max:
            raise InvalidInput(
                f"input {quoted(name)}: a value in contents.{field} is out of range for {tensor.datatype}"
            )
    return source.astype(dtype, copy=False).reshape(shape)


# ---- encoding -----------------------------------------------------------------------------------


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        message.raw_output_contents.append(raw_from_array(array))
    return message


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


# ---- the service --------------------------------------------------------------------------------


class InferenceService:
    def __init__(self, engine: Engine, stream_max_pending: int = STREAM_MAX_PENDING) -> None:
        self.engine = engine
        self.stream_max_pending = stream_max_pending

    @answers_errors
    async def ServerLive(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        parse(pb.ServerLiveRequest, raw)
        return pb.ServerLiveResponse(live=self.engine.live())

    @answers_errors
    async def ServerReady(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        parse(pb.ServerReadyRequest, raw)
        return pb.ServerReadyResponse(ready=self.engine.ready())

    @answers_errors
    async def ModelReady(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.ModelReadyRequest, raw)
        return pb.ModelReadyResponse(ready=self.engine.model_ready(request.name, request.version))

    @answers_errors
    async def ServerMetadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        parse(pb.ServerMetadataRequest, raw)
        name, version, extensions = self.engine.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @answers_errors
    async def ModelMetadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.ModelMetadataRequest, raw)
        meta = self.engine.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[_tensor_metadata(t) for t in meta.inputs],
            outputs=[_tensor_metadata(t) for t in meta.outputs],
        )

    @answers_errors
    async def ModelConfig(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.ModelConfigRequest, raw)
        return pb.ModelConfigResponse(config=self.engine.model_config(request.name, request.version))

    @answers_errors
    async def ModelInfer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.ModelInferRequest, raw)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        response = await self.engine.infer(decode_infer_request(request, deadline))
        return encode_infer_response(response)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request of the stream is answered as soon as it is done; errors travel in the stream.

        Back-pressure: a stream holds at most `stream_max_pending` requests that are running or whose
        answers wait to be written. Past that the next request is not read until an answer has been
        written, so a client that sends and never reads stalls in gRPC flow control instead of
        growing the server's memory.
        """
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.stream_max_pending)
        pending: set[asyncio.Task[None]] = set()

        async def answer(raw: bytes) -> None:
            request: pb.ModelInferRequest | None = None
            try:
                request = parse(pb.ModelInferRequest, raw)
                response = await self.engine.infer(decode_infer_request(request, None))
                await answers.put(pb.ModelStreamInferResponse(infer_response=encode_infer_response(response)))
            except RuntimeServingError as exc:
                await answers.put(_stream_error(request, exc.message))
            except Exception as exc:
                log.exception("unhandled error in ModelStreamInfer")
                await answers.put(_stream_error(request, f"internal error: {type(exc).__name__}: {exc}"))

        async def read_all() -> None:
            iterator = requests.__aiter__()
            while True:
                await slots.acquire()
                try:
                    raw = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                task = asyncio.get_running_loop().create_task(answer(raw))
                pending.add(task)
                task.add_done_callback(pending.discard)
            while pending:
                await asyncio.gather(*list(pending))
            await answers.put(None)

        reader = asyncio.get_running_loop().create_task(read_all())
        try:
            while (item := await answers.get()) is not None:
                yield item
                # Resumed: gRPC took the answer, so the stream may read one more request.
                slots.release()
            await reader
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()


def _stream_error(request: pb.ModelInferRequest | None, message: str) -> pb.ModelStreamInferResponse:
    """An error reply in a stream, carrying the request's id (and model) so the client can match it."""
    if request is None:  # not even parseable: nothing to echo
        return pb.ModelStreamInferResponse(error_message=message)
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def unary_handlers(service: object, names: Sequence[str]) -> dict[str, grpc.RpcMethodHandler]:
    """Bytes-in handlers for the named methods of `service` (each decorated with answers_errors)."""
    return {
        name: grpc.unary_unary_rpc_method_handler(getattr(service, name), response_serializer=_serialize)
        for name in names
    }


def generic_handler(handlers: dict[str, grpc.RpcMethodHandler]) -> grpc.GenericRpcHandler:
    """Handlers for some methods of inference.GRPCInferenceService; extensions add their own."""
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _inference_handler(service: InferenceService) -> grpc.GenericRpcHandler:
    handlers = unary_handlers(
        service,
        ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer"),
    )
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        service.ModelStreamInfer, response_serializer=_serialize
    )
    return generic_handler(handlers)


class _Activity:
    """What one bidirectional stream has been doing: requests read, answers written, last of either."""

    __slots__ = ("answered", "last", "received")

    def __init__(self) -> None:
        self.received = 0
        self.answered = 0
        self.last = time.monotonic()

    @property
    def idle(self) -> bool:
        return self.answered >= self.received


class StreamGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Ends a bidirectional stream that has nothing pending and has sent no request for `idle_timeout_s`
    (DEADLINE_EXCEEDED), and, once the server is stopping, one with nothing pending (UNAVAILABLE), so an
    idle stream pins neither a call slot nor the shutdown. Streams with answers pending go on as usual.
    """

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._stopping: asyncio.Event | None = None  # made inside the running loop

    def _stop_event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    def stop(self) -> None:
        self._stop_event().set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.stream_stream is None:
            return handler
        return grpc.stream_stream_rpc_method_handler(
            self._guarded(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guarded(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def counted(requests: AsyncIterator[Any], activity: _Activity) -> AsyncIterator[Any]:
            async for request in requests:
                activity.received += 1
                activity.last = time.monotonic()
                yield request

        async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            activity = _Activity()
            answers = behavior(counted(requests, activity), context).__aiter__()
            stopping = asyncio.ensure_future(self._stop_event().wait())
            try:
                while True:
                    step = asyncio.ensure_future(answers.__anext__())
                    ended = await self._wait(step, stopping, activity)
                    if ended is not None:
                        step.cancel()
                        try:
                            await step
                        except (asyncio.CancelledError, StopAsyncIteration):
                            pass
                        await context.abort(*ended)
                    try:
                        answer = step.result()
                    except StopAsyncIteration:
                        return
                    activity.answered += 1
                    activity.last = time.monotonic()
                    yield answer
            finally:
                stopping.cancel()

        return guarded

    async def _wait(
        self, step: asyncio.Future[Any], stopping: asyncio.Future[Any], activity: _Activity
    ) -> tuple[grpc.StatusCode, str] | None:
        """Wait for the next answer; a (code, message) to end the stream with instead, if it should end."""
        while not step.done():
            timeout: float | None = None
            if activity.idle:
                if stopping.done():
                    return grpc.StatusCode.UNAVAILABLE, "server shutting down; reopen the stream on another server"
                timeout = activity.last + self.idle_timeout_s - time.monotonic()
                if timeout <= 0:
                    return (
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"stream idle for {self.idle_timeout_s:g}s with nothing pending; reopen it to send more",
                    )
            waiting = (step,) if stopping.done() else (step, stopping)
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return None


# At the end of the drain: how long the calls just ended get to send their UNAVAILABLE.
STOP_GRACE_S = 0.5

_SHUTTING_DOWN = "server shutting down; retry the call on another server"
_GRACE_OVER = "server shutting down: the call did not finish within the grace period; retry it"


class Drain(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Shutdown without CANCELLED: once draining, a new call is answered UNAVAILABLE (clients retry
    that) while the port stays open; calls already accepted run on; when the grace period is over
    those still running are ended with UNAVAILABLE by us, before grpc's own stop would cancel them.

    Health checks pass through untracked: a probe must see NOT_SERVING during the drain, and a
    Watch must not hold the shutdown.
    """

    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self._calls: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None  # made inside the running loop

    def _idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if not self._calls:
                self._idle.set()
        return self._idle

    def start(self) -> None:
        self.draining = True

    async def wait(self, timeout_s: float) -> bool:
        """True when every accepted call finished within timeout_s."""
        try:
            await asyncio.wait_for(self._idle_event().wait(), max(0.0, timeout_s))
        except TimeoutError:
            return False
        return True

    def expire(self) -> None:
        """End the calls still running: each answers UNAVAILABLE (see _track)."""
        self.expired = True
        for task in list(self._calls):
            task.cancel()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or method.startswith("/grpc.health.v1.Health/"):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _enter(self) -> asyncio.Task[Any] | None:
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
            self._idle_event().clear()
        return task

    def _leave(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._calls.discard(task)
        if not self._calls:
            self._idle_event().set()

    def _unary(self, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def drained(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.draining:
                await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
            task = self._enter()
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                if not self.expired:
                    raise  # the client went away
                await context.abort(grpc.StatusCode.UNAVAILABLE, _GRACE_OVER)
            finally:
                self._leave(task)

        return drained

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def drained(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if self.draining:
                await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
            task = self._enter()
            try:
                async for answer in behavior(requests, context):
                    yield answer
            except asyncio.CancelledError:
                if not self.expired:
                    raise
                await context.abort(grpc.StatusCode.UNAVAILABLE, _GRACE_OVER)
            finally:
                self._leave(task)

        return drained


class GrpcServer:
    """The gRPC endpoint: TLS (optionally mutual) when the settings name certificate files, and limits
    (the grpc_* settings) so idle or stalled clients cannot exhaust it.
    """

    def __init__(self, engine: Engine, settings: Settings, extensions: Sequence[grpc.GenericRpcHandler] = ()) -> None:
        limit = settings.max_request_bytes
        credentials = _server_credentials(settings)
        self._guard = StreamGuard(settings.grpc_stream_idle_timeout_secs)
        self._drain = Drain()
        self._server = grpc.aio.server(
            # Drain outermost: it answers a call refused during the drain before anything else runs.
            interceptors=[self._drain, self._guard],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", settings.grpc_max_streams_per_connection),
                # Idle or stalled connections cannot pin resources forever: a connection with no
                # call is closed after 5 minutes, a peer that stops answering pings after 80 s.
                ("grpc.max_connection_idle_ms", 5 * 60 * 1000),
                ("grpc.keepalive_time_ms", 60 * 1000),
                ("grpc.keepalive_timeout_ms", 20 * 1000),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        )
        self._server.add_generic_rpc_handlers((_inference_handler(InferenceService(engine)), *extensions))
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        host = settings.grpc_address
        address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
        self.tls = credentials is not None
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")

    async def start(self) -> None:
        await self._server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE):
            result = self.health.set(service, status)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self, deadline: float) -> bool:
        """Answer new calls UNAVAILABLE, end idle streams, let accepted calls run until `deadline`
        (time.monotonic()), then end those still running with UNAVAILABLE.

        True when every accepted call finished by the deadline. The port stays open, answering
        UNAVAILABLE, until the process exits (app.serve ends it with the OS closing the
        connections): grpc's own server.stop() resets the calls that arrive while it runs, and their
        clients see CANCELLED, which they do not retry.
        """
        self._drain.start()
        self._guard.stop()
        drained = await self._drain.wait(deadline - time.monotonic())
        if not drained:
            self._drain.expire()
            # The expired calls answer at once; this lets their statuses go out.
            await self._drain.wait(STOP_GRACE_S)
        return drained


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None and client_ca is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert-file and --tls-key-file (--tls-client-ca-file is optional)")
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )

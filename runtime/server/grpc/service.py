"""inference.GRPCInferenceService (grpc.aio): each method a thin adapter over the engine.

Handlers take the request as bytes (converters.parse), so a malformed message is INVALID_ARGUMENT.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import grpc
from google.protobuf.message import Message

from runtime.engine import EngineApi
from runtime.errors import Code, RuntimeServingError
from runtime._pb import grpc_service_pb2 as pb
from runtime.server.grpc.converters import decode_infer_request, encode_infer_response, parse, stream_error, tensor_metadata

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
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}


# Requests one ModelStreamInfer stream may have running or answered-but-unwritten at once.
STREAM_MAX_PENDING = 64

Unary = Callable[[Any, bytes, grpc.aio.ServicerContext], Awaitable[Message]]


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



class InferenceService:
    def __init__(
        self, engine: EngineApi, stream_max_pending: int = STREAM_MAX_PENDING, read_traceparent: bool = False
    ) -> None:
        self.engine = engine
        self.stream_max_pending = stream_max_pending
        self.read_traceparent = read_traceparent  # only while tracing is configured: metadata costs a lookup

    @answers_errors
    async def ServerLive(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        parse(pb.ServerLiveRequest, raw)
        return pb.ServerLiveResponse(live=await self.engine.live())

    @answers_errors
    async def ServerReady(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        parse(pb.ServerReadyRequest, raw)
        return pb.ServerReadyResponse(ready=await self.engine.ready())

    @answers_errors
    async def ModelReady(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.ModelReadyRequest, raw)
        return pb.ModelReadyResponse(ready=await self.engine.model_ready(request.name, request.version))

    @answers_errors
    async def ServerMetadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        parse(pb.ServerMetadataRequest, raw)
        name, version, extensions = await self.engine.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @answers_errors
    async def ModelMetadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.ModelMetadataRequest, raw)
        meta = await self.engine.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tensor_metadata(t) for t in meta.inputs],
            outputs=[tensor_metadata(t) for t in meta.outputs],
        )

    @answers_errors
    async def ModelConfig(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.ModelConfigRequest, raw)
        return pb.ModelConfigResponse(config=await self.engine.model_config(request.name, request.version))

    @answers_errors
    async def ModelInfer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.ModelInferRequest, raw)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        decoded = decode_infer_request(request, deadline)
        if self.read_traceparent:
            decoded.trace_parent = traceparent(context)
        response = await self.engine.infer(decoded)
        try:
            return encode_infer_response(response)
        finally:
            response.release()

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
        stream_parent = traceparent(context) if self.read_traceparent else ""  # one caller span for the stream
        pending: set[asyncio.Task[None]] = set()

        async def answer(raw: bytes) -> None:
            request: pb.ModelInferRequest | None = None
            try:
                request = parse(pb.ModelInferRequest, raw)
                decoded = decode_infer_request(request, None)
                decoded.trace_parent = stream_parent
                response = await self.engine.infer(decoded)
                try:
                    encoded = encode_infer_response(response)
                finally:
                    response.release()
                await answers.put(pb.ModelStreamInferResponse(infer_response=encoded))
            except RuntimeServingError as exc:
                await answers.put(stream_error(request, exc.message))
            except Exception as exc:
                log.exception("unhandled error in ModelStreamInfer")
                await answers.put(stream_error(request, f"internal error: {type(exc).__name__}: {exc}"))

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



def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def traceparent(context: grpc.aio.ServicerContext) -> str:
    """The caller's W3C traceparent from the call's metadata, or ""."""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            return value if isinstance(value, str) else value.decode()
    return ""


def unary_handlers(service: object, names: Sequence[str]) -> dict[str, grpc.RpcMethodHandler]:
    """Bytes-in handlers for the named methods of `service` (each decorated with answers_errors)."""
    return {
        name: grpc.unary_unary_rpc_method_handler(getattr(service, name), response_serializer=_serialize)
        for name in names
    }


def generic_handler(handlers: dict[str, grpc.RpcMethodHandler]) -> grpc.GenericRpcHandler:
    """Handlers for some methods of inference.GRPCInferenceService; extensions add their own."""
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def inference_handler(service: InferenceService) -> grpc.GenericRpcHandler:
    handlers = unary_handlers(
        service,
        ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer"),
    )
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        service.ModelStreamInfer, response_serializer=_serialize
    )
    return generic_handler(handlers)



"""Triton's system and CUDA shared-memory extensions over HTTP and gRPC.

HTTP: GET v2/{system,cuda}sharedmemory[/region/{name}]/status, POST .../region/{name}/register and
POST v2/{system,cuda}sharedmemory[/region/{name}]/unregister (no name: every region of the kind).
gRPC: SystemSharedMemory{Status,Register,Unregister} and CudaSharedMemory{Status,Register,Unregister}.

Thin adapters: the region table lives in the core (runtime/shm, owned by the engine), which also reads
and writes the tensors that requests place in shared memory.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.config import Settings
from runtime.errors import InvalidInput, quoted
from runtime._pb import grpc_service_pb2 as pb
from runtime.server.grpc.converters import parse
from runtime.server.grpc.service import answers_errors as grpc_answers_errors
from runtime.server.grpc.service import generic_handler, unary_handlers
from runtime.server.http.responses import answers_errors, json_response
from runtime.server.repository import _json_body
from runtime.shm import CudaRegionStatus, SharedMemoryApi, SystemRegionStatus


# ---- HTTP ---------------------------------------------------------------------------------------


def system_status_json(status: SystemRegionStatus) -> dict[str, Any]:
    return {"name": status.name, "key": status.key, "offset": status.offset, "byte_size": status.byte_size}


def cuda_status_json(status: CudaRegionStatus) -> dict[str, Any]:
    return {"name": status.name, "device_id": status.device_id, "byte_size": status.byte_size}


def _field(doc: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value: Any = doc.get(key, default)
    if value is None:
        raise InvalidInput(f"{where}: the request body needs {key!r}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInput(f"{where}: {key!r} must be a JSON {'string' if kind is str else 'integer'}, got {quoted(value)}")
    if isinstance(value, int) and value < 0:
        raise InvalidInput(f"{where}: {key!r} must be >= 0, got {value}")
    return value


def http_routes(api: SharedMemoryApi, settings: Settings) -> list[Route]:
    limit = settings.max_request_bytes

    @answers_errors
    async def system_status(request: Request) -> Response:
        regions = await api.system_shm_status(request.path_params.get("name", ""))
        return json_response([system_status_json(region) for region in regions])

    @answers_errors
    async def system_register(request: Request) -> Response:
        name = request.path_params["name"]
        where = f"system shared-memory region {quoted(name)}"
        doc = await _json_body(request, limit)
        key = _field(doc, "key", str, where)
        offset = _field(doc, "offset", int, where, default=0)
        byte_size = _field(doc, "byte_size", int, where)
        await api.system_shm_register(name, key, offset, byte_size)
        return json_response({})

    @answers_errors
    async def system_unregister(request: Request) -> Response:
        await api.system_shm_unregister(request.path_params.get("name", ""))
        return json_response({})

    @answers_errors
    async def cuda_status(request: Request) -> Response:
        regions = await api.cuda_shm_status(request.path_params.get("name", ""))
        return json_response([cuda_status_json(region) for region in regions])

    @answers_errors
    async def cuda_register(request: Request) -> Response:
        name = request.path_params["name"]
        where = f"CUDA shared-memory region {quoted(name)}"
        doc = await _json_body(request, limit)
        handle = doc.get("raw_handle")
        if not isinstance(handle, dict) or not isinstance(handle.get("b64"), str):
            raise InvalidInput(f"{where}: the request body needs 'raw_handle': {{'b64': the base64 cudaIpc handle}}")
        try:
            raw = base64.b64decode(handle["b64"], validate=True)
        except binascii.Error:
            raise InvalidInput(f"{where}: raw_handle.b64 is not base64") from None
        device_id = _field(doc, "device_id", int, where)
        byte_size = _field(doc, "byte_size", int, where)
        await api.cuda_shm_register(name, raw, device_id, byte_size)
        return json_response({})

    @answers_errors
    async def cuda_unregister(request: Request) -> Response:
        await api.cuda_shm_unregister(request.path_params.get("name", ""))
        return json_response({})

    routes = []
    for kind, status, register, unregister in (
        ("system", system_status, system_register, system_unregister),
        ("cuda", cuda_status, cuda_register, cuda_unregister),
    ):
        base = f"/v2/{kind}sharedmemory"
        routes += [
            Route(f"{base}/status", status, methods=["GET"]),
            Route(base + "/region/{name}/status", status, methods=["GET"]),
            Route(base + "/region/{name}/register", register, methods=["POST"]),
            Route(f"{base}/unregister", unregister, methods=["POST"]),
            Route(base + "/region/{name}/unregister", unregister, methods=["POST"]),
        ]
    return routes


# ---- gRPC ---------------------------------------------------------------------------------------


class SharedMemoryService:
    def __init__(self, api: SharedMemoryApi) -> None:
        self.api = api

    @grpc_answers_errors
    async def SystemSharedMemoryStatus(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.SystemSharedMemoryStatusRequest, raw)
        response = pb.SystemSharedMemoryStatusResponse()
        for region in await self.api.system_shm_status(request.name):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size
                )
            )
        return response

    @grpc_answers_errors
    async def SystemSharedMemoryRegister(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.SystemSharedMemoryRegisterRequest, raw)
        await self.api.system_shm_register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @grpc_answers_errors
    async def SystemSharedMemoryUnregister(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.SystemSharedMemoryUnregisterRequest, raw)
        await self.api.system_shm_unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @grpc_answers_errors
    async def CudaSharedMemoryStatus(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.CudaSharedMemoryStatusRequest, raw)
        response = pb.CudaSharedMemoryStatusResponse()
        for region in await self.api.cuda_shm_status(request.name):
            response.regions[region.name].CopyFrom(
                pb.CudaSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, device_id=region.device_id, byte_size=region.byte_size
                )
            )
        return response

    @grpc_answers_errors
    async def CudaSharedMemoryRegister(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.CudaSharedMemoryRegisterRequest, raw)
        await self.api.cuda_shm_register(request.name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @grpc_answers_errors
    async def CudaSharedMemoryUnregister(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.CudaSharedMemoryUnregisterRequest, raw)
        await self.api.cuda_shm_unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()


METHODS = (
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
)


def grpc_handler(api: SharedMemoryApi) -> grpc.GenericRpcHandler:
    return generic_handler(unary_handlers(SharedMemoryService(api), METHODS))

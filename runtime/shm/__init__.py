"""Triton's system and CUDA shared-memory extensions, in the core: the region table (regions.py), the
per-tensor reference parser (reference.py) and CUDA handles (cuda.py). The engine owns one RegionTable
and reads and writes tensors through each request's Lease; the transports (runtime/server/shm.py) only
decode the register/status/unregister calls and the tensors' parameters."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from runtime.shm.cuda import NEEDS_GPU
from runtime.shm.reference import PARAMETERS, parse_reference
from runtime.shm.regions import ALLOW_FLAG, CudaRegionStatus, Lease, RegionTable, SystemRegionStatus, stand_in


@runtime_checkable
class SharedMemoryApi(Protocol):
    """What the shared-memory routes call: the Engine (runtime/engine.py), or a stand-in forwarding to it."""

    async def system_shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None: ...
    async def system_shm_status(self, name: str = "") -> list[SystemRegionStatus]: ...
    async def system_shm_unregister(self, name: str = "") -> None: ...
    async def cuda_shm_register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None: ...
    async def cuda_shm_status(self, name: str = "") -> list[CudaRegionStatus]: ...
    async def cuda_shm_unregister(self, name: str = "") -> None: ...


__all__ = [
    "ALLOW_FLAG",
    "NEEDS_GPU",
    "PARAMETERS",
    "CudaRegionStatus",
    "Lease",
    "RegionTable",
    "SharedMemoryApi",
    "SystemRegionStatus",
    "parse_reference",
    "stand_in",
]

"""CUDA shared-memory regions: a client's device allocation, opened from its cudaIpc handle.

cuda-python's `cuda.bindings` opens and closes the handles where it is installed and a GPU is present;
without them registering answers that CUDA shared memory needs a GPU, while status and unregister (which
perf_analyzer calls at start and exit) work as ever. Tensors in CUDA regions are not read or written yet:
a request naming one is refused (runtime/shm/regions.py).
"""
from __future__ import annotations

import importlib
from typing import Any

from runtime.errors import Code, InvalidInput, RuntimeServingError, quoted

NEEDS_GPU = "CUDA shared memory needs a GPU"
HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)


def _cuda_runtime() -> Any:
    """cuda-bindings' runtime module, or the reason it cannot serve (no package, no driver, no device)."""
    try:
        cudart = importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        try:  # cuda-python before 12.6 spelled it cuda.cudart
            cudart = importlib.import_module("cuda.cudart")
        except ImportError:
            raise _no_gpu("cuda-python (cuda-bindings) is not installed") from None
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or count < 1:
        raise _no_gpu(f"no CUDA device is usable ({_name(cudart, error)})")
    return cudart


def _no_gpu(reason: str) -> RuntimeServingError:
    return RuntimeServingError(f"{NEEDS_GPU}: {reason}", Code.FAILED_PRECONDITION)


def _name(cudart: Any, error: Any) -> str:
    try:
        return str(cudart.cudaGetErrorName(error)[1].decode())
    except Exception:
        return str(error)


class CudaRegion:
    """An opened IPC handle: the device pointer this process sees for the client's allocation."""

    __slots__ = ("name", "device_id", "byte_size", "pointer", "_cudart")

    def __init__(self, name: str, device_id: int, byte_size: int, pointer: int, cudart: Any) -> None:
        self.name = name
        self.device_id = device_id
        self.byte_size = byte_size
        self.pointer = pointer
        self._cudart = cudart

    @classmethod
    def open(cls, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> CudaRegion:
        where = f"CUDA shared-memory region {quoted(name)}"
        cudart = _cuda_runtime()
        if len(raw_handle) != HANDLE_BYTES:
            raise InvalidInput(f"{where}: raw_handle has {len(raw_handle)} bytes; a cudaIpc handle has {HANDLE_BYTES}")
        if device_id < 0 or byte_size <= 0:
            raise InvalidInput(f"{where}: device_id must be >= 0 and byte_size > 0, got {device_id} and {byte_size}")
        (error,) = cudart.cudaSetDevice(device_id)
        if int(error) != 0:
            raise InvalidInput(f"{where}: device_id {device_id} is not usable: {_name(cudart, error)}")
        handle = cudart.cudaIpcMemHandle_t()
        handle.reserved = raw_handle
        error, pointer = cudart.cudaIpcOpenMemHandle(handle, cudart.cudaIpcMemLazyEnablePeerAccess)
        if int(error) != 0:
            raise InvalidInput(f"{where}: cudaIpcOpenMemHandle failed: {_name(cudart, error)}")
        return cls(name, device_id, byte_size, int(pointer), cudart)

    async def close(self) -> None:
        self._cudart.cudaIpcCloseMemHandle(self.pointer)

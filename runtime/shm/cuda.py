"""CUDA shared-memory regions: a client's device allocation, opened from its cudaIpc handle.

cuda-python's `cuda.bindings` opens and closes the handles where it is installed and a GPU is present;
without them registering answers that CUDA shared memory needs a GPU, while status and unregister (which
perf_analyzer calls at start and exit) work as ever. The tensors in a region are read and written through
its `CudaMemory` (runtime/backends/device.py): bound by pointer for a model on that GPU, copied across
explicitly for one on the CPU (runtime/shm/regions.py decides, runtime/backends/binding.py runs).
"""
from __future__ import annotations

import weakref
from typing import Any

from runtime.backends.device import NEEDS_GPU, CudaMemory, cuda_runtime, error_name
from runtime.errors import InvalidInput, quoted

HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)

__all__ = ["HANDLE_BYTES", "NEEDS_GPU", "IpcMapping", "open_handle"]


class IpcMapping:
    """An opened IPC handle: the device pointer this process sees for the client's allocation.

    The handle is closed when the last reference goes: the region drops its own at unregister (after
    the requests holding it have finished), and a batch still running for a cancelled request holds
    one through its tensors, so the memory is never closed under a kernel that reads it.
    """

    __slots__ = ("pointer", "memory", "_closer", "__weakref__")

    def __init__(self, pointer: int, memory: CudaMemory, cudart: Any) -> None:
        self.pointer = pointer
        self.memory = memory
        self._closer = weakref.finalize(self, _close, cudart, pointer)

    def close(self) -> None:
        self._closer()


def _close(cudart: Any, pointer: int) -> None:
    cudart.cudaIpcCloseMemHandle(pointer)  # nothing to do about a failure at close: the handle is gone either way


def open_handle(name: str, raw_handle: bytes, device_id: int, byte_size: int) -> IpcMapping:
    where = f"CUDA shared-memory region {quoted(name)}"
    cudart = cuda_runtime()
    if len(raw_handle) != HANDLE_BYTES:
        raise InvalidInput(f"{where}: raw_handle has {len(raw_handle)} bytes; a cudaIpc handle has {HANDLE_BYTES}")
    if device_id < 0 or byte_size <= 0:
        raise InvalidInput(f"{where}: device_id must be >= 0 and byte_size > 0, got {device_id} and {byte_size}")
    (error,) = cudart.cudaSetDevice(device_id)
    if int(error) != 0:
        raise InvalidInput(f"{where}: device_id {device_id} is not usable: {error_name(cudart, error)}")
    handle = cudart.cudaIpcMemHandle_t()
    handle.reserved = raw_handle
    error, pointer = cudart.cudaIpcOpenMemHandle(handle, cudart.cudaIpcMemLazyEnablePeerAccess)
    if int(error) != 0:
        raise InvalidInput(f"{where}: cudaIpcOpenMemHandle failed: {error_name(cudart, error)}")
    return IpcMapping(int(pointer), CudaMemory(device_id, cudart), cudart)

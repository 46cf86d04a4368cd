"""Memory that tensors live in, behind one small interface: the host's, or one CUDA device's.

The IO-binding executor (runtime/backends/binding.py) gathers batch rows and scatters output rows with
`transfer`, which picks the copy for the two memories involved. `HostMemory` is ctypes.memmove, so on a
machine without a GPU the very same executor runs with ORT's 'cpu' device and real pointers (system
shared memory bound by pointer). `CudaMemory` is the one adapter over cuda-python's `cuda.bindings`:
every call's returned error code is checked and becomes our ExecutionError; nothing else in the
server calls CUDA for memory (runtime/shm/cuda.py opens and closes IPC handles through `cuda_runtime`).
"""
from __future__ import annotations

import ctypes
import importlib
from typing import Any, Protocol

from runtime.errors import Code, ExecutionError, RuntimeServingError

NEEDS_GPU = "CUDA shared memory needs a GPU"
HOST_TYPE = "cpu"  # ORT's device names, as bind_input / bind_output take them
CUDA_TYPE = "cuda"


class DeviceMemory(Protocol):
    """Where a pointer points: ORT's device name and id, and copies within, into and out of it."""

    @property
    def device_type(self) -> str: ...

    @property
    def device_id(self) -> int: ...

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        """Both pointers in this memory."""
        ...

    def upload(self, dst: int, src: int, nbytes: int) -> None:
        """`dst` in this memory, `src` in the host's."""
        ...

    def download(self, dst: int, src: int, nbytes: int) -> None:
        """`dst` in the host's memory, `src` in this one."""
        ...

    def synchronize(self) -> None:
        """Wait until copies issued so far are complete (before ORT reads them, before a client does)."""
        ...


class HostMemory:
    """The process's own memory (system shared-memory mappings, numpy arrays, ORT's CPU allocations)."""

    device_type = HOST_TYPE
    device_id = 0

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        ctypes.memmove(dst, src, nbytes)

    upload = copy
    download = copy

    def synchronize(self) -> None:
        pass

    def __repr__(self) -> str:
        return "host memory"


HOST = HostMemory()


def cuda_runtime() -> Any:
    """cuda-bindings' runtime module, or the reason it cannot serve (no package, no driver, no device)."""
    try:
        cudart = importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        try:  # cuda-python before 12.6 spelled it cuda.cudart
            cudart = importlib.import_module("cuda.cudart")
        except ImportError:
            raise no_gpu("cuda-python (cuda-bindings) is not installed") from None
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or count < 1:
        raise no_gpu(f"no CUDA device is usable ({error_name(cudart, error)})")
    return cudart


def no_gpu(reason: str) -> RuntimeServingError:
    return RuntimeServingError(f"{NEEDS_GPU}: {reason}", Code.FAILED_PRECONDITION)


def error_name(cudart: Any, error: Any) -> str:
    try:
        return str(cudart.cudaGetErrorName(error)[1].decode())
    except Exception:
        return str(error)


class CudaMemory:
    """One CUDA device's memory through cuda.bindings' runtime API (cudaMemcpy, cudaMemcpyPeer).

    cudaMemcpy between device pointers may return before the copy is done, so the executor calls
    synchronize() before ORT reads a gathered batch and before an answer tells the client its output
    is there. `cudart` is the runtime module (cuda_runtime() unless given).
    """

    device_type = CUDA_TYPE

    def __init__(self, device_id: int, cudart: Any = None) -> None:
        self._device_id = device_id
        self._cudart = cudart if cudart is not None else cuda_runtime()

    @property
    def device_id(self) -> int:
        return self._device_id

    def _check(self, what: str, result: Any) -> None:
        error = result[0] if isinstance(result, tuple) else result
        if int(error) != 0:
            raise ExecutionError(f"{what} on CUDA device {self._device_id} failed: {error_name(self._cudart, error)}")

    def _memcpy(self, what: str, dst: int, src: int, nbytes: int, kind: Any) -> None:
        if nbytes:
            self._check("cudaSetDevice", self._cudart.cudaSetDevice(self._device_id))
            self._check(f"cudaMemcpy {what} of {nbytes} bytes", self._cudart.cudaMemcpy(dst, src, nbytes, kind))

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        self._memcpy("device to device", dst, src, nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice)

    def upload(self, dst: int, src: int, nbytes: int) -> None:
        self._memcpy("host to device", dst, src, nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)

    def download(self, dst: int, src: int, nbytes: int) -> None:
        self._memcpy("device to host", dst, src, nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)

    def copy_from_peer(self, dst: int, src: int, src_device: int, nbytes: int) -> None:
        """`dst` on this device, `src` on device `src_device` (a model instance on another GPU)."""
        if nbytes:
            self._check(
                f"cudaMemcpyPeer of {nbytes} bytes from device {src_device}",
                self._cudart.cudaMemcpyPeer(dst, self._device_id, src, src_device, nbytes),
            )

    def synchronize(self) -> None:
        self._check("cudaSetDevice", self._cudart.cudaSetDevice(self._device_id))
        self._check("cudaDeviceSynchronize", self._cudart.cudaDeviceSynchronize())

    def __repr__(self) -> str:
        return f"CUDA device {self._device_id}"


def same_memory(a: DeviceMemory, b: DeviceMemory) -> bool:
    return a.device_type == b.device_type and (a.device_type == HOST_TYPE or a.device_id == b.device_id)


def transfer(dst_memory: DeviceMemory, dst: int, src_memory: DeviceMemory, src: int, nbytes: int) -> None:
    """Copy `nbytes` from `src` in `src_memory` to `dst` in `dst_memory`, whichever memories they are."""
    if src_memory.device_type == HOST_TYPE:
        dst_memory.upload(dst, src, nbytes)  # host -> host is the host's memmove
    elif dst_memory.device_type == HOST_TYPE:
        src_memory.download(dst, src, nbytes)
    elif same_memory(dst_memory, src_memory):
        dst_memory.copy(dst, src, nbytes)
    elif isinstance(dst_memory, CudaMemory):
        dst_memory.copy_from_peer(dst, src, src_memory.device_id, nbytes)
    else:
        raise ExecutionError(f"no copy from {src_memory!r} to {dst_memory!r}")

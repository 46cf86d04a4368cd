"""A stand-in for cuda-python's `cuda.bindings.runtime` on machines without a GPU (tests only).

It is not our code that is faked: the third-party driver binding is, with "device" allocations that are
host buffers the fake keeps apart from every other address. Each cudaMemcpy checks that its kind says
where its pointers really are (HostToDevice: dst in a device allocation, src outside any; and so on)
and that the bytes lie inside one allocation, so the server's CUDA path (runtime/backends/device.py
CudaMemory, runtime/shm) runs for real on the CPU and a wrong direction or size fails the test instead
of passing silently. Calls are recorded in `calls`; `fail_next` makes the next call of that name fail.

Across processes (a server started by a test): `install_for_subprocesses` writes a `cuda` package that
makes a fresh FakeCudaRuntime, and `handle_for_object` makes a raw IPC handle that names a POSIX
shared-memory object, which the fake's cudaIpcOpenMemHandle maps as that process's "device" allocation.
"""
from __future__ import annotations

import enum
import mmap
import os
import struct
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 (cuda-python's names)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInvalidDevice = 101


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaIpcMemHandle_t:  # noqa: N801
    def __init__(self) -> None:
        self.reserved = b"\0" * 64


class FakeCudaRuntime(types.ModuleType):
    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaIpcMemHandle_t = cudaIpcMemHandle_t
    cudaIpcMemLazyEnablePeerAccess = 1

    def __init__(self, devices: int = 2) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices = devices
        self.current = 0
        self.allocations: dict[int, tuple[int, np.ndarray[Any, Any]]] = {}  # id -> (device, buffer)
        self.open_handles: set[int] = set()
        self.calls: list[tuple[Any, ...]] = []
        self.fail_next: dict[str, cudaError_t] = {}

    # ---- what a client does on its side (tritonclient.utils.cuda_shared_memory) ----------------

    def allocate(self, nbytes: int, device: int = 0) -> tuple[bytes, np.ndarray[Any, Any]]:
        """A "device" allocation and the raw IPC handle a client would send for it."""
        buffer = np.zeros(nbytes + 256, np.uint8)
        start = (-buffer.ctypes.data) % 256  # cudaMalloc's alignment
        window = buffer[start : start + nbytes]
        ident = len(self.allocations) + 1
        self.allocations[ident] = (device, window)
        return struct.pack("<Q", ident) + b"\0" * 56, window

    # ---- the runtime API -------------------------------------------------------------------------

    def _result(self, name: str, *values: Any) -> tuple[Any, ...]:
        self.calls.append((name, *values))
        error = self.fail_next.pop(name, cudaError_t.cudaSuccess)
        return (error, *values) if error == cudaError_t.cudaSuccess else (error, *([None] * len(values)))

    def cudaGetDeviceCount(self) -> tuple[Any, ...]:  # noqa: N802
        return self._result("cudaGetDeviceCount", self.devices)

    def cudaGetErrorName(self, error: Any) -> tuple[Any, bytes]:  # noqa: N802
        return cudaError_t.cudaSuccess, cudaError_t(int(error)).name.encode()

    def cudaSetDevice(self, device: int) -> tuple[Any, ...]:  # noqa: N802
        if not 0 <= device < self.devices:
            self.calls.append(("cudaSetDevice", device))
            return (cudaError_t.cudaErrorInvalidDevice,)
        self.current = device
        return self._result("cudaSetDevice")

    def cudaIpcOpenMemHandle(self, handle: cudaIpcMemHandle_t, flags: int) -> tuple[Any, ...]:  # noqa: N802
        raw = bytes(handle.reserved)
        if raw.startswith(OBJECT_PREFIX):  # a shared-memory object standing for another process's allocation
            device, name = raw[len(OBJECT_PREFIX)], raw[len(OBJECT_PREFIX) + 1 :].rstrip(b"\0").decode()
            fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
            try:
                mapping = mmap.mmap(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            window = np.frombuffer(mapping, np.uint8)
            self.allocations[len(self.allocations) + 1] = (device, window)
            pointer = int(window.ctypes.data)
            self.open_handles.add(pointer)
            return self._result("cudaIpcOpenMemHandle", pointer)
        (ident,) = struct.unpack("<Q", raw[:8])
        if ident not in self.allocations:
            self.calls.append(("cudaIpcOpenMemHandle", ident))
            return cudaError_t.cudaErrorInvalidValue, None
        pointer = int(self.allocations[ident][1].ctypes.data)
        self.open_handles.add(pointer)
        return self._result("cudaIpcOpenMemHandle", pointer)

    def cudaIpcCloseMemHandle(self, pointer: int) -> tuple[Any, ...]:  # noqa: N802
        self.open_handles.discard(pointer)
        return self._result("cudaIpcCloseMemHandle")

    def _where(self, pointer: int, nbytes: int) -> int | None:
        """The device an address range lies on, None for host memory; a range straddling an edge fails."""
        for device, window in self.allocations.values():
            start = int(window.ctypes.data)
            if start <= pointer < start + window.size:
                assert pointer + nbytes <= start + window.size, "a copy runs past the end of a device allocation"
                return device
        return None

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind: cudaMemcpyKind) -> tuple[Any, ...]:  # noqa: N802
        on_device = {
            cudaMemcpyKind.cudaMemcpyHostToDevice: (True, False),
            cudaMemcpyKind.cudaMemcpyDeviceToHost: (False, True),
            cudaMemcpyKind.cudaMemcpyDeviceToDevice: (True, True),
            cudaMemcpyKind.cudaMemcpyHostToHost: (False, False),
        }[kind]
        actual = (self._where(dst, nbytes) is not None, self._where(src, nbytes) is not None)
        assert actual == on_device, f"cudaMemcpy {kind.name}, but dst/src on device: {actual}"
        result = self._result("cudaMemcpy", kind.name, nbytes)
        if result[0] == cudaError_t.cudaSuccess:
            import ctypes

            ctypes.memmove(dst, src, nbytes)
        return result[:1]

    def cudaMemcpyPeer(self, dst: int, dst_device: int, src: int, src_device: int, nbytes: int) -> tuple[Any, ...]:  # noqa: N802
        assert self._where(dst, nbytes) == dst_device and self._where(src, nbytes) == src_device
        result = self._result("cudaMemcpyPeer", nbytes)
        if result[0] == cudaError_t.cudaSuccess:
            import ctypes

            ctypes.memmove(dst, src, nbytes)
        return result[:1]

    def cudaDeviceSynchronize(self) -> tuple[Any, ...]:  # noqa: N802
        return self._result("cudaDeviceSynchronize")

    def copies(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "cudaMemcpy"]


def install(monkeypatch: Any, fake: FakeCudaRuntime) -> None:
    """Make `import cuda.bindings.runtime` find the fake (for this test only)."""
    package = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    package.bindings = bindings  # type: ignore[attr-defined]
    bindings.runtime = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", package)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake)


OBJECT_PREFIX = b"FAKESHM"


def handle_for_object(key: str, device: int = 0) -> bytes:
    """A raw 64-byte IPC handle naming POSIX shared-memory object `key` ('/name') as a device allocation."""
    name = key.lstrip("/").encode()
    raw = OBJECT_PREFIX + bytes([device]) + name
    assert len(raw) <= 64, key
    return raw + b"\0" * (64 - len(raw))


def install_for_subprocesses(site: Path) -> dict[str, str]:
    """A `cuda.bindings.runtime` under `site` that is a FakeCudaRuntime; the environment that puts it first
    on a child's path (with this repository, for tests.shm.fake_cudart)."""
    package = site / "cuda" / "bindings"
    package.mkdir(parents=True, exist_ok=True)
    (site / "cuda" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "runtime.py").write_text(
        "import sys\nfrom tests.shm.fake_cudart import FakeCudaRuntime\nsys.modules[__name__] = FakeCudaRuntime()\n"
    )
    repository = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(site), str(repository), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path}

"""runtime/backends/binding.py on a "CUDA session", without a GPU: the paths only a CUDA model takes.

ONNX Runtime cannot bind 'cuda' pointers here, so the session is a stand-in for ORT's (an Identity model
that records what is bound and copies its input's bytes to its output), and CUDA memory is
tests/shm/fake_cudart.py's, whose cudaMemcpy checks every copy's kind against where its pointers are.
What runs for real is ours: the executor's choices (bind in place, gather device to device, peer copies,
scatter, download for host rows, synchronisation) and CudaMemory's calls. That ORT itself accepts the
bindings is bench/gpu_check_cuda_shm.py's to show.
"""
from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np
import pytest

from runtime.backends.binding import Binding, BoundRequest, DeviceTensor, OutputTarget, Placement, execute
from runtime.backends.device import HOST, CudaMemory, DeviceMemory, transfer
from runtime.errors import ExecutionError
from tests.shm.fake_cudart import FakeCudaRuntime


class Value:
    """What ORT's get_outputs() gives: an OrtValue's shape, pointer and device."""

    def __init__(self, buffer: np.ndarray[Any, Any], pointer: int, shape: list[int], dtype: np.dtype[Any], device: str) -> None:
        self.buffer, self.pointer, self._shape, self.dtype, self.device = buffer, pointer, shape, dtype, device

    def shape(self) -> list[int]:
        return self._shape

    def data_ptr(self) -> int:
        return self.pointer

    def device_name(self) -> str:
        return self.device

    def numpy(self) -> np.ndarray[Any, Any]:
        assert self.device == "cpu", "ORT's numpy() copies only CPU values"
        count = math.prod(self._shape)
        return np.frombuffer((ctypes.c_char * (count * self.dtype.itemsize)).from_address(self.pointer), self.dtype).reshape(self._shape).copy()


class IdentitySession:
    """OUTPUT0 = INPUT0, as an ORT session with IO binding would run it (pointers read and written in place)."""

    def __init__(self, cudart: FakeCudaRuntime) -> None:
        self.cudart = cudart
        self.inputs: dict[str, tuple[str, int, Any, list[int], int]] = {}
        self.outputs: dict[str, tuple[str, int, Any, list[int] | None, int | None]] = {}
        self.values: list[Value] = []

    def io_binding(self) -> IdentitySession:
        self.inputs, self.outputs, self.values = {}, {}, []
        return self

    def bind_input(self, name: str, device_type: str, device_id: int, element_type: Any, shape: list[int], pointer: int) -> None:
        self.inputs[name] = (device_type, device_id, element_type, shape, pointer)

    def bind_output(
        self, name: str, device_type: str = "cpu", device_id: int = 0, element_type: Any = None,
        shape: list[int] | None = None, buffer_ptr: int | None = None,
    ) -> None:  # fmt: skip
        self.outputs[name] = (device_type, device_id, element_type, shape, buffer_ptr)

    def run_with_iobinding(self, binding: Any) -> None:
        _, _, element_type, shape, source = self.inputs["INPUT0"]
        dtype = np.dtype(element_type)
        nbytes = math.prod(shape) * dtype.itemsize
        device_type, device_id, _, out_shape, pointer = self.outputs["OUTPUT0"]
        buffer: Any = None
        if pointer is None:  # ORT allocates it where it was bound
            if device_type == "cuda":
                _, buffer = self.cudart.allocate(nbytes, device_id)
            else:
                buffer = np.empty(nbytes, np.uint8)
            pointer = int(buffer.ctypes.data)
        else:
            assert out_shape == shape
        ctypes.memmove(pointer, source, nbytes)
        self.values = [Value(buffer, pointer, list(shape), dtype, device_type)]

    def get_outputs(self) -> list[Value]:
        return self.values


@pytest.fixture
def cudart() -> FakeCudaRuntime:
    return FakeCudaRuntime(devices=2)


def allocator(cudart: FakeCudaRuntime) -> Any:
    def allocate(shape: tuple[int, ...], dtype: np.dtype[Any], memory: DeviceMemory) -> tuple[Any, int]:
        nbytes = math.prod(shape) * dtype.itemsize
        if memory.device_type == "cuda":
            _, buffer = cudart.allocate(nbytes, memory.device_id)
        else:
            buffer = np.empty(nbytes, np.uint8)
        return buffer, int(buffer.ctypes.data)

    return allocate


def on_device(cudart: FakeCudaRuntime, memory: CudaMemory, array: np.ndarray[Any, Any], skew: int = 0) -> DeviceTensor:
    _, window = cudart.allocate(array.nbytes + skew, memory.device_id)
    window[skew:] = array.view(np.uint8).reshape(-1)
    return DeviceTensor(memory, int(window.ctypes.data) + skew, array.dtype, array.shape, window)


def target_on(cudart: FakeCudaRuntime, memory: CudaMemory, nbytes: int) -> tuple[OutputTarget, np.ndarray[Any, Any]]:
    _, window = cudart.allocate(nbytes, memory.device_id)
    return OutputTarget(memory, int(window.ctypes.data), nbytes, window), window


PLACEMENT = Placement("model 'm' version 1", bindable=True, device_type="cuda", device_ids=(0,), batched=True)
KNOWN = Placement(
    "model 'm' version 1", bindable=True, device_type="cuda", device_ids=(0,), output_shapes={"OUTPUT0": (-1, 4)}, batched=True
)
TYPES = {"OUTPUT0": np.dtype(np.float32)}


def test_a_lone_request_is_bound_in_place_on_the_gpu(cudart: FakeCudaRuntime) -> None:
    gpu = CudaMemory(0, cudart)
    session = IdentitySession(cudart)
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor = on_device(cudart, gpu, data)
    target, window = target_on(cudart, gpu, data.nbytes)
    request = BoundRequest({"INPUT0": tensor}, 2, Binding({"INPUT0": tensor}, {"OUTPUT0": target}, frozenset()))
    [result] = execute(session, gpu, [request], ["OUTPUT0"], TYPES, KNOWN, allocator(cudart))
    assert session.inputs["INPUT0"] == ("cuda", 0, np.float32, [2, 4], tensor.pointer)  # the client's pointer
    assert session.outputs["OUTPUT0"] == ("cuda", 0, np.float32, [2, 4], target.pointer)  # ORT writes the client's memory
    assert target.written and not any(result["OUTPUT0"].strides)
    np.testing.assert_array_equal(window.view(np.float32).reshape(2, 4), data)
    assert cudart.copies() == []  # no copy at all


def test_a_batch_is_gathered_and_scattered_device_to_device(cudart: FakeCudaRuntime) -> None:
    gpu = CudaMemory(0, cudart)
    session = IdentitySession(cudart)
    rng = np.random.default_rng(2)
    datas = [rng.standard_normal((rows, 4)).astype(np.float32) for rows in (1, 3, 2)]
    tensors = [on_device(cudart, gpu, data) for data in datas]
    targets = [target_on(cudart, gpu, data.nbytes) for data in datas[:2]]
    requests = [
        BoundRequest({"INPUT0": tensors[0]}, 1, Binding({"INPUT0": tensors[0]}, {"OUTPUT0": targets[0][0]}, frozenset())),
        BoundRequest({"INPUT0": tensors[1]}, 3, Binding({"INPUT0": tensors[1]}, {"OUTPUT0": targets[1][0]}, frozenset())),
        BoundRequest({"INPUT0": tensors[2]}, 2, Binding({"INPUT0": tensors[2]}, {}, None)),  # wants it as an array
    ]
    results = execute(session, gpu, requests, ["OUTPUT0"], TYPES, KNOWN, allocator(cudart))
    device_type, device_id, _, shape, pointer = session.inputs["INPUT0"]
    assert (device_type, device_id, shape) == ("cuda", 0, [6, 4]) and pointer not in {t.pointer for t in tensors}
    assert session.outputs["OUTPUT0"][:2] == ("cuda", 0) and session.outputs["OUTPUT0"][4] is None  # ORT allocates
    for (target, window), data in zip(targets, datas):
        assert target.written
        np.testing.assert_array_equal(window.view(np.float32).reshape(data.shape), data)
    np.testing.assert_array_equal(results[2]["OUTPUT0"], datas[2])
    assert cudart.copies() == ["cudaMemcpyDeviceToDevice"] * 5 + ["cudaMemcpyDeviceToHost"]
    syncs = [i for i, call in enumerate(cudart.calls) if call[0] == "cudaDeviceSynchronize"]
    assert len(syncs) == 2  # after gathering (before ORT reads) and after scattering (before the answer)


def test_a_region_on_another_gpu_is_copied_peer_to_peer(cudart: FakeCudaRuntime) -> None:
    gpu0, gpu1 = CudaMemory(0, cudart), CudaMemory(1, cudart)
    session = IdentitySession(cudart)
    data = np.ones((1, 4), np.float32)
    tensor = on_device(cudart, gpu1, data)
    target, window = target_on(cudart, gpu1, data.nbytes)
    request = BoundRequest({"INPUT0": tensor}, 1, Binding({"INPUT0": tensor}, {"OUTPUT0": target}, frozenset()))
    execute(session, gpu0, [request], ["OUTPUT0"], TYPES, KNOWN, allocator(cudart))
    assert session.inputs["INPUT0"][:2] == ("cuda", 0) and session.outputs["OUTPUT0"][4] is None
    assert [call[0] for call in cudart.calls if call[0].startswith("cudaMemcpy")] == ["cudaMemcpyPeer", "cudaMemcpyPeer"]
    np.testing.assert_array_equal(window.view(np.float32).reshape(1, 4), data)


def test_an_unaligned_device_pointer_is_copied_into_an_aligned_buffer(cudart: FakeCudaRuntime) -> None:
    gpu = CudaMemory(0, cudart)
    session = IdentitySession(cudart)
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    tensor = on_device(cudart, gpu, data, skew=4)  # an offset of 4 in the region
    request = BoundRequest({"INPUT0": tensor}, 1, Binding({"INPUT0": tensor}, {}, None))
    [result] = execute(session, gpu, [request], ["OUTPUT0"], TYPES, PLACEMENT, allocator(cudart))
    assert session.inputs["INPUT0"][4] % 256 == 0 and session.inputs["INPUT0"][4] != tensor.pointer
    assert session.outputs["OUTPUT0"][0] == "cpu"  # nobody wants it on the device: ORT copies it to the host
    np.testing.assert_array_equal(result["OUTPUT0"], data)
    assert cudart.copies() == ["cudaMemcpyDeviceToDevice"]


def test_host_tensors_of_a_cuda_session_stay_on_the_host_for_ort_to_copy(cudart: FakeCudaRuntime) -> None:
    gpu = CudaMemory(0, cudart)
    session = IdentitySession(cudart)
    data = [np.full((1, 4), i, np.float32) for i in range(2)]
    requests = [BoundRequest({"INPUT0": d}, 1, None) for d in data]
    results = execute(session, gpu, requests, ["OUTPUT0"], TYPES, PLACEMENT, allocator(cudart))
    assert session.inputs["INPUT0"][:2] == ("cpu", 0) and session.outputs["OUTPUT0"][0] == "cpu"
    for result, want in zip(results, data):
        np.testing.assert_array_equal(result["OUTPUT0"], want)
    assert cudart.copies() == []


def test_every_kind_of_transfer_and_a_failing_call(cudart: FakeCudaRuntime) -> None:
    gpu0, gpu1 = CudaMemory(0, cudart), CudaMemory(1, cudart)
    host = np.arange(16, dtype=np.uint8)
    back = np.zeros(16, np.uint8)
    _, a = cudart.allocate(16, 0)
    _, b = cudart.allocate(16, 0)
    _, c = cudart.allocate(16, 1)
    ptr = lambda array: int(array.ctypes.data)  # noqa: E731
    transfer(gpu0, ptr(a), HOST, ptr(host), 16)  # host to device
    transfer(gpu0, ptr(b), gpu0, ptr(a), 16)  # device to device
    transfer(gpu1, ptr(c), gpu0, ptr(b), 16)  # peer
    transfer(HOST, ptr(back), gpu1, ptr(c), 16)  # device to host
    np.testing.assert_array_equal(back, host)
    assert [call[1] if call[0] == "cudaMemcpy" else call[0] for call in cudart.calls if call[0].startswith("cudaMemcpy")] == [
        "cudaMemcpyHostToDevice", "cudaMemcpyDeviceToDevice", "cudaMemcpyPeer", "cudaMemcpyDeviceToHost",
    ]  # fmt: skip
    cudart.fail_next["cudaMemcpy"] = cudart.cudaError_t.cudaErrorInvalidValue
    with pytest.raises(ExecutionError, match="cudaMemcpy host to device of 16 bytes on CUDA device 0 failed: cudaErrorInvalidValue"):
        transfer(gpu0, ptr(a), HOST, ptr(host), 16)
    cudart.fail_next["cudaDeviceSynchronize"] = cudart.cudaError_t.cudaErrorInvalidValue
    with pytest.raises(ExecutionError, match="cudaDeviceSynchronize on CUDA device 1 failed"):
        gpu1.synchronize()

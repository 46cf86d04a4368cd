"""The IO-binding executor: one batch through ONNX Runtime's `session.io_binding()`, tensors by pointer.

Requests whose tensors live in shared memory reach the session without a host copy where that is
possible: a lone request's input is bound where it lies (`bind_input(..., buffer_ptr)`), and an output
asked into a region is bound there (`bind_output(..., buffer_ptr)`) so ORT writes the client's memory
itself. Several requests batched together are gathered row by row into one buffer that ORT allocates
(`OrtValue.ortvalue_from_shape_and_type`) in the session's memory, and output rows are scattered back
from ORT's output buffer into each request's region, with device-to-device copies where both sides are
on the GPU (runtime/backends/device.py `transfer`). Where the memories differ (a CPU session and a CUDA
region) the copy between them is explicit: device to host before the run, host to device after it.

The executor is the same code for host and CUDA memory: on a machine without a GPU it runs with ORT's
'cpu' device and real pointers (system shared memory), which is how the tests drive it. It takes the
session as a plain object and ORT's allocator as a function, so this module imports no onnxruntime
(runtime/backends/onnx.py stays its only importer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runtime.backends.device import HOST, HOST_TYPE, DeviceMemory, same_memory, transfer
from runtime.errors import ExecutionError
from runtime.types import Array, placeholder

# A pointer ORT reads or writes in place on a GPU must be this aligned (its kernels use vector loads, and
# its own allocations are); others are copied into a buffer ORT allocates. cudaMalloc gives 256 bytes; an
# offset inside a region may not. On the host the element size is enough (what numpy arrays ORT reads
# in place have; system shared-memory reads copy below it too, runtime/shm/regions.py _read).
DEVICE_ALIGNMENT = 256


@dataclass(frozen=True, slots=True)
class DeviceTensor:
    """An input that stays where the client put it: `nbytes` of `dtype` and `shape` at `pointer` in
    `memory`. `owner` keeps that memory alive while the tensor is referenced (a view of the mapping, or
    the opened IPC handle), so a batch still running after its request was cancelled reads mapped memory."""

    memory: DeviceMemory
    pointer: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    owner: Any = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(slots=True)
class OutputTarget:
    """Where a request wants one output written: `byte_size` bytes at `pointer` in `memory`. The
    executor sets `written` once the output is there; otherwise it answers the output as a host array
    and the shared-memory lease writes it (and refuses it, naming the numbers, when it does not fit)."""

    memory: DeviceMemory
    pointer: int
    byte_size: int
    owner: Any = field(default=None, repr=False, compare=False)
    written: bool = False


@dataclass(slots=True)
class Binding:
    """One request's tensors that travel by pointer: inputs in place of the placeholders its validated
    inputs carry, outputs to write into, and which outputs it needs as host arrays (None: all)."""

    inputs: dict[str, DeviceTensor] = field(default_factory=dict)
    outputs: dict[str, OutputTarget] = field(default_factory=dict)
    host_outputs: frozenset[str] | None = None

    def __bool__(self) -> bool:
        return bool(self.inputs or self.outputs)


@dataclass(frozen=True, slots=True)
class BoundRequest:
    """One request of a batch as the executor sees it: each input an array or a DeviceTensor."""

    inputs: Mapping[str, Array | DeviceTensor]
    rows: int
    binding: Binding | None = None

    def target(self, name: str) -> OutputTarget | None:
        return None if self.binding is None else self.binding.outputs.get(name)

    def wants_on_host(self, name: str) -> bool:
        if self.binding is None or self.binding.host_outputs is None:
            return True
        return name in self.binding.host_outputs


@dataclass(frozen=True, slots=True)
class Placement:
    """What a model's sessions can take by pointer, for the shared-memory lease (runtime/shm).

    `bindable`: its requests may carry device tensors into the batch (an ONNX model with no
    processing, padding, reshape, sequence batcher or response cache: those read inputs on the host).
    `device_type` / `device_ids`: where its sessions compute (the CUDA devices of its instances).
    `output_shapes`: each output's shape with -1 for the batch dimension, None where another dimension
    is only known after the run (then ORT allocates it and the rows are copied into the region)."""

    label: str
    bindable: bool
    device_type: str = HOST_TYPE
    device_ids: tuple[int, ...] = ()
    output_datatypes: Mapping[str, str] = field(default_factory=dict)
    output_shapes: Mapping[str, tuple[int, ...] | None] = field(default_factory=dict)
    batched: bool = False


# ORT's allocator, given by runtime/backends/onnx.py: a buffer of shape and dtype in a memory, as
# (the object that owns it, its pointer).
Allocate = Callable[[tuple[int, ...], np.dtype[Any], DeviceMemory], tuple[Any, int]]


def _aligned(memory: DeviceMemory, pointer: int, dtype: np.dtype[Any]) -> bool:
    return pointer % (dtype.itemsize if memory.device_type == HOST_TYPE else DEVICE_ALIGNMENT) == 0


def _source(part: Array | DeviceTensor, keep: list[Any]) -> tuple[DeviceMemory, int, np.dtype[Any], tuple[int, ...]]:
    if isinstance(part, DeviceTensor):
        return part.memory, part.pointer, part.dtype, part.shape
    array = np.ascontiguousarray(part)
    keep.append(array)
    return HOST, int(array.ctypes.data), array.dtype, tuple(array.shape)


def _buffer_memory(session_memory: DeviceMemory, memories: Sequence[DeviceMemory]) -> DeviceMemory:
    """Where a gathered buffer goes: the session's device when some part is on a device, else the host
    (ORT copies a host buffer to its device itself; a CPU session needs everything on the host)."""
    if session_memory.device_type != HOST_TYPE and any(m.device_type != HOST_TYPE for m in memories):
        return session_memory
    return HOST


def _bind_directly(session_memory: DeviceMemory, memory: DeviceMemory) -> bool:
    return memory.device_type == HOST_TYPE or same_memory(memory, session_memory)


def execute(
    session: Any,
    session_memory: DeviceMemory,
    requests: Sequence[BoundRequest],
    output_names: Sequence[str],
    output_types: Mapping[str, np.dtype[Any]],
    placement: Placement,
    allocate: Allocate,
) -> list[dict[str, Array]]:
    """Run one batch through IO binding; each request's outputs, those written into its targets as
    stand-ins that hold no memory (runtime.types.placeholder)."""
    binding = session.io_binding()
    keep: list[Any] = []  # buffers and arrays ORT reads or writes, alive until the run is over
    total = sum(request.rows for request in requests)
    alone = len(requests) == 1
    dirty: list[DeviceMemory] = []  # device memories with copies in flight

    for name in requests[0].inputs:
        sources = [_source(request.inputs[name], keep) for request in requests]
        memory, pointer, dtype, shape = sources[0]
        if alone and _bind_directly(session_memory, memory) and _aligned(memory, pointer, dtype):
            binding.bind_input(name, memory.device_type, memory.device_id, dtype.type, list(shape), pointer)
            continue
        shape = (total, *shape[1:]) if not alone else shape
        into = _buffer_memory(session_memory, [source[0] for source in sources])
        owner, buffer = allocate(shape, dtype, into)
        keep.append(owner)
        offset = 0
        for part_memory, part_pointer, part_dtype, part_shape in sources:
            nbytes = math.prod(part_shape) * part_dtype.itemsize
            transfer(into, buffer + offset, part_memory, part_pointer, nbytes)
            offset += nbytes
        if into.device_type != HOST_TYPE:
            dirty.append(into)
        binding.bind_input(name, into.device_type, into.device_id, dtype.type, list(shape), buffer)
    for memory in _distinct(dirty):
        memory.synchronize()  # the gathered rows are there before ORT's stream reads them

    bound_in_place: dict[str, tuple[int, ...]] = {}
    for name in output_names:
        dtype = output_types[name]
        target = requests[0].target(name)
        if alone and target is not None:
            known = _known_shape(placement, name, requests[0].rows)
            if (
                known is not None
                and _bind_directly(session_memory, target.memory)
                and _aligned(target.memory, target.pointer, dtype)
                and math.prod(known) * dtype.itemsize <= target.byte_size
            ):
                memory = target.memory
                binding.bind_output(name, memory.device_type, memory.device_id, dtype.type, list(known), target.pointer)
                bound_in_place[name] = known
                continue
        targets = [request.target(name) for request in requests]
        into = _buffer_memory(session_memory, [t.memory for t in targets if t is not None])
        binding.bind_output(name, into.device_type, into.device_id)

    try:
        session.run_with_iobinding(binding)
    except Exception as exc:  # ORT raises its own types
        raise ExecutionError(f"model execution failed: {exc}") from None
    values = binding.get_outputs()

    results: list[dict[str, Array]] = [{} for _ in requests]
    written: list[DeviceMemory] = []
    for name, value in zip(output_names, values):
        dtype = output_types[name]
        if name in bound_in_place:
            target = requests[0].target(name)
            assert target is not None
            target.written = True
            written.append(target.memory)
            results[0][name] = placeholder(dtype, bound_in_place[name])
            continue
        shape = tuple(int(d) for d in value.shape())
        if not alone and (not shape or shape[0] != total):
            raise ExecutionError(
                f"output {name!r} has shape {list(shape)}; expected {total} rows, one per batched input row"
            )
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        memory = _memory_of(value, session_memory)
        pointer = int(value.data_ptr())
        host_copy: Array | None = None
        start = 0
        for index, request in enumerate(requests):
            part_shape = shape if alone else (request.rows, *shape[1:])
            nbytes = math.prod(part_shape) * dtype.itemsize
            offset = start * row_bytes
            start += 1 if alone else request.rows
            target = request.target(name)
            if target is not None and nbytes <= target.byte_size:
                transfer(target.memory, target.pointer, memory, pointer + offset, nbytes)
                target.written = True
                written.append(target.memory)
                results[index][name] = placeholder(dtype, part_shape)
            elif target is not None or request.wants_on_host(name):
                if memory.device_type == HOST_TYPE:
                    if host_copy is None:  # ORT's buffer goes with the binding: one copy, then views
                        host_copy = value.numpy()
                    assert host_copy is not None
                    flat = host_copy.reshape(-1)
                    first = offset // dtype.itemsize
                    results[index][name] = flat[first : first + nbytes // dtype.itemsize].reshape(part_shape)
                else:
                    array = np.empty(part_shape, dtype)
                    memory.download(int(array.ctypes.data), pointer + offset, nbytes)
                    results[index][name] = array
            else:  # nobody asked for it: the engine drops it
                results[index][name] = placeholder(dtype, part_shape)
    for memory in _distinct(written):
        memory.synchronize()  # the client reads its region once the answer says it is written
    del keep
    return results


def _known_shape(placement: Placement, name: str, rows: int) -> tuple[int, ...] | None:
    shape = placement.output_shapes.get(name)
    if shape is None:
        return None
    if placement.batched:
        return (rows, *shape[1:])
    return shape


def _memory_of(value: Any, session_memory: DeviceMemory) -> DeviceMemory:
    return HOST if str(value.device_name()).lower() == HOST_TYPE else session_memory


def _distinct(memories: Sequence[DeviceMemory]) -> list[DeviceMemory]:
    seen: dict[tuple[str, int], DeviceMemory] = {}
    for memory in memories:
        if memory.device_type != HOST_TYPE:
            seen.setdefault((memory.device_type, memory.device_id), memory)
    return list(seen.values())

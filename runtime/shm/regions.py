"""Registered shared-memory regions: the table, the mapping of system regions, and each request's lease.

A system region is a POSIX shared-memory object (shm_open's /dev/shm/<key>) that a client created and
registered by name. The process that reads the tensors maps it (the engine process with --workers),
after checking with fstat that the registered window lies inside the object: mmap past its end would
not fail, and the first read there would kill the server with SIGBUS.

A CUDA region is a client's device allocation, opened from its cudaIpc handle (runtime/shm/cuda.py).

Every request that names regions holds a lease on them from before its inputs are read until its
outputs are written. The table and the counts are touched only on the event loop, so the hot path
takes no lock. Unregistering takes the name out of the table at once (new requests see no such
region), then waits for the leases still held before the memory is unmapped (or the handle closed).

How a tensor travels is decided per request, from the model's Placement (runtime/backends/binding.py):
for a model that reads its inputs as they are, tensors go by pointer (a Binding: CUDA tensors always,
system ones while `RegionTable.bind_system` is on) and the IO-binding executor reads and writes the
client's memory itself; otherwise system tensors are read as views of the mapping and written after
the run, and CUDA tensors are copied device to host before and host to device after (explicit copies).
"""
from __future__ import annotations

import asyncio
import mmap
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime import codec
from runtime.backends.binding import Binding, DeviceTensor, OutputTarget, Placement
from runtime.backends.device import CUDA_TYPE, HOST, DeviceMemory
from runtime.errors import Code, InvalidInput, RuntimeServingError, quoted
from runtime.shm.cuda import open_handle
from runtime.tensors import array_from_raw, check_shape, element_count, numpy_dtype
from runtime.types import Array, InferRequest, SharedInput, SharedMemoryRef, datatype_of, placeholder

SHM_DIRECTORY = "/dev/shm"  # where glibc's shm_open keeps its objects on Linux
ALLOW_FLAG = "--allow-client-shm"


class RegionNotFound(RuntimeServingError):
    code = Code.NOT_FOUND


@dataclass(frozen=True, slots=True)
class SystemRegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class CudaRegionStatus:
    name: str
    device_id: int
    byte_size: int


class Held:
    """What system and CUDA regions share: a window of `byte_size` bytes, and the leases held on it."""

    __slots__ = ("name", "byte_size", "users", "_idle")
    memory: DeviceMemory

    def __init__(self, name: str, byte_size: int) -> None:
        self.name = name
        self.byte_size = byte_size
        self.users = 0  # leases held by running requests
        self._idle: asyncio.Event | None = None  # made when an unregister waits

    def check_size(self, tensor: str) -> None:
        """That the memory still holds the registered window, at a request's first use of the region: a
        system region's object may have been truncated (SystemRegion); a device allocation cannot shrink."""

    def check_window(self, memory: SharedMemoryRef, tensor: str) -> None:
        end = memory.offset + memory.byte_size
        if end > self.byte_size:
            raise InvalidInput(
                f"{tensor}: shared_memory_offset {memory.offset} + shared_memory_byte_size {memory.byte_size} = {end} "
                f"runs past the {self.byte_size} bytes of shared-memory region {quoted(self.name)}"
            )

    def pointer(self, memory: SharedMemoryRef) -> int:
        """The address of a checked window's first byte, in `self.memory`."""
        raise NotImplementedError

    def owner(self) -> Any:
        """What keeps the memory alive while a batch reads or writes it by pointer."""
        raise NotImplementedError

    def tensor(self, shared: SharedInput, name: str) -> DeviceTensor:
        """An input by pointer, checked: a fixed-size datatype whose shape fills its byte size exactly."""
        tensor = f"input {quoted(name)}"
        if shared.datatype == "BYTES":
            raise InvalidInput(
                f"{tensor}: BYTES cannot be read from {self.describe()} (its length-prefixed elements are "
                "decoded on the host); use system shared memory or send it inline"
            )
        dims = check_shape(shared.shape, name)
        dtype = numpy_dtype(shared.datatype, name)
        expected = element_count(dims) * dtype.itemsize
        if shared.memory.byte_size != expected:
            raise InvalidInput(
                f"{tensor}: {shared.memory.byte_size} bytes of data, but shape {list(dims)} of {shared.datatype} "
                f"needs {expected} (in {self.describe()}, offset {shared.memory.offset}, "
                f"shared_memory_byte_size {shared.memory.byte_size})"
            )
        return DeviceTensor(self.memory, self.pointer(shared.memory), dtype, tuple(dims), self.owner())

    def target(self, memory: SharedMemoryRef) -> OutputTarget:
        return OutputTarget(self.memory, self.pointer(memory), memory.byte_size, self.owner())

    def describe(self) -> str:
        raise NotImplementedError

    async def wait_idle(self) -> None:
        """Wait for the requests still using the region."""
        if self.users:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self._idle is not None:
            self._idle.set()


class SystemRegion(Held):
    """One registered window [offset, offset + byte_size) of a shared-memory object, mapped read-write."""

    __slots__ = ("key", "offset", "data", "_fd", "_map", "_address")
    memory = HOST

    def __init__(self, name: str, key: str, offset: int, byte_size: int) -> None:
        super().__init__(name, byte_size)
        self.key = key
        self.offset = offset
        where = f"system shared-memory region {quoted(name)}"
        path = os.path.join(SHM_DIRECTORY, _object_name(key, where))
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InvalidInput(f"{where}: key {quoted(key)} names no shared-memory object (shm_open found none)") from None
        except OSError as exc:
            raise InvalidInput(f"{where}: cannot open shared-memory object {quoted(key)}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"{where}: key {quoted(key)} is not a shared-memory object")
            if offset + byte_size > info.st_size:
                raise InvalidInput(
                    f"{where}: offset {offset} + byte_size {byte_size} = {offset + byte_size} runs past the end of "
                    f"shared-memory object {quoted(key)}, which has {info.st_size} bytes"
                )
            # mmap's offset must be a multiple of the page size: map from the page the window starts in.
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._map = mmap.mmap(fd, byte_size + offset - start, mmap.MAP_SHARED, offset=start)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # kept for check_size
        self.data: Array = np.frombuffer(self._map, np.uint8, byte_size, offset - start)
        self._address = int(self.data.ctypes.data)  # of the window's first byte (ctypes.data costs ~10 us a read)

    def check_size(self, tensor: str) -> None:
        """The object still holds the registered window. A client that truncates its object after
        registering would otherwise kill the server with SIGBUS at the first read past the new end;
        checked once per request (one fstat), so only a shrink during the request itself goes unseen."""
        size = os.fstat(self._fd).st_size
        if size < self.offset + self.byte_size:
            raise InvalidInput(
                f"{tensor}: shared-memory object {quoted(self.key)} of region {quoted(self.name)} has shrunk to {size} "
                f"bytes since it was registered (offset {self.offset} + byte_size {self.byte_size} = "
                f"{self.offset + self.byte_size}); unregister the region and register it again"
            )

    def window(self, memory: SharedMemoryRef, tensor: str) -> Array:
        """The bytes a tensor's reference names, checked to lie inside the region."""
        self.check_window(memory, tensor)
        window: Array = self.data[memory.offset : memory.offset + memory.byte_size]
        return window

    def pointer(self, memory: SharedMemoryRef) -> int:
        return self._address + memory.offset

    def owner(self) -> Any:
        return self.data  # a view of the mapping: mmap.close() leaves it mapped while a view lives

    def describe(self) -> str:
        return f"system shared-memory region {quoted(self.name)}"

    def status(self) -> SystemRegionStatus:
        return SystemRegionStatus(self.name, self.key, self.offset, self.byte_size)

    async def close(self) -> None:
        """Wait for the requests still using the region, then unmap it."""
        await self.wait_idle()
        del self.data
        os.close(self._fd)
        try:
            self._map.close()
        except BufferError:
            # An array a finished request made still views the memory: it is unmapped when that goes.
            pass


class CudaRegion(Held):
    """A client's device allocation of `byte_size` bytes on `device_id`, opened from its IPC handle."""

    __slots__ = ("device_id", "memory", "_mapping")

    def __init__(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        super().__init__(name, byte_size)
        self.device_id = device_id
        self._mapping = open_handle(name, raw_handle, device_id, byte_size)
        self.memory = self._mapping.memory

    def pointer(self, memory: SharedMemoryRef) -> int:
        return self._mapping.pointer + memory.offset

    def owner(self) -> Any:
        return self._mapping

    def describe(self) -> str:
        return f"CUDA shared-memory region {quoted(self.name)} (device {self.device_id})"

    def check_device(self, tensor: str, placement: Placement | None) -> None:
        """A model on CUDA takes the region only on a device one of its instances runs on (a model on the
        CPU takes any: its tensors are copied across explicitly)."""
        if placement is not None and placement.device_type == CUDA_TYPE and self.device_id not in placement.device_ids:
            raise InvalidInput(
                f"{placement.label}: {tensor} is in CUDA shared-memory region {quoted(self.name)} on device "
                f"{self.device_id}, but the model's instances run on CUDA device(s) "
                f"{', '.join(map(str, placement.device_ids))}; register the region on one of those devices"
            )

    def download(self, tensor: DeviceTensor) -> Array:
        """An input copied device to host, for a model that reads its inputs on the host."""
        array = np.empty(tensor.shape, tensor.dtype)
        self.memory.download(int(array.ctypes.data), tensor.pointer, tensor.nbytes)
        return array

    def upload(self, memory: SharedMemoryRef, name: str, array: Array) -> None:
        """An output computed on the host, copied into the region (checked to fit)."""
        tensor = f"output {quoted(name)}"
        if array.dtype.kind in "OSU":
            raise InvalidInput(f"{tensor}: BYTES cannot be written into {self.describe()}; use system shared memory")
        _check_fits(tensor, array, array.nbytes, memory, self.name)
        source = np.ascontiguousarray(array)
        self.memory.upload(self.pointer(memory), int(source.ctypes.data), source.nbytes)
        self.memory.synchronize()

    async def close(self) -> None:
        """Wait for the requests still using the region, then let the handle go (it closes once no
        running batch holds it: runtime/shm/cuda.py IpcMapping)."""
        await self.wait_idle()
        del self._mapping


def _object_name(key: str, where: str) -> str:
    """shm_open's rule for names: one leading slash at most, then one path component."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or name in (".", ".."):
        raise InvalidInput(
            f"{where}: key {quoted(key)} is not a shared-memory object name ('/name', one path component)"
        )
    return name


Region = SystemRegion | CudaRegion

# Whether system-shared-memory tensors of a model that can take them go by pointer through IO binding
# (ORT writes outputs straight into the client's region) instead of as views of the mapping (outputs
# copied in after the run). Off: on the CPU it saves one output copy but costs more in Python per
# request (the binding, placeholders, ORT's IOBinding calls) than the copy: bench/bench_shm.py's "IO
# binding" rows in bench/RESULTS.md. The setting --shm-io-binding turns it on (app.start_core).


class RegionTable:
    """The registered regions by name (system and CUDA regions share one namespace, as in Triton)."""

    def __init__(self, allowed: bool = False, bind_system: bool = False) -> None:
        self.allowed = allowed
        self.bind_system = bind_system
        self._regions: dict[str, Region] = {}

    # ---- registration -----------------------------------------------------------------------

    def _check_new(self, kind: str, name: str) -> None:
        if not self.allowed:
            raise RuntimeServingError(
                f"registering {kind} shared memory is off on this server: mapping a client's memory lets it "
                f"share any object this process can open; start the server with {ALLOW_FLAG} true to allow it",
                Code.PERMISSION_DENIED,
            )
        if not name:
            raise InvalidInput(f"{kind} shared-memory register: the region needs a name")
        existing = self._regions.get(name)
        if existing is not None:
            what = "system" if isinstance(existing, SystemRegion) else "CUDA"
            raise RuntimeServingError(
                f"shared-memory region {quoted(name)} is already registered (as {what} shared memory); "
                "unregister it first or pick another name",
                Code.ALREADY_EXISTS,
            )

    async def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_new("system", name)
        where = f"system shared-memory region {quoted(name)}"
        if offset < 0 or byte_size <= 0:
            raise InvalidInput(f"{where}: offset must be >= 0 and byte_size > 0, got offset {offset}, byte_size {byte_size}")
        region = SystemRegion(name, key, offset, byte_size)
        self._regions[name] = region

    async def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._check_new("CUDA", name)
        self._regions[name] = CudaRegion(name, raw_handle, device_id, byte_size)

    # ---- status and unregistering -----------------------------------------------------------

    def system_status(self, name: str = "") -> list[SystemRegionStatus]:
        return [region.status() for region in self._select(SystemRegion, "system", name)]

    def cuda_status(self, name: str = "") -> list[CudaRegionStatus]:
        return [
            CudaRegionStatus(region.name, region.device_id, region.byte_size)
            for region in self._select(CudaRegion, "CUDA", name)
        ]

    def _select(self, kind: type[Any], what: str, name: str) -> list[Any]:
        if not name:
            return [region for region in self._regions.values() if isinstance(region, kind)]
        region = self._regions.get(name)
        if not isinstance(region, kind):
            raise RegionNotFound(f"no {what} shared-memory region named {quoted(name)} is registered")
        return [region]

    async def unregister_system(self, name: str = "") -> None:
        await self._unregister(SystemRegion, name)

    async def unregister_cuda(self, name: str = "") -> None:
        await self._unregister(CudaRegion, name)

    async def _unregister(self, kind: type[Any], name: str) -> None:
        """Unregister one region, or every region of the kind; an unknown name is no error (as Triton).

        The names go at once, the memory once the requests using it have finished.
        """
        names = [name] if name else [n for n, region in self._regions.items() if isinstance(region, kind)]
        closing = []
        for each in names:
            region = self._regions.get(each)
            if isinstance(region, kind):
                del self._regions[each]
                closing.append(region)
        await asyncio.gather(*(region.close() for region in closing))

    async def close(self) -> None:
        await asyncio.gather(self.unregister_system(), self.unregister_cuda())

    # ---- requests ---------------------------------------------------------------------------

    def lease(self, request: InferRequest) -> Lease | None:
        """The regions a request names, held until Lease.release(); None when it names none."""
        shared_inputs = request.shared_inputs
        requested = request.requested_outputs
        outputs = [out for out in requested or () if out.shared_memory is not None]
        if not shared_inputs and not outputs:
            return None
        lease = Lease(request.model_name, self.bind_system)
        if requested is not None:
            lease.wanted = frozenset(out.name for out in requested)
        try:
            for name, shared in (shared_inputs or {}).items():
                lease.inputs[name] = (self._region_for(shared.memory, f"input {quoted(name)}", lease), shared)
            for out in outputs:
                assert out.shared_memory is not None
                lease.outputs[out.name] = (self._region_for(out.shared_memory, f"output {quoted(out.name)}", lease), out.shared_memory)
                if out.classification:
                    lease.classified.add(out.name)
        except BaseException:
            lease.release()
            raise
        return lease

    def _region_for(self, memory: SharedMemoryRef, tensor: str, lease: Lease) -> Region:
        region = self._regions.get(memory.region)
        if region is None:
            raise InvalidInput(f"{tensor}: shared-memory region {quoted(memory.region)} is not registered")
        region.check_window(memory, tensor)  # bounds, before anything runs
        if region not in lease.held:  # one fstat per region and request
            region.check_size(tensor)
        region.users += 1
        lease.held.append(region)
        return region


class Lease:
    """One request's hold on the regions it names: reads its inputs, writes its outputs."""

    __slots__ = ("model", "inputs", "outputs", "held", "classified", "wanted", "binding", "bind_system")

    def __init__(self, model: str, bind_system: bool = False) -> None:
        self.model = model
        self.bind_system = bind_system
        self.inputs: dict[str, tuple[Region, SharedInput]] = {}
        self.outputs: dict[str, tuple[Region, SharedMemoryRef]] = {}
        self.held: list[Region] = []
        self.classified: set[str] = set()  # outputs asked for as classifications: written after them
        self.wanted: frozenset[str] | None = None  # the outputs the request asked for (None: all)
        self.binding: Binding | None = None  # what read_inputs sent by pointer

    def read_inputs(self, inline: dict[str, Array], placement: Placement | None = None) -> dict[str, Array]:
        """The request's inputs: those sent inline, and those in shared memory.

        For a model whose Placement is bindable, tensors go by pointer: the returned arrays hold
        placeholders of their datatype and shape (for validation and batching) and `self.binding` the
        pointers, and outputs asked into regions become targets the executor writes. Otherwise system
        tensors are views of the mapping (no copy for fixed-size types) and CUDA ones are copied to the
        host here.
        """
        arrays = dict(inline)
        bind = placement is not None and placement.bindable
        binding = Binding()
        for name, (region, shared) in self.inputs.items():
            if isinstance(region, CudaRegion):
                region.check_device(f"input {quoted(name)}", placement)
                tensor = region.tensor(shared, name)
                if bind:
                    binding.inputs[name] = tensor
                    arrays[name] = placeholder(tensor.dtype, tensor.shape)
                else:
                    arrays[name] = region.download(tensor)
            elif bind and self.bind_system and shared.datatype != "BYTES":
                tensor = region.tensor(shared, name)
                binding.inputs[name] = tensor
                arrays[name] = placeholder(tensor.dtype, tensor.shape)
            else:
                arrays[name] = _read(region, shared, name)
        for name, (region, memory) in self.outputs.items():
            datatype = placement.output_datatypes.get(name) if placement is not None else None
            if isinstance(region, CudaRegion):
                region.check_device(f"output {quoted(name)}", placement)
                if datatype == "BYTES":
                    raise InvalidInput(
                        f"{placement.label if placement else self.model}: output {quoted(name)} is BYTES, which "
                        f"cannot be written into {region.describe()}; use system shared memory or ask for it inline"
                    )
            by_pointer = isinstance(region, CudaRegion) or self.bind_system
            if bind and by_pointer and name not in self.classified and datatype not in (None, "BYTES"):
                binding.outputs[name] = region.target(memory)
        if binding:
            if self.wanted is not None:
                binding.host_outputs = self.wanted - binding.outputs.keys()
            self.binding = binding
        return arrays

    def write_outputs(self, outputs: dict[str, Array]) -> dict[str, Array]:
        """Write each output asked for in shared memory into its region (unless the executor wrote it
        there already); in the answer it becomes a stand-in of the same datatype and shape that holds
        no memory (the transports send no data)."""
        if not self.outputs:
            return outputs
        answered = dict(outputs)
        targets = self.binding.outputs if self.binding is not None else {}
        for name, (region, memory) in self.outputs.items():
            array = outputs.get(name)
            if array is None:
                continue
            target = targets.get(name)
            if target is None or not target.written:
                if isinstance(region, CudaRegion):
                    region.upload(memory, name, array)
                else:
                    _write(region, memory, name, array)
            answered[name] = stand_in(array)
        return answered

    def release(self) -> None:
        held, self.held = self.held, []
        for region in held:
            region.release()


def _read(region: SystemRegion, shared: SharedInput, name: str) -> Array:
    tensor = f"input {quoted(name)}"
    window = region.window(shared.memory, tensor)
    try:
        array = array_from_raw(window.data, shared.datatype, shared.shape, name)
    except InvalidInput as exc:
        raise InvalidInput(
            f"{exc.message} (read from shared-memory region {quoted(region.name)}, offset {shared.memory.offset}, "
            f"shared_memory_byte_size {shared.memory.byte_size})"
        ) from None
    if not array.flags.aligned:  # an offset the element size does not divide: kernels want aligned data
        array = array.copy()
    return array


def _check_fits(tensor: str, array: Array, needed: int, memory: SharedMemoryRef, region: str) -> None:
    if needed > memory.byte_size:
        raise InvalidInput(
            f"{tensor}: shape {list(array.shape)} of {datatype_of(array)} needs {needed} bytes, more than its "
            f"shared_memory_byte_size {memory.byte_size} in shared-memory region {quoted(region)}"
        )


def _write(region: SystemRegion, memory: SharedMemoryRef, name: str, array: Array) -> None:
    tensor = f"output {quoted(name)}"
    window = region.window(memory, tensor)
    if array.dtype.kind in "OSU":
        raw = np.frombuffer(codec.encode_bytes(array), np.uint8)
        needed = raw.size
    else:
        needed = array.nbytes
    _check_fits(tensor, array, needed, memory, region.name)
    if array.dtype.kind in "OSU":
        window[:needed] = raw
    else:
        window[:needed].view(array.dtype).reshape(array.shape)[...] = array


def stand_in(array: Array) -> Array:
    """An array of the same dtype and shape that holds no memory (every element is one zero)."""
    return placeholder(array.dtype, array.shape)

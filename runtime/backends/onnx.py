"""ONNX Runtime execution: one InferenceSession per model instance. The only importer of onnxruntime."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort

from runtime.backends import binding as io_binding
from runtime.backends.device import HOST, HOST_TYPE, CudaMemory, DeviceMemory
from runtime.config import available_cores
from runtime.errors import ExecutionError, InvalidInput, ModelLoadError
from runtime.types import Array

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def cuda_available() -> bool:
    return CUDA in ort.get_available_providers()


_cuda_libraries_loaded = False


def _load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (or PyTorch's copies) before the first CUDA session.

    onnxruntime-gpu does not find the pip-installed CUDA libraries by itself unless they are on
    LD_LIBRARY_PATH; without this, a machine with a GPU and `pip install onnxruntime-gpu[cuda,cudnn]`
    would silently fall back to CPU.
    """
    global _cuda_libraries_loaded
    if _cuda_libraries_loaded or not cuda_available():
        return
    _cuda_libraries_loaded = True
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # missing wheels are fine: the system's libraries may still serve
        log.info("onnxruntime.preload_dlls() did not load CUDA libraries: %s", exc)


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """Everything needed to open the sessions of one model version."""

    model_path: Path
    device: str  # "cuda" (required), "auto" (CUDA if it starts, else CPU) or "cpu"
    gpu_ids: tuple[int, ...] = (0,)
    instance_count: int = 1
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization_level: str = "all"
    cuda_tf32: bool = False
    extra_session_config: dict[str, str] = field(default_factory=dict)


class OnnxBackend:
    def __init__(self, spec: SessionSpec) -> None:
        self._spec = spec
        self._sessions: list[ort.InferenceSession] = []
        self._use_io_binding = False
        try:
            for index in range(spec.instance_count):
                self._sessions.append(self._open(index))
        except BaseException:  # session k of n failed (or the load was interrupted): drop the k-1 opened
            self.close()
            raise
        self._providers = list(self._sessions[0].get_providers())
        if CUDA not in self._providers:
            if spec.device == "cuda":
                self.close()
                raise ModelLoadError(
                    f"{spec.model_path}: the CUDA execution provider was required but ONNX Runtime could not "
                    f"start it (no GPU, or CUDA/cuDNN libraries missing); it offered {self._providers}"
                )
            if spec.device == "auto":
                log.warning("%s: CUDA is not usable here; running on CPU", spec.model_path)
        # ORT binds only non-string tensors; a model with string inputs or outputs runs unbound.
        self._has_strings = _has_string_tensors(self._sessions[0])
        self._use_io_binding = CUDA in self._providers and not self._has_strings
        self._output_types = {
            node.name: np.dtype(_ORT_TO_NUMPY[node.type])
            for node in self._sessions[0].get_outputs()
            if node.type in _ORT_TO_NUMPY
        }
        self._memories: list[DeviceMemory | None] = [None] * len(self._sessions)  # made at first use
        session = self._sessions[0]
        # By pointer only where every tensor has a numpy twin of fixed size (no strings, no bfloat16).
        self._binds_pointers = all(node.type in _ORT_TO_NUMPY for node in [*session.get_inputs(), *session.get_outputs()])
        log.info(
            "opened %s: %d instance(s) on %s, intra_op_threads=%d",
            spec.model_path, spec.instance_count, ",".join(self._providers), spec.intra_op_threads,
        )

    def _open(self, index: int) -> ort.InferenceSession:
        spec = self._spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.intra_op_threads
        options.inter_op_num_threads = spec.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _GRAPH_LEVELS[spec.graph_optimization_level]
        options.log_severity_level = 3
        spin = "1" if spec.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        for key, value in spec.extra_session_config.items():
            options.add_session_config_entry(key, value)
        providers: list[Any]
        if spec.device in ("cuda", "auto"):
            _load_cuda_libraries()
            gpu = spec.gpu_ids[index % len(spec.gpu_ids)]
            cuda_options = {
                "device_id": gpu,
                # Grow the arena by what is asked, so one model does not reserve memory others need.
                "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_algo_search": "HEURISTIC",
                # Inputs are copied on the compute stream: no race between copy and kernel.
                "do_copy_in_default_stream": True,
                # ORT's default is TF32 on; a float32 model should compute in float32 unless asked.
                "use_tf32": "1" if spec.cuda_tf32 else "0",
            }
            providers = [(CUDA, cuda_options), CPU]
        else:
            providers = [CPU]
        try:
            return ort.InferenceSession(str(spec.model_path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(f"{spec.model_path}: ONNX Runtime cannot load it: {exc}") from None

    @property
    def providers(self) -> list[str]:
        return self._providers

    @property
    def instance_count(self) -> int:
        return len(self._sessions)

    # ---- tensors by pointer (runtime/backends/binding.py) ----------------------------------------

    @property
    def binds_pointers(self) -> bool:
        """Whether requests may bring tensors by pointer: every tensor of the model has a fixed size."""
        return self._binds_pointers

    @property
    def device_type(self) -> str:
        return "cuda" if CUDA in self._providers else HOST_TYPE

    @property
    def device_ids(self) -> tuple[int, ...]:
        """The CUDA devices the instances run on (none on CPU)."""
        if CUDA not in self._providers:
            return ()
        gpus = self._spec.gpu_ids
        return tuple(sorted({gpus[index % len(gpus)] for index in range(len(self._sessions))}))

    def memory(self, instance: int) -> DeviceMemory:
        """The memory the instance's session computes in (the host's, or its GPU's)."""
        memory = self._memories[instance]
        if memory is None:
            if CUDA in self._providers:
                gpus = self._spec.gpu_ids
                memory = CudaMemory(gpus[instance % len(gpus)])  # needs cuda-python: only device tensors come here
            else:
                memory = HOST
            self._memories[instance] = memory
        return memory

    def run_bound(
        self,
        instance: int,
        requests: Sequence[io_binding.BoundRequest],
        output_names: list[str],
        placement: io_binding.Placement,
    ) -> list[dict[str, Array]]:
        """One batch through IO binding, inputs and outputs by pointer where they lie in shared memory."""
        session = self._sessions[instance]
        on_device = any(
            isinstance(tensor, io_binding.DeviceTensor) and tensor.memory.device_type != HOST_TYPE
            for request in requests
            for tensor in request.inputs.values()
        ) or any(
            target.memory.device_type != HOST_TYPE
            for request in requests
            if request.binding is not None
            for target in request.binding.outputs.values()
        )
        # A CUDA session needs its device's memory object (cuda-python) only for tensors on a device:
        # host tensors are bound as 'cpu' and ORT copies them across itself.
        memory = self.memory(instance) if on_device else HOST
        return io_binding.execute(session, memory, requests, output_names, self._output_types, placement, _allocate)

    def prepare_input(self, name: str, array: Array) -> Array:
        """Make a validated input what ONNX Runtime needs; runs per request, before batching.

        ORT string tensors want `str` objects: given `bytes` it would silently store their repr.
        """
        if array.dtype != object:
            return array
        try:
            return np.array(
                [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.ravel()],
                dtype=object,
            ).reshape(array.shape)
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input {name!r}: BYTES element is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "ONNX string tensors hold text"
            ) from None

    def run(self, instance: int, inputs: dict[str, Array], output_names: list[str]) -> dict[str, Array]:
        session = self._sessions[instance]
        try:
            if self._use_io_binding:
                return self._run_bound(session, inputs, output_names)
            results = session.run(output_names, inputs)
        except Exception as exc:
            raise ExecutionError(f"model execution failed: {exc}") from None
        return dict(zip(output_names, results))

    def _run_bound(self, session: ort.InferenceSession, inputs: dict[str, Array], output_names: list[str]) -> dict[str, Array]:
        # With IO binding, ORT copies each host input to the device once and each output back once,
        # instead of staging through its own temporary buffers per run.
        binding = session.io_binding()
        for name, array in inputs.items():
            if array.dtype == object:
                binding.bind_cpu_input(name, array)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in output_names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(output_names, binding.copy_outputs_to_cpu()))

    def close(self) -> None:
        # This list holds the only references: clearing it frees each session (its memory and its
        # thread pools) now, by reference counting.
        had_sessions = bool(self._sessions)
        self._sessions.clear()
        if had_sessions:
            _return_freed_memory()


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to ask
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def _return_freed_memory() -> None:
    """Hand the weights of closed sessions back to the OS.

    glibc keeps freed memory in the arena of the thread that allocated it; a version loaded on one
    executor thread and freed later would stay in RSS (one model size per arena) until that arena
    is reused. malloc_trim(0) releases the free pages of every arena.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


_ORT_TO_NUMPY: dict[str, type[Any]] = {
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
}


def _allocate(shape: tuple[int, ...], dtype: np.dtype[Any], memory: DeviceMemory) -> tuple[Any, int]:
    """A buffer ORT allocates (and frees with the OrtValue) in `memory`: the gathered batch of an input."""
    value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type, memory.device_type, memory.device_id)
    return value, int(value.data_ptr())


def _has_string_tensors(session: ort.InferenceSession) -> bool:
    return any(node.type == "tensor(string)" for node in [*session.get_inputs(), *session.get_outputs()])


def default_intra_op_threads(instance_count: int) -> int:
    cores = available_cores()  # the same count the config limits use
    return max(1, cores // 2 // max(1, instance_count))

"""Request and response shapes of the core, and the V2 datatype table. No I/O here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Parameters = Mapping[str, "bool | int | float | str"]

# V2 datatype name -> numpy dtype. BYTES travels as an object array of `bytes`.
DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NUMPY_TO_DATATYPE: dict[np.dtype[Any], str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}

# Triton model-config enum names (TYPE_*) <-> V2 datatype names.
CONFIG_TO_DATATYPE: dict[str, str] = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}
DATATYPE_TO_CONFIG: dict[str, str] = {v: k for k, v in CONFIG_TO_DATATYPE.items()}


def datatype_of(array: Array) -> str:
    """The V2 datatype of an array; str/unicode arrays count as BYTES."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return NUMPY_TO_DATATYPE[array.dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no V2 datatype") from None


def placeholder(dtype: np.dtype[Any], shape: tuple[int, ...]) -> Array:
    """An array of `dtype` and `shape` that holds no memory (every element is one zero, or b""): what an
    answer carries for an output written into the client's shared memory."""
    fill: Array = np.array(b"", dtype=object) if dtype.kind == "O" else np.zeros((), dtype=dtype)
    return np.broadcast_to(fill, shape)


@dataclass(slots=True, frozen=True)
class SharedMemoryRef:
    """Where a tensor lives in a registered shared-memory region (Triton's shared-memory extensions):
    `byte_size` bytes from `offset` within region `region` (runtime/shm)."""

    region: str
    byte_size: int
    offset: int = 0


@dataclass(slots=True, frozen=True)
class SharedInput:
    """An input the client left in shared memory: its declared datatype and shape, and where it is."""

    datatype: str
    shape: tuple[int, ...]
    memory: SharedMemoryRef


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, with the transport's per-output wishes."""

    name: str
    binary: bool | None = None  # HTTP binary extension; None: the request's default
    # Triton classification extension: top-k as "score:index[:label]"; parsed by validate.classification_count
    classification: int = 0
    # Triton's shared-memory extensions: the engine writes the output there and answers no data
    shared_memory: SharedMemoryRef | None = None


@dataclass(slots=True)
class InferRequest:
    """A decoded request: every input already a numpy array of its declared shape."""

    model_name: str
    model_version: str  # "" lets the server pick
    inputs: dict[str, Array]
    requested_outputs: list[RequestedOutput] | None = None  # None: all outputs
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    # Seconds on the monotonic clock after which the request is no longer wanted.
    deadline: float | None = None
    protocol: str = ""  # "http" or "grpc", for metrics and logs
    # Inputs left in registered shared memory, by name (none of them in `inputs`); the engine reads them
    shared_inputs: dict[str, SharedInput] | None = None
    # The caller's W3C `traceparent` (HTTP header, gRPC metadata), read by the transports only while
    # tracing is configured; the request's span once sampled (runtime/tracing), else None.
    trace_parent: str = ""
    trace: Any = None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, Array]  # in the order the client should see them
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    requested_outputs: dict[str, RequestedOutput] | None = None  # by name; None: all outputs, no wishes
    # Called by the transport once it has encoded the outputs: a front end's outputs are views of shared
    # memory that go back to the engine then (runtime/frontend.py). Nothing to do in one process.
    release: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)


@dataclass(slots=True, frozen=True)
class TensorSpec:
    """A model input or output as clients see it (shape includes the batch dim, -1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

"""Raw tensor bytes <-> numpy arrays, shared by the HTTP binary extension and gRPC raw contents."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime import codec
from runtime.errors import InvalidInput, ModelLoadError, quoted
from runtime.types import DATATYPE_TO_CONFIG, DATATYPE_TO_NUMPY, NUMPY_TO_DATATYPE, Array


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def numpy_dtype(datatype: str, tensor: str) -> np.dtype[Any]:
    try:
        return DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        known = ", ".join(DATATYPE_TO_NUMPY)
        raise InvalidInput(f"input {quoted(tensor)}: unknown datatype {quoted(datatype)} (one of {known})") from None


# No tensor gets near this many elements (a request is bytes-limited long before), and numpy cannot
# even describe a shape whose non-zero dims multiply past intp: such shapes are refused up front.
_MAX_ELEMENTS = np.iinfo(np.intp).max // 16


# numpy's NPY_MAXDIMS (64 in numpy 2): a deeper shape cannot be an ndarray at all.
MAX_DIMS = 64


def check_shape(shape: Sequence[int], tensor: str) -> tuple[int, ...]:
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input {quoted(tensor)}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input {quoted(tensor)}: shape {quoted(list(shape))} has a negative dimension")
    dims = tuple(int(dim) for dim in shape)
    if element_count([dim for dim in dims if dim]) > _MAX_ELEMENTS:
        raise InvalidInput(f"input {quoted(tensor)}: shape {quoted(list(dims))} is too large")
    return dims


def array_from_raw(raw: bytes | memoryview, datatype: str, shape: Sequence[int], tensor: str) -> Array:
    """An array viewing `raw` (no copy for fixed-size types), checked against shape x datatype."""
    dims = check_shape(shape, tensor)
    dtype = numpy_dtype(datatype, tensor)
    count = element_count(dims)
    if datatype == "BYTES":
        try:
            decoded: Array = codec.decode_bytes(raw, count)
            return decoded.reshape(dims)
        except codec.CodecError as exc:
            raise InvalidInput(f"input {quoted(tensor)}: BYTES data is malformed: {exc}") from None
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input {quoted(tensor)}: {len(raw)} bytes of data, but shape {list(dims)} of {datatype} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def array_from_json(data: object, datatype: str, shape: Sequence[int], tensor: str) -> Array:
    dims = check_shape(shape, tensor)
    dtype = numpy_dtype(datatype, tensor)
    try:
        converted: Array = codec.json_to_array(data, dtype, element_count(dims))
        return converted.reshape(dims)
    except codec.CodecError as exc:
        raise InvalidInput(f"input {quoted(tensor)}: {exc}") from None


def raw_from_array(array: Array) -> bytes:
    if array.dtype.kind in "OSU":
        encoded: bytes = codec.encode_bytes(array)
        return encoded
    return np.ascontiguousarray(array).tobytes()


def array_from_file(path: Path, dtype: np.dtype[Any], dims: Sequence[int], what: str, name: str, place: str) -> Array:
    """A config's raw data file (a warm-up sample, an initial state): row-major `dims` of `dtype`, exactly
    the bytes they need (a larger file is not read). `path` is already checked inside its folder
    (runtime.paths.inside); `what` names model and field, `name` the file as the config gives it,
    `place` the folder for messages. ModelLoadError when it is missing or of another size."""
    expected = element_count(dims) * dtype.itemsize
    try:
        size = path.stat().st_size if path.is_file() else -1
    except OSError:
        size = -1
    if size < 0:
        raise ModelLoadError(f"{what} {quoted(name)}: no such file in the {place}")
    if size != expected:
        type_name = DATATYPE_TO_CONFIG.get(NUMPY_TO_DATATYPE.get(dtype, ""), str(dtype))
        raise ModelLoadError(f"{what} {quoted(name)} holds {size} bytes; dims {list(dims)} of {type_name} need {expected}")
    return np.fromfile(path, dtype=dtype, count=expected // dtype.itemsize).reshape(tuple(dims))

"""The reference codec: pure Python + numpy. csrc/codec.pyx must give the same results and the same errors.

Each function has a fast path made of C-level builtins (numpy conversion, map/countOf/min/max, bytes.join)
for well-formed input, and falls back to an element-by-element walk that raises the first problem in
row-major order. Errors are built by runtime.codec._errors, shared with the Cython twin.
"""
from __future__ import annotations

import operator
import struct
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.codec import _errors as E
from runtime.codec._errors import MAX_DEPTH, CodecError

__all__ = ["CodecError", "array_to_json", "decode_bytes", "encode_bytes", "json_to_array"]

Array = npt.NDArray[Any]
_U32 = struct.Struct("<I")
_MAX_ELEMENT = 0xFFFFFFFF
_countOf = operator.countOf


# BYTES binary form ------------------------------------------------------------------------------------------
def decode_bytes(buffer: bytes | bytearray | memoryview, count: int) -> Array:
    """Length-prefixed (uint32 LE) elements -> 1-D object array of exactly `count` bytes objects."""
    if count < 0:
        raise E.negative_count(count)
    data = buffer if type(buffer) is bytes else memoryview(buffer).tobytes()
    end = len(data)
    unpack = _U32.unpack_from
    items: list[bytes] = []
    append = items.append
    pos = 0
    # range() is lazy and nothing else is sized by `count`: a huge count with little data allocates nothing.
    for index in range(count):
        start = pos + 4
        if start > end:
            if pos == end:
                raise E.wrong_count(count, index)
            raise E.truncated_prefix(index, end - pos)
        pos = start + unpack(data, pos)[0]
        if pos > end:
            raise E.overrun(index, pos - start, end - start)
        append(data[start:pos])
    if pos != end:
        raise E.trailing(count, end - pos)
    return np.fromiter(items, dtype=object, count=count)


def _element_bytes(index: int, value: object) -> bytes:
    if isinstance(value, bytes):
        encoded = value
    elif isinstance(value, str):
        try:
            encoded = str.encode(value, "utf-8")
        except UnicodeEncodeError as exc:
            raise E.not_utf8(index, exc) from None
    else:
        raise E.not_bytes(index, value)
    if len(encoded) > _MAX_ELEMENT:
        raise E.too_long(index, len(encoded))
    return encoded


def _as_bytes(items: list[Any]) -> list[bytes]:
    if _countOf(map(type, items), str) == len(items):
        try:
            return [s.encode("utf-8") for s in items]
        except UnicodeEncodeError:
            pass
    return [_element_bytes(index, value) for index, value in enumerate(items)]  # names the first bad one


def encode_bytes(array: Array) -> bytes:
    """Any-shape array of bytes/str (object, S or U dtype), row-major -> length-prefixed bytes."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"encode_bytes needs a numpy array, got {type(array).__name__}")
    if array.dtype.kind not in "OSU":
        raise E.not_bytes_array(array.dtype)
    items = array.ravel().tolist()
    n = len(items)
    if _countOf(map(type, items), bytes) != n:
        items = _as_bytes(items)
    lengths = list(map(len, items))
    if lengths and max(lengths) > _MAX_ELEMENT:  # only a hand-made object array gets here
        index = next(i for i, size in enumerate(lengths) if size > _MAX_ELEMENT)
        raise E.too_long(index, lengths[index])
    parts: list[bytes] = [b""] * (2 * n)
    parts[0::2] = map(_U32.pack, lengths)
    parts[1::2] = items
    return b"".join(parts)


# JSON form --------------------------------------------------------------------------------------------------
def _flatten(data: list[Any]) -> list[Any] | None:
    """Flatten uniformly nested lists one level at a time with C-level chain(); None if that shortcut fails.

    The shortcut only looks at each level's first element; a list found later among scalars shows up
    in the caller's type check, which then takes the element-by-element walk.
    """
    flat = data
    for _ in range(MAX_DEPTH - 1):
        if not flat or type(flat[0]) is not list:
            return flat
        if _countOf(map(type, flat), list) != len(flat):
            return None
        flat = list(chain.from_iterable(flat))
    return flat if not flat or type(flat[0]) is not list else None


def _walk(data: list[Any], dtype: np.dtype[Any], count: int) -> Array:
    """The canonical element-by-element conversion: raises the first problem in row-major order."""
    kind = dtype.kind
    values: list[Any] = []
    append = values.append
    if kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)

    def visit(items: list[Any], depth: int) -> None:
        for value in items:
            if isinstance(value, list):
                if depth >= MAX_DEPTH:
                    raise E.too_deep(len(values))
                visit(value, depth + 1)
            elif kind == "f":
                if isinstance(value, float):
                    append(float(value))
                elif isinstance(value, int) and not isinstance(value, bool):
                    try:
                        append(float(value))
                    except OverflowError:
                        raise E.out_of_range(len(values), dtype, value) from None
                else:
                    raise E.wrong_type(len(values), dtype, value)
            elif kind == "b":
                if value is not True and value is not False:
                    raise E.wrong_type(len(values), dtype, value)
                append(value)
            elif kind == "O":
                if not isinstance(value, str):
                    raise E.wrong_type(len(values), dtype, value)
                try:
                    append(str.encode(value, "utf-8"))
                except UnicodeEncodeError as exc:
                    raise E.not_utf8(len(values), exc) from None
            else:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise E.wrong_type(len(values), dtype, value)
                if not lo <= value <= hi:
                    raise E.out_of_range(len(values), dtype, value)
                append(int(value))

    visit(data, 1)
    if len(values) != count:
        raise E.wrong_count(count, len(values))
    if kind == "O":
        return np.fromiter(values, dtype=object, count=count)
    with np.errstate(over="ignore"):  # FP16/FP32 overflow becomes inf, as a C cast from double does
        return np.array(values, dtype=dtype)


def json_to_array(data: object, dtype: np.dtype[Any], count: int) -> Array:
    """V2 JSON `data` (flat or nested lists, row-major) -> flat 1-D array of `dtype` with `count` elements."""
    dt = E.check_dtype(dtype)
    if not isinstance(data, list):
        raise E.not_a_list(data)
    flat = _flatten(data)
    if flat is None:
        return _walk(data, dt, count)
    kind = dt.kind
    n = len(flat)
    try:
        if kind == "f":
            if _countOf(map(type, flat), float) != n and not set(map(type, flat)) <= {float, int}:
                return _walk(data, dt, count)
            with np.errstate(over="ignore"):
                out = np.array(flat, dtype=dt)  # an int too big for a double raises OverflowError
        elif kind == "b":
            if _countOf(map(type, flat), bool) != n:
                return _walk(data, dt, count)
            out = np.array(flat, dtype=dt)
        elif kind == "O":
            if _countOf(map(type, flat), str) != n:
                return _walk(data, dt, count)
            # str.encode raises UnicodeEncodeError on a lone surrogate
            out = np.fromiter([s.encode("utf-8") for s in flat], dtype=object, count=n)
        else:
            if _countOf(map(type, flat), int) != n:
                return _walk(data, dt, count)
            info = np.iinfo(dt)
            if n and (min(flat) < info.min or max(flat) > info.max):
                return _walk(data, dt, count)
            out = np.array(flat, dtype=dt)
    except (OverflowError, UnicodeEncodeError):
        return _walk(data, dt, count)
    if n != count:
        raise E.wrong_count(count, n)
    return out


def _element_text(index: int, value: object) -> str:
    if isinstance(value, bytes):
        return bytes.decode(value, "utf-8", "replace")
    if isinstance(value, str):
        return value if type(value) is str else str(value)
    raise E.not_bytes(index, value)


def array_to_json(array: Array) -> list[Any]:
    """Flat row-major list of Python scalars for a JSON reply; BYTES elements decoded as UTF-8 (replace)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array_to_json needs a numpy array, got {type(array).__name__}")
    kind = array.dtype.kind
    if kind in "biuU" or (kind == "f" and array.dtype.itemsize in (2, 4, 8)):
        return array.ravel().tolist()
    if kind not in "OS":
        raise E.not_json_array(array.dtype)
    items = array.ravel().tolist()
    if _countOf(map(type, items), bytes) == len(items):
        return [b.decode("utf-8", "replace") for b in items]
    return [_element_text(index, value) for index, value in enumerate(items)]

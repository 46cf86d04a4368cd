"""CodecError and the messages both codec implementations raise, built in one place so they match."""
from __future__ import annotations

from typing import Any

import numpy as np

# Lists nested deeper than this are refused (numpy itself stops at 64 dimensions).
MAX_DEPTH = 64

_V2_NAMES = {
    "b": {1: "BOOL"},
    "u": {1: "UINT8", 2: "UINT16", 4: "UINT32", 8: "UINT64"},
    "i": {1: "INT8", 2: "INT16", 4: "INT32", 8: "INT64"},
    "f": {2: "FP16", 4: "FP32", 8: "FP64"},
    "O": {8: "BYTES"},
}
_EXPECTED = {"b": "a boolean", "u": "an integer", "i": "an integer", "f": "a number", "O": "a string"}


class CodecError(ValueError):
    """Tensor data that does not fit its declared datatype or shape; the message names element and problem."""


def check_dtype(dtype: Any) -> np.dtype[Any]:
    """`dtype` as a numpy dtype json_to_array supports, else TypeError (a caller's bug, not bad input)."""
    dt: np.dtype[Any] = np.dtype(dtype)
    if dt.itemsize not in _V2_NAMES.get(dt.kind, {}):
        raise TypeError(f"json_to_array does not support dtype {dt}")
    return dt


def datatype_name(dtype: np.dtype[Any]) -> str:
    return _V2_NAMES[dtype.kind][dtype.itemsize]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _short(value: object, limit: int = 40) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than sys.get_int_max_str_digits()
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else "<unprintable>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: object) -> str:
    """A JSON-flavoured description of a value for error messages: 'string "1.5"', 'true', 'null'."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return "string " + _short(str(value))
    if isinstance(value, float):
        return "number " + _short(float(value))
    if isinstance(value, int):
        return "integer " + _short(int(value))
    if isinstance(value, dict):
        return "an object"
    return f"{type(value).__name__} {_short(value)}"


# json_to_array ----------------------------------------------------------------------------------------------
def not_a_list(data: object) -> CodecError:
    return CodecError(f"data must be a list, got {describe(data)}")


def wrong_type(index: int, dtype: np.dtype[Any], value: object) -> CodecError:
    return CodecError(
        f"element {index}: expected {_EXPECTED[dtype.kind]} for {datatype_name(dtype)}, got {describe(value)}"
    )


def out_of_range(index: int, dtype: np.dtype[Any], value: object) -> CodecError:
    return CodecError(f"element {index}: {_short(value)} is out of range for {datatype_name(dtype)}")


def too_deep(index: int) -> CodecError:
    return CodecError(f"element {index}: lists are nested deeper than {MAX_DEPTH} levels")


def not_utf8(index: int, exc: UnicodeEncodeError) -> CodecError:
    return CodecError(f"element {index}: string cannot be encoded as UTF-8 ({exc.reason})")


def wrong_count(expected: int, got: int) -> CodecError:
    return CodecError(f"expected {_n(expected, 'element')}, got {got}")


# decode_bytes / encode_bytes / array_to_json ----------------------------------------------------------------
def negative_count(count: int) -> CodecError:
    return CodecError(f"element count must not be negative, got {count}")


def truncated_prefix(index: int, left: int) -> CodecError:
    return CodecError(f"element {index}: length prefix is truncated ({_n(left, 'byte')} left, 4 needed)")


def overrun(index: int, length: int, left: int) -> CodecError:
    return CodecError(f"element {index}: length {length} overruns the buffer ({_n(left, 'byte')} left)")


def trailing(count: int, left: int) -> CodecError:
    return CodecError(f"{_n(left, 'byte')} left over after the last of {_n(count, 'element')}")


def not_bytes(index: int, value: object) -> CodecError:
    return CodecError(f"element {index}: expected bytes or str, got {type(value).__name__}")


def too_long(index: int, length: int) -> CodecError:
    return CodecError(f"element {index}: {length} bytes exceed the 4 GiB limit of a BYTES element")


def not_bytes_array(dtype: np.dtype[Any]) -> TypeError:
    return TypeError(f"encode_bytes needs an array of dtype object, S or U, got {dtype}")


def not_json_array(dtype: np.dtype[Any]) -> TypeError:
    return TypeError(f"array_to_json does not support dtype {dtype}")

"""The V2 tensor codec: unit tests run against both implementations (`codec` fixture), and Hypothesis
checks that the Cython build (`fast`) gives exactly what the numpy reference (`pure`) gives."""
from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import runtime.codec
from runtime.codec import CodecError, _py
from runtime.codec._errors import MAX_DEPTH

ROOT = Path(__file__).resolve().parents[2]
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pack(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def objects(*items: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out.reshape(shape) if shape is not None else out


# picker -----------------------------------------------------------------------------------------------------
def test_picker_exports_the_api() -> None:
    assert runtime.codec.IMPLEMENTATION in ("cython", "python")
    assert runtime.codec.CodecError is CodecError and issubclass(CodecError, ValueError)
    for name in ("decode_bytes", "encode_bytes", "json_to_array", "array_to_json"):
        assert callable(getattr(runtime.codec, name))


def test_picker_uses_cython_where_it_pays() -> None:
    try:
        from runtime.codec import _codec
    except ImportError:
        pytest.skip("runtime.codec._codec is not built")
    if os.environ.get("RUNTIME_NO_EXTENSIONS") == "1":
        pytest.skip("RUNTIME_NO_EXTENSIONS=1 is set for this run")
    assert runtime.codec.IMPLEMENTATION == "cython"
    assert runtime.codec.decode_bytes is _codec.decode_bytes
    assert runtime.codec.encode_bytes is _codec.encode_bytes
    assert runtime.codec.json_to_array is _codec.json_to_array
    # Not >= 3x faster than ndarray.tolist(): the numpy twin serves (see runtime/codec/__init__.py).
    assert runtime.codec.array_to_json is _py.array_to_json


def test_env_var_forces_the_python_twins() -> None:
    code = (
        "import runtime.codec as c, runtime.codec._py as p;"
        "print(c.IMPLEMENTATION, all(getattr(c, n) is getattr(p, n) for n in "
        "('decode_bytes', 'encode_bytes', 'json_to_array', 'array_to_json')))"
    )
    env = {**os.environ, "RUNTIME_NO_EXTENSIONS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["python", "True"]


# decode_bytes -----------------------------------------------------------------------------------------------
def test_decode_bytes_returns_an_object_array_of_bytes(codec: ModuleType) -> None:
    out = codec.decode_bytes(pack(b"abc", b"", b"\x00\xff"), 3)
    assert out.dtype == np.dtype(object) and out.shape == (3,)
    assert out.tolist() == [b"abc", b"", b"\x00\xff"]
    assert all(type(x) is bytes for x in out)


def test_decode_bytes_of_nothing(codec: ModuleType) -> None:
    out = codec.decode_bytes(b"", 0)
    assert out.shape == (0,) and out.dtype == np.dtype(object)


@pytest.mark.parametrize(
    "wrap",
    [bytearray, memoryview, lambda b: memoryview(b"xx" + b)[2:], lambda b: np.frombuffer(b, np.uint8)],
    ids=["bytearray", "memoryview", "memoryview-slice", "ndarray"],
)
def test_decode_bytes_takes_any_contiguous_buffer(codec: ModuleType, wrap: Callable[[bytes], Any]) -> None:
    assert codec.decode_bytes(wrap(pack(b"hello", b"world")), 2).tolist() == [b"hello", b"world"]


def test_decode_bytes_copies_a_non_contiguous_buffer(codec: ModuleType) -> None:
    spread = bytes(b for byte in pack(b"ab") for b in (byte, 0))
    assert codec.decode_bytes(memoryview(spread)[::2], 1).tolist() == [b"ab"]


def test_decode_bytes_elements_outlive_the_buffer(codec: ModuleType) -> None:
    buffer = bytearray(pack(b"abc"))
    out = codec.decode_bytes(buffer, 1)
    buffer[4:7] = b"xyz"
    assert out[0] == b"abc"


def test_decode_bytes_rejects_a_non_buffer(codec: ModuleType) -> None:
    with pytest.raises(TypeError):
        codec.decode_bytes("not bytes", 1)


@pytest.mark.parametrize(
    "buffer, count, message",
    [
        (b"\xe8\x03\x00\x00" * 4, 1, "element 0: length 1000 overruns the buffer (12 bytes left)"),
        (
            pack(b"a", b"b", b"c") + b"\xe8\x03\x00\x00" + b"x" * 12,
            4,
            "element 3: length 1000 overruns the buffer (12 bytes left)",
        ),
        (pack(b"abc") + b"\x01\x00", 2, "element 1: length prefix is truncated (2 bytes left, 4 needed)"),
        (b"\x01", 1, "element 0: length prefix is truncated (1 byte left, 4 needed)"),
        (pack(b"a", b"b"), 3, "expected 3 elements, got 2"),
        (b"", 1, "expected 1 element, got 0"),
        (pack(b"a", b"b"), 1, "5 bytes left over after the last of 1 element"),
        (b"\x00", 0, "1 byte left over after the last of 0 elements"),
        (b"", -1, "element count must not be negative, got -1"),
    ],
    ids=[
        "overrun-first",
        "overrun-later",
        "truncated-prefix",
        "truncated-first",
        "too-few",
        "empty",
        "trailing",
        "trailing-zero-count",
        "negative-count",
    ],
)
def test_decode_bytes_errors(codec: ModuleType, buffer: bytes, count: int, message: str) -> None:
    with pytest.raises(CodecError) as info:
        codec.decode_bytes(buffer, count)
    assert str(info.value) == message


def test_decode_bytes_huge_count_with_little_data_allocates_nothing(codec: ModuleType) -> None:
    with pytest.raises(CodecError, match="expected 1000000000000 elements, got 1"):
        codec.decode_bytes(pack(b"a"), 10**12)


# encode_bytes -----------------------------------------------------------------------------------------------
def test_encode_bytes_object_array(codec: ModuleType) -> None:
    assert codec.encode_bytes(objects(b"ab", b"", "é", np.bytes_(b"z"))) == pack(
        b"ab", b"", "é".encode(), b"z"
    )


def test_encode_bytes_is_row_major_for_any_layout(codec: ModuleType) -> None:
    grid = objects(b"a", b"b", b"c", b"d", b"e", b"f", shape=(2, 3))
    expected = pack(b"a", b"b", b"c", b"d", b"e", b"f")
    assert codec.encode_bytes(grid) == expected
    assert codec.encode_bytes(np.asfortranarray(grid)) == expected
    assert codec.encode_bytes(grid.T) == pack(b"a", b"d", b"b", b"e", b"c", b"f")
    assert codec.encode_bytes(grid[:, ::2]) == pack(b"a", b"c", b"d", b"f")


def test_encode_bytes_fixed_width_arrays(codec: ModuleType) -> None:
    # numpy reads 'S' items with trailing NULs stripped; NULs inside stay.
    assert codec.encode_bytes(np.array([[b"a\x00b", b"cd"], [b"", b"e\x00"]])) == pack(
        b"a\x00b", b"cd", b"", b"e"
    )
    assert codec.encode_bytes(np.array(["héllo", "x"])) == pack("héllo".encode(), b"x")
    assert codec.encode_bytes(np.array(["é", "xy"])[::-1]) == pack(b"xy", "é".encode())


def test_encode_bytes_of_nothing_and_of_a_scalar(codec: ModuleType) -> None:
    assert codec.encode_bytes(np.empty((0, 3), dtype=object)) == b""
    assert codec.encode_bytes(np.array(b"abc", dtype=object)) == pack(b"abc")


def test_encode_then_decode_round_trips(codec: ModuleType) -> None:
    items = objects(b"x" * 300, b"", b"\x00\x01", "ü".encode())
    assert codec.decode_bytes(codec.encode_bytes(items), 4).tolist() == items.tolist()


@pytest.mark.parametrize(
    "array, message",
    [
        (objects(b"a", 5), "element 1: expected bytes or str, got int"),
        (objects("a", None, b"b", shape=(1, 3)), "element 1: expected bytes or str, got NoneType"),
        (objects(b"a", "b\ud800"), "element 1: string cannot be encoded as UTF-8 (surrogates not allowed)"),
        (objects("\ud800", 1), "element 0: string cannot be encoded as UTF-8 (surrogates not allowed)"),
    ],
    ids=["int", "none", "surrogate", "first-error-wins"],
)
def test_encode_bytes_errors(codec: ModuleType, array: np.ndarray, message: str) -> None:
    with pytest.raises(CodecError) as info:
        codec.encode_bytes(array)
    assert str(info.value) == message


@pytest.mark.parametrize("value", [np.zeros(3, np.float32), [b"a"]], ids=["float-array", "list"])
def test_encode_bytes_rejects_what_is_not_a_bytes_array(codec: ModuleType, value: Any) -> None:
    with pytest.raises(TypeError):
        codec.encode_bytes(value)


# json_to_array ----------------------------------------------------------------------------------------------
NUMERIC = [
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
]


@pytest.mark.parametrize("dtype", NUMERIC)
def test_json_to_array_numbers(codec: ModuleType, dtype: str) -> None:
    data = [0, 1, 2, 100] if dtype[0] in "ui" else [0, 1.5, -2, 1e-3]
    out = codec.json_to_array(data, np.dtype(dtype), 4)
    assert out.dtype == np.dtype(dtype) and out.shape == (4,)
    np.testing.assert_array_equal(out, np.array(data, dtype=dtype))


def test_json_to_array_bool(codec: ModuleType) -> None:
    out = codec.json_to_array([[True, False], [False]], np.dtype(bool), 3)
    assert out.dtype == np.dtype(bool) and out.tolist() == [True, False, False]


def test_json_to_array_bytes_are_utf8(codec: ModuleType) -> None:
    out = codec.json_to_array(["abc", "", "東京"], np.dtype(object), 3)
    assert out.dtype == np.dtype(object) and out.tolist() == [b"abc", b"", "東京".encode()]
    assert all(type(x) is bytes for x in out)


def test_json_to_array_integer_limits(codec: ModuleType) -> None:
    assert codec.json_to_array([2**64 - 1, 0], np.dtype(np.uint64), 2).tolist() == [2**64 - 1, 0]
    assert codec.json_to_array([-(2**63), 2**63 - 1], np.dtype(np.int64), 2).tolist() == [-(2**63), 2**63 - 1]
    assert codec.json_to_array([-128, 127], np.dtype(np.int8), 2).tolist() == [-128, 127]
    assert codec.json_to_array([255], np.dtype(np.uint8), 1).tolist() == [255]


def test_json_to_array_floats_round_as_a_cast_from_double(codec: ModuleType) -> None:
    out = codec.json_to_array([0.1, 2**24 + 1, 1e300, -1e300], np.dtype(np.float32), 4)
    assert out.tolist() == [float(np.float32(0.1)), 2.0**24, math.inf, -math.inf]
    half = codec.json_to_array([0.1, 65520.0, 2049], np.dtype(np.float16), 3)
    assert half.dtype == np.dtype(np.float16) and half.tolist() == [float(np.float16(0.1)), math.inf, 2048.0]
    # Just above a tie between two FP16 values: rounding once from double goes up; via float32 it would
    # tie to even.
    assert codec.json_to_array([1 + 2**-11 + 2**-30], np.dtype(np.float16), 1).tolist() == [1 + 2**-10]


def test_json_to_array_passes_nan_and_infinity(codec: ModuleType) -> None:
    out = codec.json_to_array([math.nan, math.inf], np.dtype(np.float64), 2)
    assert math.isnan(out[0]) and out[1] == math.inf


@pytest.mark.parametrize(
    "data",
    [
        [[1, 2, 3], [4, 5, 6]],
        [[[1], [2]], [[3], [4]], [[5], [6]]],
        [[1, 2], [3, 4, 5], [6]],
        [1, [2, [3, [4]]], [], 5, [[6]]],
        [[], [1, 2, 3, 4, 5, 6], [[]]],
    ],
    ids=["2d", "3d", "ragged", "mixed-depths", "empty-sublists"],
)
@pytest.mark.parametrize("dtype", ["int32", "float32"])
def test_json_to_array_flattens_row_major(codec: ModuleType, data: list[Any], dtype: str) -> None:
    out = codec.json_to_array(data, np.dtype(dtype), 6)
    assert out.shape == (6,) and out.tolist() == [1, 2, 3, 4, 5, 6]


def test_json_to_array_accepts_subclasses_of_the_json_types(codec: ModuleType) -> None:
    assert codec.json_to_array([np.float64(1.5), 2], np.dtype(np.float32), 2).tolist() == [1.5, 2.0]
    assert codec.json_to_array([np.str_("ab")], np.dtype(object), 1).tolist() == [b"ab"]
    with pytest.raises(CodecError, match="^element 0: expected an integer for INT32, got float32 "):
        codec.json_to_array([np.float32(1.0)], np.dtype(np.int32), 1)  # numpy scalars are no JSON ints


def test_json_to_array_empty(codec: ModuleType) -> None:
    assert codec.json_to_array([], np.dtype(np.float32), 0).shape == (0,)
    assert codec.json_to_array([[], []], np.dtype(np.int64), 0).shape == (0,)


def test_json_to_array_non_native_byte_order(codec: ModuleType) -> None:
    out = codec.json_to_array([1.5, 2], np.dtype(">f4"), 2)
    assert out.dtype == np.dtype(">f4") and out.tolist() == [1.5, 2.0]


def test_json_to_array_nesting_limit(codec: ModuleType) -> None:
    def nest(depth: int) -> list[Any]:
        data: list[Any] = [1.0]
        for _ in range(depth - 1):
            data = [data]
        return data

    assert codec.json_to_array(nest(MAX_DEPTH), np.dtype(np.float32), 1).tolist() == [1.0]
    with pytest.raises(CodecError, match=f"^element 1: lists are nested deeper than {MAX_DEPTH} levels$"):
        codec.json_to_array([2.0, nest(MAX_DEPTH)], np.dtype(np.float32), 2)


@pytest.mark.parametrize(
    "data, dtype, count, message",
    [
        ([1.0, True], "float32", 2, "element 1: expected a number for FP32, got true"),
        ([1.0, "1.5"], "float64", 2, "element 1: expected a number for FP64, got string '1.5'"),
        ([[1.0], [None]], "float16", 2, "element 1: expected a number for FP16, got null"),
        ([1, 2.0], "int32", 2, "element 1: expected an integer for INT32, got number 2.0"),
        ([False], "int64", 1, "element 0: expected an integer for INT64, got false"),
        (["7"], "uint8", 1, "element 0: expected an integer for UINT8, got string '7'"),
        ([{"a": 1}], "int8", 1, "element 0: expected an integer for INT8, got an object"),
        ([1, 0], "bool", 2, "element 0: expected a boolean for BOOL, got integer 1"),
        ([True, "true"], "bool", 2, "element 1: expected a boolean for BOOL, got string 'true'"),
        (["a", b"b"], "object", 2, "element 1: expected a string for BYTES, got bytes b'b'"),
        (["a", 1], "object", 2, "element 1: expected a string for BYTES, got integer 1"),
        (["\ud800"], "object", 1, "element 0: string cannot be encoded as UTF-8 (surrogates not allowed)"),
        ([[1, 2], [3, 300]], "uint8", 4, "element 3: 300 is out of range for UINT8"),
        ([-1], "uint64", 1, "element 0: -1 is out of range for UINT64"),
        ([2**64], "uint64", 1, "element 0: 18446744073709551616 is out of range for UINT64"),
        ([2**63], "int64", 1, "element 0: 9223372036854775808 is out of range for INT64"),
        ([-129], "int8", 1, "element 0: -129 is out of range for INT8"),
        ([65536], "uint16", 1, "element 0: 65536 is out of range for UINT16"),
        (
            [1.0, 2**1024],
            "float64",
            2,
            "element 1: 1797693134862315907729305190789024733... is out of range for FP64",
        ),
        ([1.0] * 15, "float32", 16, "expected 16 elements, got 15"),
        ([[1, 2], [3]], "int64", 2, "expected 2 elements, got 3"),
        ([1, 2], "int64", -1, "expected -1 elements, got 2"),
        ([1, "x", 3], "int64", 7, "element 1: expected an integer for INT64, got string 'x'"),
        ("abc", "float32", 3, "data must be a list, got string 'abc'"),
        (1.5, "float32", 1, "data must be a list, got number 1.5"),
        ((1.0, 2.0), "float32", 2, "data must be a list, got tuple (1.0, 2.0)"),
    ],
    ids=[
        "bool-as-float",
        "str-as-float",
        "null-nested",
        "float-as-int",
        "bool-as-int",
        "str-as-int",
        "dict",
        "int-as-bool",
        "str-as-bool",
        "bytes-as-bytes",
        "int-as-bytes",
        "surrogate",
        "uint8-range-nested",
        "uint64-negative",
        "uint64-too-big",
        "int64-too-big",
        "int8-too-small",
        "uint16-too-big",
        "int-too-big-for-double",
        "too-few",
        "too-many",
        "negative-count",
        "element-error-before-count",
        "str-data",
        "scalar-data",
        "tuple-data",
    ],
)
def test_json_to_array_errors(codec: ModuleType, data: Any, dtype: str, count: int, message: str) -> None:
    with pytest.raises(CodecError) as info:
        codec.json_to_array(data, np.dtype(dtype), count)
    assert str(info.value) == message


def test_json_to_array_huge_count_with_little_data_allocates_nothing(codec: ModuleType) -> None:
    with pytest.raises(CodecError, match="^expected 1000000000000 elements, got 2$"):
        codec.json_to_array([[1.0], [2.0]], np.dtype(np.float64), 10**12)


def test_json_to_array_names_an_enormous_integer_without_printing_it(codec: ModuleType) -> None:
    with pytest.raises(CodecError, match="^element 0: <an integer of 33220 bits> is out of range for INT64$"):
        codec.json_to_array([10**10000], np.dtype(np.int64), 1)


@pytest.mark.parametrize(
    "dtype", ["complex64", "U3", "datetime64[s]", "float128" if hasattr(np, "float128") else "V4"]
)
def test_json_to_array_unsupported_dtype_is_a_type_error(codec: ModuleType, dtype: str) -> None:
    with pytest.raises(TypeError, match="does not support dtype"):
        codec.json_to_array([1], np.dtype(dtype), 1)


# array_to_json ----------------------------------------------------------------------------------------------
def test_array_to_json_numbers_are_python_scalars(codec: ModuleType) -> None:
    out = codec.array_to_json(np.array([[1.5, -2.25], [0.1, 3]], dtype=np.float32))
    assert out == [1.5, -2.25, float(np.float32(0.1)), 3.0] and all(type(x) is float for x in out)
    half = codec.array_to_json(np.array([0.1, 65504], dtype=np.float16))
    assert half == [float(np.float16(0.1)), 65504.0] and all(type(x) is float for x in half)
    assert codec.array_to_json(np.array([2**64 - 1, 0], dtype=np.uint64)) == [2**64 - 1, 0]
    ints = codec.array_to_json(np.array([[-1, 2]], dtype=np.int8))
    assert ints == [-1, 2] and all(type(x) is int for x in ints)
    bools = codec.array_to_json(np.array([True, False]))
    assert bools == [True, False] and all(type(x) is bool for x in bools)


def test_array_to_json_is_row_major(codec: ModuleType) -> None:
    grid = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert codec.array_to_json(np.asfortranarray(grid)) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert codec.array_to_json(grid.T) == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    assert codec.array_to_json(grid.astype(">f4")) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert codec.array_to_json(np.array(2.5, dtype=np.float32)) == [2.5]


def test_array_to_json_bytes_become_text(codec: ModuleType) -> None:
    out = codec.array_to_json(objects(b"abc", "déjà", b"\xff\xfeok", b"", shape=(2, 2)))
    assert out == ["abc", "déjà", "\ufffd\ufffdok", ""] and all(type(x) is str for x in out)
    assert codec.array_to_json(np.array([b"a\x00", b"bc"])) == ["a", "bc"]
    assert codec.array_to_json(np.array(["x", "yz"])) == ["x", "yz"]
    assert (
        codec.array_to_json(objects(np.str_("s"))) == ["s"]
        and type(codec.array_to_json(objects(np.str_("s")))[0]) is str
    )


def test_array_to_json_rejects_what_json_cannot_hold(codec: ModuleType) -> None:
    with pytest.raises(CodecError, match="^element 1: expected bytes or str, got int$"):
        codec.array_to_json(objects(b"a", 3))
    with pytest.raises(TypeError, match="does not support dtype"):
        codec.array_to_json(np.zeros(2, np.complex64))
    with pytest.raises(TypeError):
        codec.array_to_json([1.0])


# fast == pure -----------------------------------------------------------------------------------------------
def outcome(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """What a call did, in a form to compare: ('ok', dtype, shape, values) or ('raised', type, message)."""
    try:
        result = fn(*args)
    except (CodecError, TypeError, ValueError, OverflowError) as exc:
        return ("raised", type(exc), str(exc) if isinstance(exc, CodecError) else "")
    if isinstance(result, np.ndarray):
        values = [
            ("nan",) if isinstance(v, float) and math.isnan(v) else (type(v), v) for v in result.tolist()
        ]
        return ("ok", result.dtype, result.shape, values)
    if isinstance(result, list):
        return ("ok", [("nan",) if isinstance(v, float) and math.isnan(v) else (type(v), v) for v in result])
    return ("ok", type(result), result)


@st.composite
def byte_buffers(draw: st.DrawFn) -> tuple[bytes, int]:
    """Well-formed BYTES buffers, often corrupted (cut, extended, a byte changed); right or wrong counts."""
    elements = draw(st.lists(st.binary(max_size=40), max_size=12))
    buffer = pack(*elements)
    count = len(elements)
    corruption = draw(st.sampled_from(["none", "cut", "extend", "poke", "count", "random"]))
    if corruption == "cut" and buffer:
        buffer = buffer[: draw(st.integers(0, len(buffer) - 1))]
    elif corruption == "extend":
        buffer += draw(st.binary(min_size=1, max_size=8))
    elif corruption == "poke" and buffer:
        at = draw(st.integers(0, len(buffer) - 1))
        buffer = buffer[:at] + bytes([draw(st.integers(0, 255))]) + buffer[at + 1 :]
    elif corruption == "count":
        count = draw(st.integers(-2, count + 3))
    elif corruption == "random":
        buffer = draw(st.binary(max_size=64))
        count = draw(st.integers(0, 8))
    return buffer, count


@PROPERTY
@given(case=byte_buffers(), kind=st.sampled_from([bytes, bytearray, memoryview]))
def test_decode_bytes_fast_equals_pure(
    fast: ModuleType, pure: ModuleType, case: tuple[bytes, int], kind: type
) -> None:
    buffer, count = case
    assert outcome(fast.decode_bytes, kind(buffer), count) == outcome(pure.decode_bytes, kind(buffer), count)


# Plain text, and text with lone surrogates (which UTF-8 cannot encode).
texts = st.one_of(
    st.text(max_size=12), st.text(alphabet=st.characters(categories=["Cs", "Ll", "Lo"]), max_size=6)
)
byte_items = st.one_of(st.binary(max_size=20), texts, st.text(max_size=12))
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def bytes_arrays(draw: st.DrawFn) -> np.ndarray:
    shape = draw(shapes)
    size = int(np.prod(shape))
    layout = draw(st.sampled_from(["object", "S", "U", "object-mixed"]))
    if layout == "S":
        array = np.array(
            draw(st.lists(st.binary(max_size=8), min_size=size, max_size=size)) or [b""], dtype="S"
        )
    elif layout == "U":
        array = np.array(draw(st.lists(st.text(max_size=8), min_size=size, max_size=size)) or [""], dtype="U")
    else:
        pool = byte_items if layout == "object" else st.one_of(byte_items, st.integers(), st.none())
        array = objects(*draw(st.lists(pool, min_size=size, max_size=size)))
    array = array[:size].reshape(shape)
    if array.ndim >= 2 and draw(st.booleans()):
        array = array.T  # not C-contiguous
    return array


@PROPERTY
@given(array=bytes_arrays())
def test_encode_bytes_fast_equals_pure(fast: ModuleType, pure: ModuleType, array: np.ndarray) -> None:
    expected = outcome(pure.encode_bytes, array)
    assert outcome(fast.encode_bytes, array) == expected
    if expected[0] == "ok":
        assert fast.decode_bytes(expected[2], array.size).tolist() == [
            x if isinstance(x, bytes) else x.encode() for x in array.ravel().tolist()
        ]


JSON_DTYPES = ["bool", *NUMERIC, "object"]
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-300, 300),
    st.sampled_from([0, 2**63 - 1, -(2**63), 2**64 - 1, 2**63, 2**1024, 65504, 65520, 2**24 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.none(),
)


def valid_scalars(dtype: np.dtype[Any]) -> st.SearchStrategy[Any]:
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(int(info.min), int(info.max))
    if dtype.kind == "f":
        return st.one_of(st.floats(), st.integers(-(2**70), 2**70))
    return st.text(max_size=10)


@st.composite
def json_cases(draw: st.DrawFn) -> tuple[Any, np.dtype[Any], int]:
    """Nested (often ragged) lists, mostly of values right for the dtype, some wrong; right or wrong count."""
    dtype = np.dtype(
        draw(st.sampled_from([*JSON_DTYPES, "float32", "float32", "float16", "int64", "object"]))
    )
    leaf = valid_scalars(dtype) if draw(st.integers(0, 3)) else st.one_of(valid_scalars(dtype), scalars)
    if draw(st.booleans()):  # regular nesting, as clients send tensors
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))
        flat = draw(st.lists(leaf, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        data: Any = objects(*flat).reshape(shape).tolist() if flat else []
    else:
        data = draw(
            st.lists(st.recursive(leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=20), max_size=6)
        )
    size = _count_leaves(data)
    count = size if draw(st.integers(0, 3)) else draw(st.integers(-1, size + 2))
    return data, dtype, count


def _count_leaves(data: Any) -> int:
    return sum(_count_leaves(x) for x in data) if isinstance(data, list) else 1


@PROPERTY
@given(case=json_cases())
def test_json_to_array_fast_equals_pure(
    fast: ModuleType, pure: ModuleType, case: tuple[Any, np.dtype[Any], int]
) -> None:
    data, dtype, count = case
    assert outcome(fast.json_to_array, data, dtype, count) == outcome(pure.json_to_array, data, dtype, count)


@PROPERTY
@given(
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    flat=st.lists(st.one_of(st.floats(), st.floats(width=32), st.integers(-(2**80), 2**80)), max_size=40),
    cols=st.integers(1, 8),
)
def test_json_to_array_floats_fast_equals_pure(
    fast: ModuleType, pure: ModuleType, dtype: str, flat: list[Any], cols: int
) -> None:
    """Rounding to FP16/FP32, overflow to inf, ints made floats: bit for bit the same, flat or in rows."""
    dt = np.dtype(dtype)
    for data in (flat, [flat[i : i + cols] for i in range(0, len(flat), cols)]):
        expected = pure.json_to_array(data, dt, len(flat))
        got = fast.json_to_array(data, dt, len(flat))
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


def test_json_to_array_fast_path_equals_the_element_walk() -> None:
    """The reference's shortcut (numpy on the flattened list) agrees with its own element-by-element walk."""
    rng = np.random.default_rng(7)
    for dtype in JSON_DTYPES:
        dt = np.dtype(dtype)
        if dt.kind == "O":
            flat: list[Any] = ["a", "bc", "東"] * 4
        elif dt.kind == "b":
            flat = [True, False, True] * 4
        elif dt.kind == "f":
            flat = [*rng.normal(size=10).tolist(), 3, 2**60 + 1]
        else:
            info = np.iinfo(dt)
            flat = [int(info.min), int(info.max), 0, 1] * 3
        nested = [flat[:5], flat[5:]]
        assert outcome(_py.json_to_array, nested, dt, 12) == outcome(_py._walk, nested, dt, 12)


numeric_arrays = st.sampled_from(["bool", *NUMERIC, ">f4", "<f8", ">i2"]).flatmap(
    lambda dtype: hnp.arrays(np.dtype(dtype), shapes)
)


@PROPERTY
@given(array=st.one_of(numeric_arrays, bytes_arrays()), transpose=st.booleans())
def test_array_to_json_fast_equals_pure(
    fast: ModuleType, pure: ModuleType, array: np.ndarray, transpose: bool
) -> None:
    if transpose:
        array = array.T
    assert outcome(fast.array_to_json, array) == outcome(pure.array_to_json, array)

"""The processing kernels: known answers on both implementations, and Hypothesis tests that the Cython build
agrees with its numpy twin.

Stated tolerances (both image kernels interpolate in float32, in a different order):
    resize_normalize  FP32/FP64 out: rtol 1e-5, atol 1e-4;  UINT8 out: at most 1 apart (rounding at .5)
                      (3000 random cases used at most 7% of this allowance)
    scale_columns     rtol 1e-6, atol 1e-9 (both compute in float64, then cast)
    encode_categories exact
    softmax           rtol 1e-5, atol 1e-7 for FP32 (1e-12 / 1e-15 for FP64)
    topk              exact: the same indices, values bit-for-bit
"""
from __future__ import annotations

import math
import os
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

Array = npt.NDArray[Any]
IMAGE_RTOL, IMAGE_ATOL = 1e-5, 1e-4


def interpolation_matrix(src_len: int, resized: int, offset: int, count: int) -> Array:
    """[count, src_len] weights of a half-pixel-centre bilinear resize: an independent reference."""
    matrix = np.zeros((count, src_len))
    for k in range(count):
        pos = max((offset + k + 0.5) * src_len / resized - 0.5, 0.0)
        low = min(math.floor(pos), src_len - 1)
        high = min(low + 1, src_len - 1)
        frac = pos - low if low < src_len - 1 else 0.0
        matrix[k, low] += 1 - frac
        matrix[k, high] += frac
    return matrix


def reference_resize(src: Array, resize_h: int, resize_w: int, top: int, left: int, oh: int, ow: int) -> Array:
    """[n, h, w, c] uint8 -> [n, oh, ow, c] float64 by matrix products."""
    rows = interpolation_matrix(src.shape[1], resize_h, top, oh)
    cols = interpolation_matrix(src.shape[2], resize_w, left, ow)
    resized: Array = np.einsum("yh,nhwc,xw->nyxc", rows, src.astype(np.float64), cols)
    return resized


def run_resize(
    kernels: ModuleType,
    src: Array,
    out_shape: tuple[int, ...],
    dtype: Any,
    resize: tuple[int, int],
    crop: tuple[int, int],
    channel_map: list[int],
    mul: list[float],
    add: list[float],
    chw: bool,
) -> Array:
    out = np.full(out_shape, 7, dtype=dtype)
    kernels.resize_normalize(
        src, out, resize[0], resize[1], crop[0], crop[1],
        np.array(channel_map, dtype=np.int64), np.array(mul, dtype=np.float64), np.array(add, dtype=np.float64), chw,
    )
    return out


# ---- resize_normalize: known answers --------------------------------------------------------------------


def test_same_size_resize_is_the_identity(kernels: ModuleType) -> None:
    src = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    out = run_resize(kernels, src, (2, 5, 7, 3), np.float32, (5, 7), (0, 0), [0, 1, 2], [1, 1, 1], [0, 0, 0], False)
    np.testing.assert_array_equal(out, src.astype(np.float32))


def test_upscale_matches_the_matrix_reference(kernels: ModuleType) -> None:
    src = np.array([[[[0], [100]], [[200], [50]]]], dtype=np.uint8)  # 1 image, 2x2, 1 channel
    out = run_resize(kernels, src, (1, 4, 4, 1), np.float64, (4, 4), (0, 0), [0], [1], [0], False)
    expected = reference_resize(src, 4, 4, 0, 0, 4, 4)
    np.testing.assert_allclose(out, expected, rtol=IMAGE_RTOL, atol=IMAGE_ATOL)
    # corners stay, the centre is the mean of the four pixels
    assert out[0, 0, 0, 0] == 0 and out[0, 3, 3, 0] == 50
    assert out[0, 1, 1, 0] == pytest.approx(0.75 * 0.75 * 0 + 0.75 * 0.25 * 100 + 0.25 * 0.75 * 200 + 0.25 * 0.25 * 50)


def test_crop_is_the_window_of_the_full_resize(kernels: ModuleType) -> None:
    src = np.random.default_rng(1).integers(0, 256, (1, 30, 40, 3), dtype=np.uint8)
    full = run_resize(kernels, src, (1, 24, 36, 3), np.float32, (24, 36), (0, 0), [0, 1, 2], [1] * 3, [0] * 3, False)
    window = run_resize(kernels, src, (1, 16, 20, 3), np.float32, (24, 36), (4, 8), [0, 1, 2], [1] * 3, [0] * 3, False)
    np.testing.assert_allclose(window, full[:, 4:20, 8:28], rtol=1e-6, atol=1e-5)


def test_channel_order_scale_normalise_and_chw(kernels: ModuleType) -> None:
    src = np.random.default_rng(2).integers(0, 256, (3, 9, 11, 3), dtype=np.uint8)
    mean, std, scale = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]), 1 / 255
    out = run_resize(
        kernels, src, (3, 3, 6, 8), np.float32, (6, 8), (0, 0), [2, 1, 0], list(scale / std), list(-mean / std), True
    )
    resized = reference_resize(src, 6, 8, 0, 0, 6, 8)[..., ::-1]  # BGR
    expected = ((resized * scale - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, expected, rtol=IMAGE_RTOL, atol=IMAGE_ATOL)


def test_uint8_output_rounds_and_saturates(kernels: ModuleType) -> None:
    src = np.array([[[[10, 200, 250]]]], dtype=np.uint8)  # one pixel
    out = run_resize(kernels, src, (1, 1, 1, 3), np.uint8, (1, 1), (0, 0), [0, 1, 2], [1, 1, 1], [-20, 0.4, 10], False)
    assert out.tolist() == [[[[0, 200, 255]]]]


def test_single_channel_from_a_one_channel_source(kernels: ModuleType) -> None:
    src = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    out = run_resize(kernels, src, (1, 1, 2, 2), np.float32, (2, 2), (0, 0), [0], [2.0], [1.0], True)
    expected = reference_resize(src, 2, 2, 0, 0, 2, 2).transpose(0, 3, 1, 2) * 2 + 1
    np.testing.assert_allclose(out, expected, rtol=IMAGE_RTOL, atol=IMAGE_ATOL)


@pytest.mark.parametrize(
    ("resize", "crop", "out_shape", "channel_map"),
    [
        ((4, 4), (1, 0), (1, 4, 4, 3), [0, 1, 2]),  # crop window past the bottom
        ((4, 4), (0, 0), (1, 4, 4, 3), [0, 1, 3]),  # channel 3 of a 3-channel source
        ((0, 4), (0, 0), (1, 0, 4, 3), [0, 1, 2]),  # empty output: nothing to do, no error
    ],
)
def test_bad_geometry_raises_value_error(
    kernels: ModuleType, resize: tuple[int, int], crop: tuple[int, int], out_shape: tuple[int, ...], channel_map: list[int]
) -> None:
    src = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    if out_shape[1] == 0:
        run_resize(kernels, src, out_shape, np.float32, resize, crop, channel_map, [1] * 3, [0] * 3, False)
        return
    with pytest.raises(ValueError):
        run_resize(kernels, src, out_shape, np.float32, resize, crop, channel_map, [1] * 3, [0] * 3, False)


# ---- scale_columns ----------------------------------------------------------------------------------------


def column_params(n: int, **overrides: list[float]) -> dict[str, Array]:
    params = {
        "missing_error": np.zeros(n, dtype=np.uint8),
        "fill": np.full(n, np.nan),
        "lo": np.full(n, -np.inf),
        "hi": np.full(n, np.inf),
        "mul": np.ones(n),
        "add": np.zeros(n),
    }
    for key, value in overrides.items():
        params[key] = np.array(value, dtype=params[key].dtype)
    return params


def run_columns(kernels: ModuleType, src: Array, out: Array, params: dict[str, Array]) -> int:
    return int(kernels.scale_columns(
        src, out, params["missing_error"], params["fill"], params["lo"], params["hi"], params["mul"], params["add"]
    ))


def test_columns_fill_clip_and_scale(kernels: ModuleType) -> None:
    src = np.array([[np.nan, 5.0, 300.0], [1.0, -7.0, np.nan]], dtype=np.float32)
    out = np.zeros((2, 3), dtype=np.float32)
    params = column_params(3, fill=[2.0, 0.0, np.nan], lo=[-np.inf, 0.0, 0.0], hi=[np.inf, 10.0, 255.0],
                           mul=[0.5, 1.0, 1 / 255], add=[-1.0, 0.0, 0.0])
    assert run_columns(kernels, src, out, params) == -1
    expected = np.array([[0.0, 5.0, 1.0], [-0.5, 0.0, np.nan]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_columns_report_the_first_nan_under_the_error_policy(kernels: ModuleType) -> None:
    src = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, np.nan], [np.nan, np.nan, 1.0]], dtype=np.float64)
    out = np.zeros((3, 3), dtype=np.float32)
    params = column_params(3, missing_error=[1, 0, 1])
    assert run_columns(kernels, src, out, params) == 1 * 3 + 2  # row 1, column 2; column 1 keeps NaN


def test_columns_write_into_a_block_of_a_wider_buffer(kernels: ModuleType) -> None:
    src = np.arange(6, dtype=np.float32).reshape(2, 3)
    buffer = np.full((2, 7), -1.0, dtype=np.float64)
    assert run_columns(kernels, src, buffer[:, 2:5], column_params(3, mul=[2, 2, 2])) == -1
    assert buffer.tolist() == [[-1, -1, 0, 2, 4, -1, -1], [-1, -1, 6, 8, 10, -1, -1]]


# ---- encode_categories --------------------------------------------------------------------------------------

LOOKUPS = [{b"de": 0, b"fr": 1, b"us": 2}, {b"free": 0, b"pro": 1}]


def categories(rows: list[list[object]]) -> Array:
    array = np.empty((len(rows), len(rows[0])), dtype=object)
    array[:] = rows
    return array


@pytest.mark.parametrize(
    ("unknown", "expected"),
    [
        (1, [[0, 0, 1, 0, 0, 1, 0], [0, 0, 0, 1, 1, 0, 0]]),  # oov: one extra slot per column
        (2, [[0, 0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 1, 0, 0]]),  # zeros: unknown leaves its block empty
    ],
)
def test_onehot_with_unknown_policies(kernels: ModuleType, unknown: int, expected: list[list[int]]) -> None:
    src = categories([[b"us", b"pro"], [b"xx", "free"]])  # str elements are UTF-8 encoded
    out = np.zeros((2, 7), dtype=np.float32)
    offsets = np.array([0, 4], dtype=np.int64)
    assert kernels.encode_categories(src, LOOKUPS, out, offsets, True, unknown) == -1
    assert out.tolist() == expected


def test_index_encoding_and_oov(kernels: ModuleType) -> None:
    src = categories([[b"fr", b"pro"], [b"??", b"free"]])
    out = np.full((2, 2), -5, dtype=np.int64)
    assert kernels.encode_categories(src, LOOKUPS, out, np.array([0, 1], dtype=np.int64), False, 1) == -1
    assert out.tolist() == [[1, 1], [3, 0]]


def test_error_policy_returns_the_first_unknown_in_row_order(kernels: ModuleType) -> None:
    src = categories([[b"de", b"free"], [b"de", b"gold"], [b"mars", b"gold"]])
    out = np.zeros((3, 5), dtype=np.float32)
    assert kernels.encode_categories(src, LOOKUPS, out, np.array([0, 3], dtype=np.int64), True, 0) == 1 * 2 + 1


# ---- softmax and topk ----------------------------------------------------------------------------------------


def test_softmax_matches_the_formula(kernels: ModuleType) -> None:
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]], dtype=np.float32)
    out = np.empty_like(x)
    kernels.softmax(x, out)
    e = np.exp(np.array([1.0, 2.0, 3.0]) - 3)
    np.testing.assert_allclose(out[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.5, 0.5, 0.0], atol=1e-7)  # no overflow


def test_topk_orders_ties_by_index_and_nan_last(kernels: ModuleType) -> None:
    x = np.array([[0.1, np.nan, 0.5, 0.5, -np.inf, 0.9], [np.nan, np.nan, 1.0, 2.0, 2.0, 0.0]], dtype=np.float32)
    values = np.empty((2, 6), dtype=np.float32)
    indices = np.empty((2, 6), dtype=np.int64)
    kernels.topk(x, 6, values, indices)
    assert indices.tolist() == [[5, 2, 3, 0, 4, 1], [3, 4, 2, 5, 0, 1]]
    top3v, top3i = np.empty((2, 3), dtype=np.float32), np.empty((2, 3), dtype=np.int64)
    kernels.topk(x, 3, top3v, top3i)
    assert top3i.tolist() == [[5, 2, 3], [3, 4, 2]]
    assert top3v.tolist() == [[pytest.approx(0.9), 0.5, 0.5], [2.0, 2.0, 1.0]]


def test_topk_rejects_k_above_the_class_count(kernels: ModuleType) -> None:
    with pytest.raises(ValueError):
        kernels.topk(np.zeros((1, 2), np.float32), 3, np.empty((1, 3), np.float32), np.empty((1, 3), np.int64))


# ---- Hypothesis: the Cython build agrees with its numpy twin ---------------------------------------------

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def image_cases(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    cin = draw(st.sampled_from([1, 3, 4]))
    src = draw(hnp.arrays(np.uint8, (n, h, w, cin)))
    oh, ow = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    resize_h, resize_w = oh + draw(st.integers(0, 12)), ow + draw(st.integers(0, 12))
    top, left = draw(st.integers(0, resize_h - oh)), draw(st.integers(0, resize_w - ow))
    channels = draw(st.sampled_from([1, 3]))
    channel_map = draw(st.lists(st.integers(0, cin - 1), min_size=channels, max_size=channels))
    scale = draw(st.floats(1 / 255, 1.0))
    std = draw(st.lists(st.floats(0.1, 2.0), min_size=channels, max_size=channels))
    mean = draw(st.lists(st.floats(-1.0, 1.0), min_size=channels, max_size=channels))
    return {
        "src": src,
        "resize": (resize_h, resize_w),
        "crop": (top, left),
        "oh": oh,
        "ow": ow,
        "channel_map": channel_map,
        "mul": [scale / s for s in std],
        "add": [-m / s for m, s in zip(mean, std)],
        "chw": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float32, np.float64, np.uint8])),
    }


@PROPERTY
@given(case=image_cases())
def test_resize_normalize_twins_agree(fast: ModuleType, pure: ModuleType, case: dict[str, Any]) -> None:
    n, channels = case["src"].shape[0], len(case["channel_map"])
    shape = (n, channels, case["oh"], case["ow"]) if case["chw"] else (n, case["oh"], case["ow"], channels)
    args = (case["src"], shape, case["dtype"], case["resize"], case["crop"], case["channel_map"], case["mul"], case["add"], case["chw"])
    got, want = run_resize(fast, *args), run_resize(pure, *args)
    if case["dtype"] is np.uint8:
        assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1
    else:
        np.testing.assert_allclose(got, want, rtol=IMAGE_RTOL, atol=IMAGE_ATOL)


@st.composite
def column_cases(draw: st.DrawFn) -> dict[str, Any]:
    rows, cols = draw(st.integers(0, 8)), draw(st.integers(1, 12))
    src_dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = st.floats(-1e6, 1e6, width=32) | st.just(math.nan) | st.sampled_from([math.inf, -math.inf])
    src = draw(hnp.arrays(src_dtype, (rows, cols), elements=values))
    fill = draw(st.lists(st.floats(-100, 100) | st.just(math.nan), min_size=cols, max_size=cols))
    lo = draw(st.lists(st.floats(-1e3, 0) | st.just(-math.inf), min_size=cols, max_size=cols))
    hi = draw(st.lists(st.floats(0, 1e3) | st.just(math.inf), min_size=cols, max_size=cols))
    mul = draw(st.lists(st.floats(-10, 10), min_size=cols, max_size=cols))
    add = draw(st.lists(st.floats(-10, 10), min_size=cols, max_size=cols))
    errors = draw(st.lists(st.booleans(), min_size=cols, max_size=cols))
    return {
        "src": src,
        "out_dtype": draw(st.sampled_from([np.float32, np.float64])),
        "params": column_params(cols, missing_error=[int(e) for e in errors], fill=fill, lo=lo, hi=hi, mul=mul, add=add),
    }


@PROPERTY
@given(case=column_cases())
def test_scale_columns_twins_agree(fast: ModuleType, pure: ModuleType, case: dict[str, Any]) -> None:
    src = case["src"]
    got = np.zeros(src.shape, dtype=case["out_dtype"])
    want = np.zeros(src.shape, dtype=case["out_dtype"])
    bad_fast = run_columns(fast, src, got, case["params"])
    bad_pure = run_columns(pure, src, want, case["params"])
    assert bad_fast == bad_pure
    if bad_fast < 0:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


WORDS = ["a", "b", "c", "de", "fr", "us", "é", "東京", ""]


@st.composite
def category_cases(draw: st.DrawFn) -> dict[str, Any]:
    rows, cols = draw(st.integers(0, 8)), draw(st.integers(1, 5))
    vocabularies = [draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6, unique=True)) for _ in range(cols)]
    src = np.empty((rows, cols), dtype=object)
    for r in range(rows):
        for c in range(cols):
            word = draw(st.sampled_from(WORDS + ["unknown-1", "zz"]))
            src[r, c] = word if draw(st.booleans()) else word.encode("utf-8")
    onehot = draw(st.booleans())
    unknown = draw(st.sampled_from([0, 1, 2] if onehot else [0, 1]))
    extra = 1 if unknown == 1 else 0
    offsets, position = [], 0
    for vocabulary in vocabularies:
        offsets.append(position)
        position += len(vocabulary) + extra if onehot else 1
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
    return {
        "src": src,
        "lookups": [{w.encode("utf-8"): i for i, w in enumerate(v)} for v in vocabularies],
        "width": position,
        "offsets": np.array(offsets, dtype=np.int64),
        "onehot": onehot,
        "unknown": unknown,
        "dtype": dtype,
    }


@PROPERTY
@given(case=category_cases())
def test_encode_categories_twins_agree(fast: ModuleType, pure: ModuleType, case: dict[str, Any]) -> None:
    shape = (case["src"].shape[0], case["width"])
    got, want = np.zeros(shape, dtype=case["dtype"]), np.zeros(shape, dtype=case["dtype"])
    args = (case["lookups"], case["offsets"], case["onehot"], case["unknown"])
    bad_fast = fast.encode_categories(case["src"], args[0], got, *args[1:])
    bad_pure = pure.encode_categories(case["src"], args[0], want, *args[1:])
    assert bad_fast == bad_pure
    if bad_fast < 0:
        np.testing.assert_array_equal(got, want)


@PROPERTY
@given(
    x=hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        st.tuples(st.integers(1, 6), st.integers(1, 40)),
        elements=st.floats(-80, 80, width=32),
    )
)
def test_softmax_twins_agree(fast: ModuleType, pure: ModuleType, x: Array) -> None:
    got, want = np.empty_like(x), np.empty_like(x)
    fast.softmax(x, got)
    pure.softmax(x, want)
    rtol, atol = (1e-5, 1e-7) if x.dtype == np.float32 else (1e-12, 1e-15)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@PROPERTY
@given(
    x=hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        st.tuples(st.integers(0, 6), st.integers(1, 40)),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, 1.0, -0.0]),
    ),
    data=st.data(),
)
def test_topk_twins_agree(fast: ModuleType, pure: ModuleType, x: Array, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, x.shape[1]))
    got = (np.empty((x.shape[0], k), x.dtype), np.empty((x.shape[0], k), np.int64))
    want = (np.empty((x.shape[0], k), x.dtype), np.empty((x.shape[0], k), np.int64))
    fast.topk(x, k, *got)
    pure.topk(x, k, *want)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_twins_pick_cython_unless_told_not_to() -> None:
    from runtime.processing import kernels

    expected = "python" if os.environ.get("RUNTIME_NO_EXTENSIONS") == "1" else "cython"
    try:
        from runtime.processing import _processing  # noqa: F401
    except ImportError:
        expected = "python"
    assert kernels.IMPLEMENTATION == expected
    from runtime.processing import _py

    assert kernels.softmax is _py.softmax  # the twin wins on wide rows (bench/bench_processing.py)
    assert (kernels.resize_normalize is _py.resize_normalize) == (expected == "python")

"""The numpy twins of the processing kernels (csrc/processing.pyx): the reference implementation.

Same signatures and results as the Cython build within float tolerance: both resize images in float32
(the Cython kernel horizontally first, this one vertically first), both scale tabular columns in float64,
softmax is float64 per element in Cython (see tests/processing/test_kernels.py for the stated tolerances). Kernels write into a preallocated `out` and return the flat
index of the first bad element (or -1) instead of raising, so the caller words the error.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from runtime.types import Array

__all__ = ["encode_categories", "resize_normalize", "scale_columns", "softmax", "topk"]

# Unknown-category policies (csrc/processing.pyx has the same numbers).
UNKNOWN_ERROR = 0
UNKNOWN_OOV = 1
UNKNOWN_ZEROS = 2


def _taps(src_len: int, resized: int, offset: int, count: int) -> tuple[Array, Array, Array]:
    """Bilinear taps with half-pixel centres, no antialiasing (as the Cython kernel's _taps)."""
    pos = (np.arange(offset, offset + count, dtype=np.float64) + 0.5) * (src_len / resized) - 0.5
    np.maximum(pos, 0.0, out=pos)
    low = np.floor(pos).astype(np.intp)
    edge = low >= src_len - 1
    low[edge] = src_len - 1
    high = np.where(edge, low, low + 1)
    frac = np.where(edge, 0.0, pos - low).astype(np.float32)
    return low, high, frac


def resize_normalize(
    src: npt.NDArray[np.uint8],
    out: Array,
    resize_h: int,
    resize_w: int,
    top: int,
    left: int,
    channel_map: npt.NDArray[np.int64],
    mul: npt.NDArray[np.float64],
    add: npt.NDArray[np.float64],
    chw: bool,
) -> None:
    """Bilinear resize, centre/offset crop, channel pick, v*mul+add, HWC->CHW, cast; see the Cython twin."""
    n, h, w, cin = src.shape
    if chw:
        channels, oh, ow = out.shape[1:]
    else:
        oh, ow, channels = out.shape[1:]
    if out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} images, src {n}")
    if len(channel_map) != channels or len(mul) != channels or len(add) != channels:
        raise ValueError("channel_map, mul and add need one entry per output channel")
    if n == 0 or oh == 0 or ow == 0 or channels == 0:
        return
    if h == 0 or w == 0 or resize_h < 1 or resize_w < 1:
        raise ValueError("empty source image or resize size")
    if top < 0 or left < 0 or top + oh > resize_h or left + ow > resize_w:
        raise ValueError("crop window outside the resized image")
    if np.any((channel_map < 0) | (channel_map >= cin)):
        raise ValueError(f"channel_map {list(channel_map)} outside the source's {cin} channels")
    y0, y1, fy = _taps(h, resize_h, top, oh)
    x0, x1, fx = _taps(w, resize_w, left, ow)
    if cin != channels or np.any(channel_map != np.arange(cin)):
        src = src[:, :, :, channel_map]
    # separable: blend the two source rows of each output row, then the two columns of each output pixel
    values = np.take(src, y0, axis=1).astype(np.float32)
    lower = np.take(src, y1, axis=1).astype(np.float32)
    lower -= values
    lower *= fy[None, :, None, None]
    values += lower
    right = np.take(values, x1, axis=2)
    values = np.take(values, x0, axis=2)
    right -= values
    right *= fx[None, None, :, None]
    values += right
    values *= mul.astype(np.float32)
    values += add.astype(np.float32)
    if out.dtype == np.uint8:
        np.rint(values, out=values)
        np.clip(values, 0.0, 255.0, out=values)
    out[...] = values.transpose(0, 3, 1, 2) if chw else values


def scale_columns(
    src: Array,
    out: Array,
    missing_error: npt.NDArray[np.uint8],
    fill: npt.NDArray[np.float64],
    lo: npt.NDArray[np.float64],
    hi: npt.NDArray[np.float64],
    mul: npt.NDArray[np.float64],
    add: npt.NDArray[np.float64],
) -> int:
    """Per column: NaN -> error or fill, clip to [lo, hi], v*mul+add, cast into out; first bad flat index or -1."""
    cols = src.shape[1]
    if out.shape != src.shape:
        raise ValueError("out must have src's shape")
    if not all(len(p) == cols for p in (missing_error, fill, lo, hi, mul, add)):
        raise ValueError("every per-column parameter needs one entry per column")
    values = src.astype(np.float64)
    missing = np.isnan(values)
    if missing.any():
        bad = missing & missing_error.astype(bool)[None, :]
        if bad.any():
            return int(np.flatnonzero(bad)[0])
        values = np.where(missing, fill[None, :], values)
    # maximum/minimum keep NaN (a NaN fill stays NaN), as the Cython comparisons do
    np.maximum(values, lo, out=values)
    np.minimum(values, hi, out=values)
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 is NaN, as in C
        values *= mul
        values += add
        out[...] = values
    return -1


def encode_categories(
    src: Array,
    lookups: list[dict[bytes, int]],
    out: Array,
    offsets: npt.NDArray[np.int64],
    onehot: bool,
    unknown: int,
) -> int:
    """Strings -> codes through per-column dicts; index or one-hot into out; first unknown flat index or -1."""
    rows, cols = src.shape
    if len(lookups) != cols or len(offsets) != cols or out.shape[0] != rows:
        raise ValueError("lookups and offsets need one entry per column; out one row per row")
    width = out.shape[1]
    if np.any((offsets < 0) | (offsets >= width)) and rows:
        raise ValueError(f"offsets {list(offsets)} outside out's {width} columns")
    codes = np.empty((rows, cols), dtype=np.int64)
    for j in range(cols):
        lookup = lookups[j]
        codes[:, j] = [lookup.get(item if isinstance(item, bytes) else item.encode("utf-8"), -1) for item in src[:, j]]
    unknown_mask = codes < 0
    if unknown_mask.any():
        if unknown == UNKNOWN_ERROR:
            return int(np.flatnonzero(unknown_mask)[0])  # row-major, as the Cython loop meets them
        if unknown == UNKNOWN_OOV:
            sizes = np.array([len(lookup) for lookup in lookups], dtype=np.int64)
            codes = np.where(unknown_mask, sizes[None, :], codes)
            unknown_mask[...] = False
    if onehot:
        row_index, col_index = np.nonzero(~unknown_mask)
        targets = offsets[col_index] + codes[row_index, col_index]
        if targets.size and targets.max() >= width:
            raise ValueError(f"a code is outside out's {width} columns")
        out[row_index, targets] = 1
    elif unknown_mask.any():
        row_index, col_index = np.nonzero(~unknown_mask)
        out[row_index, offsets[col_index]] = codes[row_index, col_index]
    else:
        out[:, offsets] = codes
    return -1


def softmax(x: Array, out: Array) -> None:
    """Row-wise softmax over the last axis."""
    if out.shape != x.shape:
        raise ValueError("out must have x's shape")
    if x.shape[1] == 0:
        return
    shifted = x - x.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    out[...] = shifted


def topk(x: Array, k: int, values: Array, indices: npt.NDArray[np.int64]) -> None:
    """Per row the k largest, largest first; ties keep the lower index first; NaN ranks last."""
    rows, cols = x.shape
    if k < 0 or k > cols:
        raise ValueError(f"k = {k} outside 0..{cols}")
    if values.shape != (rows, k) or indices.shape != (rows, k):
        raise ValueError("values and indices must be [rows, k]")
    if k == 0:
        return
    # a stable sort of -x puts larger values first, equal values in index order and NaN (-NaN is NaN) last
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    indices[...] = order
    values[...] = np.take_along_axis(x, order, axis=1)


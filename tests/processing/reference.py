"""The processing steps done by hand in numpy, independently of runtime.processing: what tests compare the
served outputs against (also used by tests/server/test_processing_e2e.py).

The resize is written as matrix products (one interpolation matrix per axis), not with the kernels' taps.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

Array = npt.NDArray[Any]


def encode(pixels: Array, image_format: str = "PNG", **options: Any) -> bytes:
    """HWC uint8 (or HW) pixels -> encoded image bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format, **options)
    return buffer.getvalue()


def picture(height: int, width: int, seed: int, channels: int = 3) -> Array:
    """A smooth, non-trivial picture (gradients plus a blob) that survives JPEG recognisably."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = []
    for _ in range(channels):
        a, b, c = rng.uniform(-1, 1, 3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (0.2 * max(height, width)) ** 2))
        plane = 128 + 60 * (a * y / height + b * x / width) + 80 * c * blob
        planes.append(plane)
    pixels: Array = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    return pixels if channels > 1 else pixels[:, :, 0]


def decode(data: bytes, mode: str = "RGB") -> Array:
    with Image.open(io.BytesIO(data)) as image:
        pixels: Array = np.asarray(image.convert(mode) if image.mode != mode else image, dtype=np.uint8)
    return pixels


def interpolation_matrix(src_len: int, resized: int, offset: int, count: int) -> Array:
    """[count, src_len]: bilinear weights, half-pixel centres, clamped at the edges, no antialiasing."""
    matrix = np.zeros((count, src_len))
    for k in range(count):
        pos = max((offset + k + 0.5) * src_len / resized - 0.5, 0.0)
        low = min(math.floor(pos), src_len - 1)
        high = min(low + 1, src_len - 1)
        frac = pos - low if low < src_len - 1 else 0.0
        matrix[k, low] += 1 - frac
        matrix[k, high] += frac
    return matrix


def resize_crop(pixels: Array, resized: tuple[int, int], crop: tuple[int, int]) -> Array:
    """HWC (or HW) uint8 -> [crop_h, crop_w, C] float64: resize to `resized`, then centre-crop."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    top, left = (resized[0] - crop[0]) // 2, (resized[1] - crop[1]) // 2
    rows = interpolation_matrix(pixels.shape[0], resized[0], top, crop[0])
    cols = interpolation_matrix(pixels.shape[1], resized[1], left, crop[1])
    out: Array = np.einsum("yh,hwc,xw->yxc", rows, pixels.astype(np.float64), cols)
    return out


def shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    if height <= width:
        return shorter, max(shorter, int(width * shorter / height))
    return max(shorter, int(height * shorter / width)), shorter


def normalise(
    image: Array, scale: float, mean: Sequence[float], std: Sequence[float], bgr: bool = False, chw: bool = True
) -> Array:
    """[H, W, C] float64 -> scaled, normalised, channel-ordered, laid out CHW (or HWC), float64."""
    if bgr:
        image = image[:, :, ::-1]
    out: Array = (image * scale - np.asarray(mean)) / np.asarray(std)
    return out.transpose(2, 0, 1) if chw else out


def softmax(x: Array) -> Array:
    shifted = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    probabilities: Array = shifted / shifted.sum(axis=-1, keepdims=True)
    return probabilities


def topk(x: Array, k: int) -> tuple[Array, Array]:
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, order, axis=-1), order


def numeric_column(
    values: Array, *, fill: float | None = None, clip: tuple[float | None, float | None] = (None, None),
    standardize: tuple[float, float] | None = None, minmax: tuple[float, float] | None = None,
) -> Array:
    out = values.astype(np.float64).copy()
    if fill is not None:
        out[np.isnan(out)] = fill
    if clip[0] is not None:
        out = np.maximum(out, clip[0])
    if clip[1] is not None:
        out = np.minimum(out, clip[1])
    if standardize is not None:
        out = (out - standardize[0]) / standardize[1]
    if minmax is not None:
        out = (out - minmax[0]) / (minmax[1] - minmax[0])
    return out


def onehot(values: Sequence[bytes | str], vocabulary: Sequence[str], oov: bool = False) -> Array:
    width = len(vocabulary) + (1 if oov else 0)
    out = np.zeros((len(values), width))
    for row, value in enumerate(values):
        text = value.decode() if isinstance(value, bytes) else value
        if text in vocabulary:
            out[row, vocabulary.index(text)] = 1
        elif oov:
            out[row, len(vocabulary)] = 1
    return out

"""Types of runtime.processing._processing, compiled from csrc/processing.pyx; the twin of runtime/processing/_py.py."""

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["encode_categories", "resize_normalize", "scale_columns", "softmax", "topk"]

def resize_normalize(
    src: npt.NDArray[np.uint8],
    out: npt.NDArray[Any],
    resize_h: int,
    resize_w: int,
    top: int,
    left: int,
    channel_map: npt.NDArray[np.int64],
    mul: npt.NDArray[np.float64],
    add: npt.NDArray[np.float64],
    chw: bool,
) -> None: ...
def scale_columns(
    src: npt.NDArray[Any],
    out: npt.NDArray[Any],
    missing_error: npt.NDArray[np.uint8],
    fill: npt.NDArray[np.float64],
    lo: npt.NDArray[np.float64],
    hi: npt.NDArray[np.float64],
    mul: npt.NDArray[np.float64],
    add: npt.NDArray[np.float64],
) -> int: ...
def encode_categories(
    src: npt.NDArray[Any],
    lookups: list[dict[bytes, int]],
    out: npt.NDArray[Any],
    offsets: npt.NDArray[np.int64],
    onehot: bool,
    unknown: int,
) -> int: ...
def softmax(x: npt.NDArray[Any], out: npt.NDArray[Any]) -> None: ...
def topk(x: npt.NDArray[Any], k: int, values: npt.NDArray[Any], indices: npt.NDArray[np.int64]) -> None: ...

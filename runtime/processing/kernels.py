"""Processing kernels: the Cython build (runtime.processing._processing, from csrc/processing.pyx) or the numpy twin (_py).

The choice is per kernel. A Cython kernel is used only where it is >= 3x faster than its numpy twin on
realistic sizes (bench/bench_processing.py; numbers in bench/RESULTS.md):

    resize_normalize   Cython: ~11-15x at 224x224 (batches 1..64), ~5-13x at the example's 32x32. Bilinear
                       resize + centre crop + channel order + scale/mean/std + HWC->CHW + cast in one pass
                       (rows resized horizontally once and reused); the twin makes ~10 full-size temporaries.
    scale_columns      Cython: ~5-15x on 100-column rows, batches 1..64 (one pass per value: NaN policy,
                       clip, affine, cast); the twin pays numpy's fixed cost per call.
    encode_categories  Cython: ~14-30x (dict lookups in C; the twin builds Python lists per column).
    topk               Cython: ~5-14x (a k-slot insertion per row instead of a full stable argsort).
    softmax            numpy twin: its SIMD exp wins on wide rows (Cython ~0.3x at 64x1000) and the Cython
                       gain on 10 classes (~4-6x) is a few microseconds per request, so the Cython version
                       is built and tested but not used.

RUNTIME_NO_EXTENSIONS=1, or an extension that is not built, gives the numpy twins everywhere.
"""
from __future__ import annotations

from runtime._extensions import compiled
from runtime.processing import _py

__all__ = ["IMPLEMENTATION", "encode_categories", "resize_normalize", "scale_columns", "softmax", "topk"]

_fast = compiled("runtime.processing._processing")
#: "cython" when the compiled kernels are in use, else "python".
IMPLEMENTATION: str = "cython" if _fast else "python"
resize_normalize = (_fast or _py).resize_normalize
scale_columns = (_fast or _py).scale_columns
encode_categories = (_fast or _py).encode_categories
topk = (_fast or _py).topk
softmax = _py.softmax

"""Time each processing kernel, Cython (runtime.processing._processing) vs. its numpy twin (runtime.processing._py).

    python bench/bench_processing.py             # plain table
    python bench/bench_processing.py --markdown  # a table to paste into bench/RESULTS.md
    python bench/bench_processing.py --quick     # fewer repeats (a smoke run, ~10 s)

Realistic sizes: ImageNet-style pre-processing (a 320x240 source resized so its shorter side is 256, centre-
cropped to 224x224, normalised, CHW FP32) for batches of 1, 8 and 64 images, and the example classifier's
48x64 -> 32x32; 100-column numeric rows and 20 categorical columns (vocabularies of 30, one-hot) for batches
of 1, 8 and 64; softmax and top-k over 10 and 1000 classes. Each time is the best of several repeats
(timeit), in microseconds per call. A Cython kernel is kept only where it is >= 3x faster than its twin;
runtime/processing/kernels.py records the choice.
"""
from __future__ import annotations

import argparse
import platform
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.processing import _py

try:
    from runtime.processing import _processing
except ImportError:
    sys.exit("runtime.processing._processing is not built: run `python setup.py build_ext --inplace` first")

Case = tuple[str, str, Callable[[ModuleType], Callable[[], object]]]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def image_case(batch: int, source: tuple[int, int], resized: tuple[int, int], crop: int) -> Callable[[ModuleType], Callable[[], object]]:
    rng = np.random.default_rng(batch)
    src = rng.integers(0, 256, (batch, source[0], source[1], 3), dtype=np.uint8)
    out = np.empty((batch, 3, crop, crop), dtype=np.float32)
    top, left = (resized[0] - crop) // 2, (resized[1] - crop) // 2
    channel_map = np.array([0, 1, 2], dtype=np.int64)
    mul, add = (1 / 255) / STD, -MEAN / STD

    def make(kernels: ModuleType) -> Callable[[], object]:
        return lambda: kernels.resize_normalize(src, out, resized[0], resized[1], top, left, channel_map, mul, add, True)

    return make


def columns_case(batch: int, columns: int = 100) -> Callable[[ModuleType], Callable[[], object]]:
    rng = np.random.default_rng(batch)
    src = rng.normal(50, 20, (batch, columns)).astype(np.float32)
    src[rng.random((batch, columns)) < 0.05] = np.nan  # some missing values to fill
    out = np.empty((batch, columns + 7), dtype=np.float32)[:, 3 : 3 + columns]  # a block of a wider input
    missing_error = np.zeros(columns, dtype=np.uint8)
    fill = rng.normal(50, 5, columns)
    lo, hi = np.full(columns, 0.0), np.full(columns, 100.0)
    mul, add = 1 / rng.uniform(10, 30, columns), -rng.uniform(40, 60, columns) / 20

    def make(kernels: ModuleType) -> Callable[[], object]:
        return lambda: kernels.scale_columns(src, out, missing_error, fill, lo, hi, mul, add)

    return make


def categories_case(batch: int, columns: int = 20, vocabulary: int = 30) -> Callable[[ModuleType], Callable[[], object]]:
    rng = np.random.default_rng(batch)
    words = [[f"col{c}-value{v}".encode() for v in range(vocabulary)] for c in range(columns)]
    lookups = [{w: i for i, w in enumerate(column)} for column in words]
    src = np.empty((batch, columns), dtype=object)
    for c in range(columns):
        src[:, c] = [words[c][i] for i in rng.integers(0, vocabulary, batch)]
    width = columns * (vocabulary + 1)
    offsets = np.arange(columns, dtype=np.int64) * (vocabulary + 1)

    def make(kernels: ModuleType) -> Callable[[], object]:
        def run() -> object:
            out = np.zeros((batch, width), dtype=np.float32)  # one-hot needs a zeroed block, as served
            return kernels.encode_categories(src, lookups, out, offsets, True, 1)

        return run

    return make


def softmax_case(batch: int, classes: int) -> Callable[[ModuleType], Callable[[], object]]:
    x = np.random.default_rng(classes).standard_normal((batch, classes)).astype(np.float32)
    out = np.empty_like(x)
    return lambda kernels: lambda: kernels.softmax(x, out)


def topk_case(batch: int, classes: int, k: int) -> Callable[[ModuleType], Callable[[], object]]:
    x = np.random.default_rng(classes).standard_normal((batch, classes)).astype(np.float32)
    values, indices = np.empty((batch, k), np.float32), np.empty((batch, k), np.int64)
    return lambda kernels: lambda: kernels.topk(x, k, values, indices)


def cases() -> list[Case]:
    out: list[Case] = []
    for batch in (1, 8, 64):
        out.append(("resize_normalize", f"{batch} x 320x240 -> 256 -> crop 224, CHW FP32", image_case(batch, (240, 320), (256, 341), 224)))
    for batch in (1, 64):
        out.append(("resize_normalize", f"{batch} x 48x64 -> 36 -> crop 32 (example)", image_case(batch, (48, 64), (36, 48), 32)))
    for batch in (1, 8, 64):
        out.append(("scale_columns", f"{batch} x 100 columns (5% NaN)", columns_case(batch)))
    for batch in (1, 8, 64):
        out.append(("encode_categories", f"{batch} x 20 columns, one-hot of 30", categories_case(batch)))
    for batch, classes in ((1, 10), (64, 10), (64, 1000)):
        out.append(("softmax", f"{batch} x {classes} classes", softmax_case(batch, classes)))
    for batch, classes, k in ((1, 10, 3), (64, 10, 3), (1, 1000, 5), (64, 1000, 5)):
        out.append(("topk", f"{batch} x {classes} classes, k={k}", topk_case(batch, classes, k)))
    return out


def best_us(call: Callable[[], object], repeats: int, budget_s: float) -> float:
    call()  # warm up
    timer = timeit.Timer(call)
    number, elapsed = 1, 0.0
    while True:  # grow `number` until one repeat takes ~budget_s
        elapsed = timer.timeit(number)
        if elapsed >= budget_s or number >= 100_000:
            break
        number *= 2 if elapsed > budget_s / 10 else 10
    return min(timer.repeat(repeats, number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    args = parser.parse_args()
    repeats, budget = (3, 0.02) if args.quick else (5, 0.1)
    rows: list[tuple[str, str, float, float]] = []
    for kernel, size, make in cases():
        twin = best_us(make(_py), repeats, budget)
        fast = best_us(make(_processing), repeats, budget)
        rows.append((kernel, size, twin, fast))
        if not args.markdown:
            print(f"{kernel:18} {size:44} numpy {twin:10.1f} us  cython {fast:9.1f} us  {twin / fast:6.1f}x", flush=True)
    if args.markdown:
        print(f"Processing kernels, {platform.python_implementation()} {platform.python_version()}, numpy {np.__version__}, "
              f"{platform.machine()}; best of {repeats} repeats, us per call.\n")
        print("| kernel | size | numpy twin (us) | Cython (us) | speed-up |")
        print("|---|---|---:|---:|---:|")
        for kernel, size, twin, fast in rows:
            print(f"| `{kernel}` | {size} | {twin:.1f} | {fast:.1f} | {twin / fast:.1f}x |")


if __name__ == "__main__":
    main()

"""Gathering request tensors into one batch: the Cython kernel vs its numpy twin, into a reused
buffer, next to what a fresh np.concatenate costs (a new allocation every batch).

    python bench/bench_collate.py [--markdown] [--repeat 7]
"""
from __future__ import annotations

import argparse
import timeit
from typing import Any, Callable

import numpy as np

from runtime.batching import _py
from runtime._extensions import compiled

CASES = [
    ("32 x FP32 [1,16] (mlp rows)", 32, (1, 16)),
    ("32 x FP32 [1,512] (wide rows)", 32, (1, 512)),
    ("8 x FP32 [4,3,224,224] (image batches)", 8, (4, 3, 224, 224)),
    ("64 x FP32 [1,3,224,224] (38 MiB batch)", 64, (1, 3, 224, 224)),
]


def best_us(function: Callable[[], Any], repeat: int) -> float:
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    fast = compiled("runtime.batching._batching")
    if fast is None:
        raise SystemExit("runtime.batching._batching is not built (pip install -e . builds it)")
    rows = ["| requests | np.concatenate (us) | numpy twin, reused buffer (us) | Cython, reused buffer (us) | Cython vs twin | "
            "Cython into a fresh np.empty, as collate.stack does (us) | that vs np.concatenate |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    rng = np.random.default_rng(0)
    for label, count, shape in CASES:
        arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]
        out = np.empty((count * shape[0], *shape[1:]), np.float32)
        np.testing.assert_array_equal(fast.gather(arrays, out), np.concatenate(arrays))
        fresh = best_us(lambda: np.concatenate(arrays, axis=0), args.repeat)
        twin = best_us(lambda: _py.gather(arrays, out), args.repeat)
        cython = best_us(lambda: fast.gather(arrays, out), args.repeat)
        shipped = best_us(lambda: fast.gather(arrays, np.empty(out.shape, out.dtype)), args.repeat)
        rows.append(
            f"| {label} | {fresh:,.1f} | {twin:,.1f} | {cython:,.1f} | {twin / cython:.1f}x | {shipped:,.1f} | "
            f"{fresh / shipped:.1f}x |"
        )
    print("\n".join(rows) if args.markdown else "\n".join(row.replace("|", " ") for row in rows))


if __name__ == "__main__":
    main()

"""Time each codec function, Cython (runtime.codec._codec) vs. its numpy twin (runtime.codec._py).

    python bench/bench_codec.py             # plain table
    python bench/bench_codec.py --markdown  # a table to paste into bench/RESULTS.md

Inputs are the realistic request sizes: JSON FP32 data of 16, 1024 and 150528 (224*224*3) elements, flat
and nested, as a JSON parser hands them over; BYTES tensors of 1, 64 and 4096 elements of 5..100 bytes.
Each time is the best of several repeats (timeit), in microseconds per call. The project keeps a Cython
function only where it is >= 3x faster than the numpy twin; runtime/codec/__init__.py records the choice.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.codec import _py

try:
    from runtime.codec import _codec
except ImportError:
    sys.exit("runtime.codec._codec is not built: run `python setup.py build_ext --inplace` first")

try:
    import orjson

    def _roundtrip(data: Any) -> Any:
        return orjson.loads(orjson.dumps(data))

except ImportError:  # the objects a JSON parser makes, laid out in memory as it lays them out

    def _roundtrip(data: Any) -> Any:
        return json.loads(json.dumps(data))


Case = tuple[str, str, tuple[Any, ...]]  # function name, input label, arguments


_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "tensor",
    "model",
    "batch",
    "é",
    "東京",
    "ñandú",
]


def _floats(n: int, rng: random.Random) -> list[float]:
    return [rng.uniform(-1.0, 1.0) for _ in range(n)]


def _byte_elements(n: int, rng: random.Random) -> Any:
    """Text-like UTF-8 elements of 5..100 bytes (tokens, labels, captions), as an object array of bytes."""
    items = []
    for _ in range(n):
        size = rng.randint(5, 100)
        text = b""
        while len(text) < size:
            text += rng.choice(_WORDS).encode() + b" "
        items.append(text[:size].decode("utf-8", "ignore").encode())
    out = np.empty(n, dtype=object)
    out[:] = items
    return out


def _nest(flat: list[Any], dims: tuple[int, ...]) -> Any:
    return np.array(flat, dtype=object).reshape(dims).tolist()


def cases() -> list[Case]:
    rng = random.Random(1234)
    out: list[Case] = []
    fp32 = np.dtype(np.float32)
    for n, dims in ((16, (4, 4)), (1024, (32, 32)), (150528, (224, 672))):
        flat = _roundtrip(_floats(n, rng))
        out.append(("json_to_array", f"FP32 flat [{n}]", (flat, fp32, n)))
        nested = _roundtrip(_nest(flat, dims))
        out.append(("json_to_array", "FP32 nested [" + "][".join(map(str, dims)) + "]", (nested, fp32, n)))
    image = _roundtrip(_nest(_floats(150528, rng), (224, 224, 3)))
    out.append(("json_to_array", "FP32 nested [224][224][3]", (image, fp32, 150528)))
    ids = _roundtrip([rng.randrange(50000) for _ in range(1024)])
    out.append(("json_to_array", "INT64 flat [1024]", (ids, np.dtype(np.int64), 1024)))
    texts = _roundtrip([b.decode() for b in _byte_elements(64, rng)])
    out.append(("json_to_array", "BYTES flat [64]", (texts, np.dtype(object), 64)))

    for n in (1, 64, 4096):
        elements = _byte_elements(n, rng)
        out.append(("decode_bytes", f"BYTES [{n}]", (_py.encode_bytes(elements), n)))
        out.append(("encode_bytes", f"BYTES [{n}]", (elements,)))
    strings = np.array([b.decode() for b in _byte_elements(4096, rng)], dtype=object)
    out.append(("encode_bytes", "BYTES [4096] of str", (strings,)))

    for n in (16, 1024, 150528):
        out.append(("array_to_json", f"FP32 [{n}]", (np.array(_floats(n, rng), dtype=np.float32),)))
    for n in (1, 64, 4096):
        out.append(("array_to_json", f"BYTES [{n}]", (_byte_elements(n, rng),)))
    return out


def best_us(py_fn: Callable[[], object], cy_fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best time per call of each, in µs; repeats alternate between the two so load drifts hit both."""
    timers = [timeit.Timer(py_fn), timeit.Timer(cy_fn)]
    numbers = [max(1, timer.autorange()[0] // 4) for timer in timers]  # about 50 ms a repeat
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for k in (0, 1):
            best[k] = min(best[k], timers[k].timeit(numbers[k]) / numbers[k] * 1e6)
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--repeat", type=int, default=7, help="repeats per measurement; the best counts")
    parser.add_argument("--only", default="", help="run only functions whose name contains this")
    args = parser.parse_args()

    rows = []
    for function, case, call_args in cases():
        if args.only not in function:
            continue
        py_fn = functools.partial(getattr(_py, function), *call_args)
        cy_fn = functools.partial(getattr(_codec, function), *call_args)
        py_out, cy_out = py_fn(), cy_fn()
        assert type(py_out) is type(cy_out), (function, case)
        py_us, cy_us = best_us(py_fn, cy_fn, args.repeat)
        rows.append((function, case, py_us, cy_us, py_us / cy_us))
        if not args.markdown:
            print(
                f"{function:<14} {case:<28} {py_us:>11.1f} {cy_us:>11.1f} {py_us / cy_us:>7.1f}x", flush=True
            )

    if args.markdown:
        print(
            f"Python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}; "
            f"best of {args.repeat}, microseconds per call.\n"
        )
        print("| function | input | numpy twin (µs) | Cython (µs) | speed-up |")
        print("|---|---|---:|---:|---:|")
        for function, case, py_us, cy_us, ratio in rows:
            print(f"| `{function}` | {case} | {py_us:,.1f} | {cy_us:,.1f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()

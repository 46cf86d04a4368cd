"""V2 tensor codec: the Cython build (runtime.codec._codec, from csrc/codec.pyx) or the numpy reference (_py).

The choice is per function. The project keeps a Cython function only where it is >= 3x faster than its
numpy twin on realistic request sizes (bench/bench_codec.py; numbers in bench/RESULTS.md):

    decode_bytes   Cython: 5-6x for 1 element, 7-11x for 64..4096; the twin is a Python loop over prefixes.
    encode_bytes   Cython: 8-9x for 1 element, 13-17x for 64..4096 (bytes or str); one allocation + memcpy.
    json_to_array  Cython: 4-5x for 16 FP32, 14-16x for 1024, 11-22x for 150528 (flat or nested);
                   ~6x INT64. BYTES data gains only ~2x (a bytes object per element either way), but
                   the function is one, and numbers are what requests mostly carry.
    array_to_json  numpy twin: ndarray.tolist() already makes the Python scalars in C, so a typed loop
                   gains 1.1-1.4x on FP32 and 1.5-2.9x on BYTES. The Cython version stays in
                   csrc/codec.pyx (built, tested equal) so the benchmark can re-measure; it is not used.

RUNTIME_NO_EXTENSIONS=1, or an extension that is not built, gives the numpy twins everywhere.
All of them raise CodecError (a ValueError) naming the flat element index and the problem.
"""
from __future__ import annotations

from runtime._extensions import compiled
from runtime.codec import _py
from runtime.codec._errors import CodecError

__all__ = ["IMPLEMENTATION", "CodecError", "array_to_json", "decode_bytes", "encode_bytes", "json_to_array"]

_fast = compiled("runtime.codec._codec")
#: "cython" when the compiled functions are in use (those listed above), else "python"; the server logs it.
IMPLEMENTATION: str = "cython" if _fast else "python"
decode_bytes = (_fast or _py).decode_bytes
encode_bytes = (_fast or _py).encode_bytes
json_to_array = (_fast or _py).json_to_array
array_to_json = _py.array_to_json

"""V2 tensor codec: picks the Cython build (runtime.codec._codec) or the numpy reference (_py), per function.

RUNTIME_NO_EXTENSIONS=1, or an extension that is not built, gives the pure-Python twins everywhere.
"""
from __future__ import annotations

import os

from runtime.codec import _py
from runtime.codec._errors import CodecError

__all__ = ["IMPLEMENTATION", "CodecError", "array_to_json", "decode_bytes", "encode_bytes", "json_to_array"]

IMPLEMENTATION: str = "python"
decode_bytes = _py.decode_bytes
encode_bytes = _py.encode_bytes
json_to_array = _py.json_to_array
array_to_json = _py.array_to_json

if os.environ.get("RUNTIME_NO_EXTENSIONS") != "1":
    try:
        from runtime.codec import _codec
    except ImportError:
        pass
    else:
        IMPLEMENTATION = "cython"
        decode_bytes = _codec.decode_bytes
        encode_bytes = _codec.encode_bytes
        json_to_array = _codec.json_to_array
        array_to_json = _codec.array_to_json

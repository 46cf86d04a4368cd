"""Types of runtime.codec._codec, compiled from csrc/codec.pyx; the twin of runtime/codec/_py.py."""
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.codec._errors import CodecError as CodecError

__all__ = ["CodecError", "array_to_json", "decode_bytes", "encode_bytes", "json_to_array"]

def decode_bytes(buffer: bytes | bytearray | memoryview, count: int) -> npt.NDArray[Any]: ...
def encode_bytes(array: npt.NDArray[Any]) -> bytes: ...
def json_to_array(data: object, dtype: np.dtype[Any], count: int) -> npt.NDArray[Any]: ...
def array_to_json(array: npt.NDArray[Any]) -> list[Any]: ...

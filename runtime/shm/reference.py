"""A tensor's shared-memory parameters (Triton's shared-memory extensions) as a plain reference.

The one parser for both transports: HTTP gives JSON values, gRPC InferParameter values, and both
arrive here as Python values under the same three names.
"""
from __future__ import annotations

from typing import Mapping

from runtime.errors import InvalidInput, quoted
from runtime.types import SharedMemoryRef

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
PARAMETERS = (REGION, BYTE_SIZE, OFFSET)


def parse_reference(params: Mapping[str, object], tensor: str) -> SharedMemoryRef | None:
    """The reference a tensor's parameters make, or None when they name no shared memory.

    `tensor` names the tensor for messages, e.g. "input 'INPUT0'". Region and byte size come together
    (Triton refuses either alone); the offset defaults to 0.
    """
    if REGION not in params and BYTE_SIZE not in params and OFFSET not in params:
        return None
    region = params.get(REGION)
    byte_size = params.get(BYTE_SIZE)
    if region is None or byte_size is None:
        if region is not None:
            what = f"parameter {REGION!r} needs {BYTE_SIZE!r} as well"
        elif byte_size is not None:
            what = f"parameter {BYTE_SIZE!r} needs {REGION!r} as well"
        else:
            what = f"parameter {OFFSET!r} needs {REGION!r} and {BYTE_SIZE!r}"
        raise InvalidInput(f"{tensor}: {what} (a tensor in shared memory names its region and byte size)")
    if not isinstance(region, str) or not region:
        raise InvalidInput(f"{tensor}: parameter {REGION!r} must be a non-empty string, got {quoted(region)}")
    size = _non_negative(byte_size, BYTE_SIZE, tensor)
    offset = _non_negative(params.get(OFFSET, 0), OFFSET, tensor)
    return SharedMemoryRef(region, size, offset)


def _non_negative(value: object, key: str, tensor: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"{tensor}: parameter {key!r} must be a non-negative integer, got {quoted(value)}")
    return value


def shared_memory_parameters(memory: SharedMemoryRef) -> dict[str, str | int]:
    """The parameters an answer carries for an output written into shared memory (and no data)."""
    params: dict[str, str | int] = {REGION: memory.region, BYTE_SIZE: memory.byte_size}
    if memory.offset:
        params[OFFSET] = memory.offset
    return params

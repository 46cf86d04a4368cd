"""Tensors into and out of a Slab: numpy arrays are copied into blocks; a TensorRef says where they are.

A TensorRef is plain JSON-able data (name, V2 datatype, shape, offset, nbytes) that travels in a channel
message; after orjson it arrives as a list, which read_tensors takes as well. Fixed-size types are the raw
row-major bytes (little-endian, as numpy holds them here); BYTES is the V2 length-prefixed encoding
(uint32 LE length + bytes per element, runtime.codec), decoded into an object array on reading.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from runtime import codec
from runtime.ipc.slab import Slab
from runtime.types import DATATYPE_TO_NUMPY, Array, datatype_of, placeholder

__all__ = ["TensorRef", "read_tensors", "write_tensors"]

TensorRef = tuple[str, str, tuple[int, ...], int, int]  # (name, datatype, shape, offset, nbytes)


#: The offset of a placeholder ref: a datatype and shape with no data (an output the engine wrote into
#: the client's shared memory); read_tensors gives an array of that shape that holds no memory.
PLACEHOLDER = -1


def write_tensors(
    slab: Slab, arrays: Mapping[str, Array], placeholders: Collection[str] = ()
) -> tuple[list[TensorRef], list[int]] | None:
    """Copy every array into its own block of `slab`: (refs in the arrays' order, offsets to free later),
    or None when the slab has no room (what this call had allocated is freed again). The arrays named in
    `placeholders` travel as their datatype and shape only."""
    refs: list[TensorRef] = []
    offsets: list[int] = []
    try:
        for name, array in arrays.items():
            datatype = datatype_of(array)
            shape = tuple(int(dim) for dim in array.shape)
            if name in placeholders:
                refs.append((name, datatype, shape, PLACEHOLDER, 0))
                continue
            if datatype == "BYTES":
                encoded: bytes = codec.encode_bytes(array)
                nbytes = len(encoded)
                offset = slab.allocate(nbytes)
                if offset is None:
                    break
                offsets.append(offset)
                slab.view(offset, nbytes)[:] = encoded
            else:
                nbytes = array.nbytes
                offset = slab.allocate(nbytes)
                if offset is None:
                    break
                offsets.append(offset)
                if nbytes:
                    target = np.frombuffer(slab.view(offset, nbytes), dtype=array.dtype).reshape(shape)
                    np.copyto(target, array, casting="no")
            refs.append((name, datatype, shape, offset, nbytes))
        else:
            return refs, offsets
    except BaseException:
        for offset in offsets:
            slab.free(offset)
        raise
    for offset in offsets:
        slab.free(offset)
    return None


def _placeholder(name: str, datatype: str, dims: tuple[int, ...]) -> Array:
    try:
        return placeholder(DATATYPE_TO_NUMPY[datatype], dims)
    except KeyError:
        raise ValueError(f"tensor {name!r}: unknown datatype {datatype!r}") from None


def _count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def read_tensors(slab: Slab, refs: Sequence[TensorRef | Sequence[Any]], copy: bool) -> dict[str, Array]:
    """name -> array for each ref. Fixed-size types are views of the slab unless `copy` (then they own
    their data and outlive the block); BYTES are always decoded object arrays. A ref that does not fit its
    datatype and shape raises ValueError."""
    arrays: dict[str, Array] = {}
    for ref in refs:
        name, datatype, shape, offset, nbytes = ref
        dims = tuple(int(dim) for dim in shape)
        if offset == PLACEHOLDER:
            arrays[name] = _placeholder(name, datatype, dims)
            continue
        count = _count(dims)
        view = slab.view(int(offset), int(nbytes))
        if datatype == "BYTES":
            try:
                decoded: Array = codec.decode_bytes(view, count)
            except codec.CodecError as exc:
                raise ValueError(f"tensor {name!r}: BYTES block is malformed: {exc}") from None
            arrays[name] = decoded.reshape(dims)
            continue
        try:
            dtype = DATATYPE_TO_NUMPY[datatype]
        except KeyError:
            raise ValueError(f"tensor {name!r}: unknown datatype {datatype!r}") from None
        if count * dtype.itemsize != nbytes:
            raise ValueError(f"tensor {name!r}: {nbytes} bytes cannot hold {datatype} of shape {list(dims)}")
        array = np.frombuffer(view, dtype=dtype, count=count).reshape(dims)
        arrays[name] = array.copy() if copy else array
    return arrays

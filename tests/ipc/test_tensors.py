"""write_tensors / read_tensors round trip every V2 datatype through a Slab."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.ipc.slab import Slab
from runtime.ipc.tensors import read_tensors, write_tensors
from runtime.types import DATATYPE_TO_NUMPY, Array

FIXED = [name for name in DATATYPE_TO_NUMPY if name != "BYTES"]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def tensors(draw: st.DrawFn) -> tuple[str, Array]:
    datatype = draw(st.sampled_from(list(DATATYPE_TO_NUMPY)))
    shape = draw(shapes)
    if datatype == "BYTES":
        count = int(np.prod(shape, dtype=np.int64))
        items = draw(st.lists(st.binary(max_size=20), min_size=count, max_size=count))
        array = np.empty(count, dtype=object)
        array[:] = items
        return datatype, array.reshape(shape)
    return datatype, draw(hnp.arrays(DATATYPE_TO_NUMPY[datatype], shape))


def assert_same(got: Array, want: Array) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype.kind == "f":
        np.testing.assert_array_equal(got.view(f"u{want.dtype.itemsize}"), want.view(f"u{want.dtype.itemsize}"))  # NaN bits too
    else:
        assert got.tolist() == want.tolist()


@settings(max_examples=300, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=4), st.booleans())
def test_round_trip_every_datatype(drawn: list[tuple[str, Array]], copy: bool) -> None:
    arrays = {f"t{index}": array for index, (_, array) in enumerate(drawn)}
    with Slab.create(1 << 16, "test") as slab:
        written = write_tensors(slab, arrays)
        assert written is not None
        refs, offsets = written
        assert [ref[1] for ref in refs] == [datatype for datatype, _ in drawn]
        assert len(set(offsets)) == len(offsets) == len(arrays)
        back = read_tensors(slab, refs, copy=copy)
        assert list(back) == list(arrays)
        for name, array in arrays.items():
            assert_same(back[name], array)
        # the refs as they arrive through orjson (lists) read the same
        as_json = [[name, datatype, list(shape), offset, nbytes] for name, datatype, shape, offset, nbytes in refs]
        again = read_tensors(slab, as_json, copy=False)
        for name, array in arrays.items():
            assert_same(again[name], array)
        del back, again
        for offset in offsets:
            slab.free(offset)
        assert slab.free_blocks() == [(0, slab.size)]


@pytest.mark.parametrize("datatype", FIXED)
def test_views_share_the_slab_copies_do_not(datatype: str) -> None:
    array = np.arange(6).astype(DATATYPE_TO_NUMPY[datatype]).reshape(2, 3)
    with Slab.create(4096, "test") as slab:
        written = write_tensors(slab, {"x": array})
        assert written is not None
        refs, _ = written
        view = read_tensors(slab, refs, copy=False)["x"]
        copied = read_tensors(slab, refs, copy=True)["x"]
        assert view.ctypes.data % 64 == 0
        slab.view(refs[0][3], refs[0][4])[:] = bytes(refs[0][4])
        assert not view.any()
        assert_same(copied, array)
        del view


def test_non_contiguous_and_str_arrays() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    strings = np.array([["a", "bé"], ["", "xyz"]])
    with Slab.create(4096, "test") as slab:
        written = write_tensors(slab, {"t": base.T, "s": strings})
        assert written is not None
        back = read_tensors(slab, written[0], copy=True)
        np.testing.assert_array_equal(back["t"], base.T)
        assert back["s"].tolist() == [[b"a", "bé".encode()], [b"", b"xyz"]]


def test_full_slab_returns_none_and_keeps_nothing() -> None:
    with Slab.create(1024, "test") as slab:
        arrays: dict[str, Any] = {"a": np.zeros(100, np.float32), "b": np.zeros(200, np.float32)}
        assert write_tensors(slab, arrays) is None
        assert slab.free_blocks() == [(0, 1024)] and slab.allocated_blocks == 0
        assert write_tensors(slab, {"a": arrays["a"]}) is not None


def test_bad_refs_raise_value_error() -> None:
    with Slab.create(1024, "test") as slab:
        with pytest.raises(ValueError, match="cannot hold"):
            read_tensors(slab, [("x", "FP32", (3,), 0, 8)], copy=False)
        with pytest.raises(ValueError, match="unknown datatype"):
            read_tensors(slab, [("x", "BF16", (1,), 0, 2)], copy=False)
        with pytest.raises(ValueError, match="malformed"):
            read_tensors(slab, [("x", "BYTES", (1,), 0, 8)], copy=False)
        with pytest.raises(ValueError, match="outside"):
            read_tensors(slab, [("x", "UINT8", (2048,), 0, 2048)], copy=False)

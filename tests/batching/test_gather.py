"""The Cython gather kernel and its numpy twin give the same batch as np.concatenate, and refuse
the same mistakes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime._extensions import compiled
from runtime.batching import _py, collate

fast = compiled("runtime.batching._batching")
IMPLEMENTATIONS = [pytest.param(_py, id="numpy")] + (
    [pytest.param(fast, id="cython")] if fast is not None else []
)
DTYPES = [np.bool_, np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.integers(0, 4), min_size=1, max_size=8),
    trailing=st.lists(st.integers(0, 5), max_size=3),
    dtype=st.sampled_from(DTYPES),
    transposed=st.booleans(),
)
def test_gather_equals_concatenate(
    implementation: object, rows: list[int], trailing: list[int], dtype: type, transposed: bool
) -> None:
    rng = np.random.default_rng(sum(rows))
    arrays = []
    for count in rows:
        array = (rng.standard_normal((count, *trailing)) * 100).astype(dtype)
        if transposed and array.ndim >= 2:  # a non-contiguous view of the same values
            array = np.ascontiguousarray(array.swapaxes(0, -1)).swapaxes(0, -1)
        arrays.append(array)
    out = np.empty((sum(rows), *trailing), dtype)
    got = implementation.gather(arrays, out)  # type: ignore[attr-defined]
    assert got is out
    np.testing.assert_array_equal(got, np.concatenate(arrays, axis=0))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gather_refuses_mismatches(implementation: object) -> None:
    gather = implementation.gather  # type: ignore[attr-defined]
    two = [np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32)]
    with pytest.raises(ValueError, match="dtype"):
        gather([two[0], np.zeros((1, 3), np.float64)], np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="trailing dims"):
        gather([two[0], np.zeros((1, 4), np.float32)], np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="add up"):
        gather(two, np.empty((3, 3), np.float32))
    with pytest.raises(ValueError, match="add up"):
        gather(two, np.empty((1, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        gather(two, np.empty((3, 2), np.float32).T)


def test_stack_keeps_strings_and_single_requests() -> None:
    words = [{"W": np.array([["a"]], dtype=object)}, {"W": np.array([["b"]], dtype=object)}]
    assert collate.stack(words)["W"].tolist() == [["a"], ["b"]]
    single = {"X": np.ones((2, 2), np.float32)}
    assert collate.stack([single]) is single

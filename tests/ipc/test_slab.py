"""Slab: memfd segment + first-fit allocator over 64-byte-aligned blocks that coalesces on free."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.ipc.slab import ALIGNMENT, Slab


def check_invariants(slab: Slab) -> None:
    """Blocks are aligned, lie inside the slab, never overlap, and free + allocated == size; free blocks
    are coalesced (no two touch)."""
    blocks = sorted([(o, s, "used") for o, s in slab.allocated().items()] + [(o, s, "free") for o, s in slab.free_blocks()])
    position = 0
    previous = ""
    for offset, size, kind in blocks:
        assert offset % ALIGNMENT == 0 and size % ALIGNMENT == 0 and size > 0
        assert offset == position, "blocks overlap or leave a gap"
        assert not (kind == previous == "free"), "two free blocks touch: not coalesced"
        position = offset + size
        previous = kind
    assert position == slab.size


def test_allocate_aligned_until_full_then_none() -> None:
    with Slab.create(4096, "test") as slab:
        offsets = [slab.allocate(1) for _ in range(4096 // ALIGNMENT)]
        assert offsets == list(range(0, 4096, ALIGNMENT))
        assert slab.allocate(1) is None
        check_invariants(slab)
        for offset in offsets:
            assert offset is not None
            slab.free(offset)
        assert slab.free_blocks() == [(0, 4096)]
        assert slab.allocate(4096) == 0


def test_first_fit_reuses_the_lowest_hole_and_coalesces() -> None:
    with Slab.create(64 * 10, "test") as slab:
        a, b, c = slab.allocate(64), slab.allocate(128), slab.allocate(64)
        assert (a, b, c) == (0, 64, 192)
        assert b is not None and a is not None and c is not None
        slab.free(b)
        assert slab.allocate(100) == 64  # the hole left by b, first
        slab.free(64)
        slab.free(a)
        assert slab.free_blocks() == [(0, 192), (256, 384)]
        slab.free(c)
        assert slab.free_blocks() == [(0, 640)]


def test_zero_bytes_still_get_a_block_and_bad_frees_raise() -> None:
    with Slab.create(256, "test") as slab:
        offset = slab.allocate(0)
        assert offset == 0 and slab.allocated() == {0: 64}
        with pytest.raises(ValueError):
            slab.free(64)
        slab.free(offset)
        with pytest.raises(ValueError, match="not an allocated block"):
            slab.free(offset)
        with pytest.raises(ValueError):
            slab.allocate(-1)
        with pytest.raises(ValueError):
            slab.view(200, 100)


def test_size_is_rounded_and_must_be_positive() -> None:
    with Slab.create(100, "test") as slab:
        assert slab.size == 128
    with pytest.raises(ValueError):
        Slab.create(0, "test")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1500)), max_size=60))
def test_allocator_invariants_hold_for_any_sequence(steps: list[tuple[bool, int]]) -> None:
    with Slab.create(8192, "test") as slab:
        live: dict[int, int] = {}
        for allocate, value in steps:
            if allocate or not live:
                offset = slab.allocate(value)
                need = (max(value, 1) + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
                if offset is None:
                    assert max((s for _, s in slab.free_blocks()), default=0) < need, "None although a block fits"
                else:
                    assert offset not in live
                    live[offset] = value
                    slab.view(offset, value)[:] = bytes([offset // ALIGNMENT % 251]) * value
            else:
                offset = sorted(live)[value % len(live)]
                assert bytes(slab.view(offset, live[offset])) == bytes([offset // ALIGNMENT % 251]) * live[offset]
                slab.free(offset)
                del live[offset]
            check_invariants(slab)
        for offset in list(live):
            slab.free(offset)
        assert slab.free_blocks() == [(0, slab.size)] and slab.free_bytes == slab.size


def test_attach_maps_the_same_memory() -> None:
    with Slab.create(4096, "test") as slab:
        with Slab.attach(os.dup(slab.fd), slab.size) as peer:
            slab.view(64, 5)[:] = b"hello"
            assert bytes(peer.view(64, 5)) == b"hello"
        with pytest.raises(ValueError, match="segment has"):
            Slab.attach(os.dup(slab.fd), slab.size * 2)


def test_close_with_live_views_does_not_fail_and_views_stay_valid() -> None:
    slab = Slab.create(4096, "test")
    array = np.frombuffer(slab.view(0, 64), dtype=np.uint8)
    array[:] = 7
    fd = slab.fd
    slab.close()
    assert slab.closed
    assert int(array.sum()) == 7 * 64  # the mapping lives as long as the view
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError, match="closed"):
        slab.view(0, 1)
    slab.close()  # twice is fine


def test_segment_has_no_name_in_dev_shm() -> None:
    before = set(os.listdir("/dev/shm")) if Path("/dev/shm").is_dir() else set()
    with Slab.create(1 << 20, "model-runtime-test") as slab:
        after = set(os.listdir("/dev/shm")) if Path("/dev/shm").is_dir() else set()
        assert after == before
        assert os.readlink(f"/proc/self/fd/{slab.fd}").startswith("/memfd:model-runtime-test")
        assert not os.get_inheritable(slab.fd)

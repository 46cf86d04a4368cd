"""One shared-memory segment (memfd), mapped, with a first-fit allocator over 64-byte-aligned blocks.

The segment has no name in /dev/shm or anywhere else: os.memfd_create makes an anonymous file that
lives while a process holds its fd or a mapping of it, so nothing outlives the processes, not even a
SIGKILL of the whole group. The fd goes to the peer with socket.send_fds (Channel.send(fds=...)) and the
peer maps it with Slab.attach.

The allocator state (which blocks are free) lives only in the process that allocates from the slab: the
peer reads and writes the blocks it is told about (offset, nbytes) and never allocates. One slab has one
allocating side.
"""
from __future__ import annotations

import bisect
import mmap
import os

__all__ = ["ALIGNMENT", "Slab"]

#: Every block starts on a multiple of this (a cache line; numpy's and ONNX Runtime's alignment wishes).
ALIGNMENT = 64


def _round_up(nbytes: int) -> int:
    return (max(nbytes, 1) + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class Slab:
    """A mapped memfd segment. `allocate`/`free` hand out blocks; `view` gives a memoryview of one."""

    def __init__(self, fd: int, size: int, segment: mmap.mmap) -> None:
        self.fd = fd
        self.size = size
        self._mmap: mmap.mmap | None = segment
        self._buffer: memoryview | None = memoryview(segment)
        # Free blocks as two parallel sorted lists (offset order), coalesced: no two are adjacent.
        self._free_offsets: list[int] = [0]
        self._free_sizes: list[int] = [size]
        self._allocated: dict[int, int] = {}  # offset -> block size (rounded)

    @classmethod
    def create(cls, size: int, name: str) -> Slab:
        """A new segment of `size` bytes (rounded up to the alignment), zero-filled, close-on-exec."""
        if size <= 0:
            raise ValueError(f"a slab needs a positive size, got {size}")
        size = _round_up(size)
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            segment = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, size, segment)

    @classmethod
    def attach(cls, fd: int, size: int) -> Slab:
        """Map a segment received from the peer; the Slab owns `fd` from now on (close() closes it)."""
        actual = os.fstat(fd).st_size
        if size <= 0 or size > actual:
            raise ValueError(f"slab of {size} bytes asked for, but the segment has {actual}")
        segment = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return cls(fd, size, segment)

    # allocator ------------------------------------------------------------------------------------------
    def allocate(self, nbytes: int) -> int | None:
        """The offset of a free block of at least `nbytes` (64-byte aligned), or None when none is left."""
        if nbytes < 0:
            raise ValueError(f"cannot allocate {nbytes} bytes")
        need = _round_up(nbytes)
        sizes = self._free_sizes
        for index, size in enumerate(sizes):  # first fit, lowest offset first
            if size >= need:
                offset = self._free_offsets[index]
                if size == need:
                    del sizes[index]
                    del self._free_offsets[index]
                else:
                    self._free_offsets[index] = offset + need
                    sizes[index] = size - need
                self._allocated[offset] = need
                return offset
        return None

    def free(self, offset: int) -> None:
        """Give a block back; it merges with free neighbours. Unknown offsets (or a double free) raise."""
        try:
            size = self._allocated.pop(offset)
        except KeyError:
            raise ValueError(f"offset {offset} is not an allocated block of this slab") from None
        offsets, sizes = self._free_offsets, self._free_sizes
        index = bisect.bisect_left(offsets, offset)
        if index and offsets[index - 1] + sizes[index - 1] == offset:  # merge with the block before
            index -= 1
            sizes[index] += size
        else:
            offsets.insert(index, offset)
            sizes.insert(index, size)
        after = index + 1
        if after < len(offsets) and offsets[index] + sizes[index] == offsets[after]:  # and the one after
            sizes[index] += sizes[after]
            del offsets[after]
            del sizes[after]

    @property
    def free_bytes(self) -> int:
        return sum(self._free_sizes)

    @property
    def allocated_blocks(self) -> int:
        return len(self._allocated)

    def free_blocks(self) -> list[tuple[int, int]]:
        """(offset, size) of every free block in offset order, for tests and diagnostics."""
        return list(zip(self._free_offsets, self._free_sizes))

    def allocated(self) -> dict[int, int]:
        """offset -> block size of every allocated block, for tests and diagnostics."""
        return dict(self._allocated)

    # data -----------------------------------------------------------------------------------------------
    def view(self, offset: int, nbytes: int) -> memoryview:
        """A writable memoryview of bytes [offset, offset + nbytes) of the segment (no copy)."""
        buffer = self._buffer
        if buffer is None:
            raise ValueError("the slab is closed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ValueError(f"bytes {offset}..{offset + nbytes} lie outside the slab of {self.size}")
        return buffer[offset : offset + nbytes]

    @property
    def closed(self) -> bool:
        return self._buffer is None

    def close(self) -> None:
        """Unmap and close the fd. Views still alive elsewhere keep the mapping until they go; no error."""
        if self._buffer is None:
            return
        self._buffer.release()
        self._buffer = None
        segment, self._mmap = self._mmap, None
        if segment is not None:
            try:
                segment.close()
            except BufferError:
                pass  # an array still views it: the mapping is unmapped when the last view is collected
        os.close(self.fd)

    def __enter__(self) -> Slab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Slab fd={self.fd} size={self.size} free={self.free_bytes}>"

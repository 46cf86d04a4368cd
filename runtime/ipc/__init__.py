"""The hop between front-end processes and the engine process: shared-memory slabs for tensors, small
orjson descriptors over a unix-socket channel. Knows numpy and bytes, not models.

    slab.Slab              one memfd segment, mapped; first-fit allocator over 64-byte-aligned blocks
    tensors.write_tensors  arrays -> slab blocks + TensorRefs; read_tensors: TensorRefs -> numpy views
    channel.Channel        length-prefixed frames, bulk receive, buffered send, fds on frames
    channel.ChannelServer  accepts channels (engine side); channel.Caller: calls by id with futures
"""
from __future__ import annotations

from runtime.ipc.channel import Caller, Channel, ChannelClosed, ChannelServer, Message
from runtime.ipc.slab import Slab
from runtime.ipc.tensors import TensorRef, read_tensors, write_tensors

__all__ = [
    "Caller",
    "Channel",
    "ChannelClosed",
    "ChannelServer",
    "Message",
    "Slab",
    "TensorRef",
    "read_tensors",
    "write_tensors",
]

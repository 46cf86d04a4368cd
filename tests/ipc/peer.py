"""A child process for the channel tests: `python -m tests.ipc.peer ADDRESS` ("@name" for the abstract
address "\\0name", argv cannot hold a NUL) serves a ChannelServer
that answers the ops below, and prints "READY" once it listens.

    echo      -> the message's fields back (with its id)
    fail      -> an error reply {"code": fields["code"], "message": fields["message"]}
    slab      -> attaches the two slab fds that came with the frame (request, response; "size" each),
                 answers "ok"
    tensors   -> reads the refs from the request slab, writes the arrays into the response slab (this
                 process allocates there), answers the new refs and offsets (None when it is full)
    free      -> frees offsets in the response slab
    burst     -> sends `count` notices with no id in one go (bulk drain on the other side)
    hang      -> never answers
    exit      -> the process exits at once (os._exit), leaving calls pending
"""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from runtime.ipc import Channel, ChannelServer, Slab, read_tensors, write_tensors


async def handle(channel: Channel) -> None:
    slab: Slab | None = None
    response: Slab | None = None
    try:
        while True:
            for message in await channel.receive_many():
                op = message.pop("op")
                call_id = message.pop("id", None)
                reply: dict[str, Any] = {"id": call_id}
                if op == "echo":
                    reply.update(message)
                elif op == "fail":
                    reply["error"] = {"code": message["code"], "message": message["message"]}
                elif op == "slab":
                    slab = Slab.attach(channel.received_fds.pop(0), message["size"])
                    response = Slab.attach(channel.received_fds.pop(0), message["size"])
                    reply["ok"] = True
                elif op == "tensors":
                    assert slab is not None and response is not None
                    arrays = read_tensors(slab, message["refs"], copy=False)
                    written = write_tensors(response, arrays)
                    reply["refs"] = None if written is None else written[0]
                    reply["offsets"] = None if written is None else written[1]
                elif op == "free":
                    assert response is not None
                    for offset in message["offsets"]:
                        response.free(offset)
                    continue
                elif op == "burst":
                    for index in range(message["count"]):
                        channel.send_nowait({"notice": index})
                    continue
                elif op == "hang":
                    continue
                elif op == "exit":
                    os._exit(3)
                else:
                    reply["error"] = {"code": "invalid_argument", "message": f"unknown op {op}"}
                if call_id is not None:
                    channel.send_nowait(reply)
    finally:
        for mapped in (slab, response):
            if mapped is not None:
                mapped.close()


async def main(address: str) -> None:
    server = await ChannelServer.listen(address, handle)
    print("READY", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


if __name__ == "__main__":
    target = sys.argv[1]
    asyncio.run(main("\0" + target[1:] if target.startswith("@") else target))

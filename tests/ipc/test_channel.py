"""Channel, ChannelServer and Caller, with a real second process (tests/ipc/peer.py) where it matters."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import Code, RuntimeServingError, Unavailable
from runtime.ipc import Caller, Channel, ChannelClosed, ChannelServer, Message, Slab, read_tensors, write_tensors
from runtime.ipc import channel as channel_module

ROOT = Path(__file__).resolve().parents[2]


def abstract_address() -> str:
    return f"\0model-runtime-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def peer() -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """A child process serving tests/ipc/peer.py on an abstract address: (address, process)."""
    address = abstract_address()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.ipc.peer", "@" + address[1:], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line == b"READY\n"
    yield address, process
    if process.returncode is None:
        process.kill()
    await process.wait()


@pytest.fixture
async def caller(peer: tuple[str, asyncio.subprocess.Process]) -> AsyncIterator[Caller]:
    caller = Caller(await Channel.connect(peer[0]))
    yield caller
    await caller.close()


async def test_echo_and_errors_across_processes(caller: Caller) -> None:
    assert await caller.call("echo", x=1, text="é", nested={"a": [1, 2.5, None]}) == {
        "id": 1, "x": 1, "text": "é", "nested": {"a": [1, 2.5, None]}
    }  # fmt: skip
    with pytest.raises(RuntimeServingError) as caught:
        await caller.call("fail", code="not_found", message="no model 'x'")
    assert caught.value.code is Code.NOT_FOUND and caught.value.message == "no model 'x'"
    with pytest.raises(RuntimeServingError) as caught:
        await caller.call("fail", code="no-such-code", message="odd")
    assert caught.value.code is Code.INTERNAL
    with pytest.raises(RuntimeServingError, match="unknown op"):
        await caller.call("nope")


async def test_slab_fds_pass_and_tensors_travel_both_ways(caller: Caller) -> None:
    request, response = Slab.create(1 << 20, "request"), Slab.create(1 << 20, "response")
    try:
        await caller.channel.send({"op": "hello"})  # frames before the fd frame keep their place
        await caller.channel.send({"id": 0, "op": "slab", "size": request.size}, fds=[request.fd, response.fd])
        assert (await caller.call("echo", after=True))["after"] is True
        arrays = {
            "x": np.arange(12, dtype=np.float32).reshape(3, 4),
            "s": np.array([b"a", b"", b"xyz"], dtype=object),
            "e": np.zeros((0, 5), np.int64),
            "z": np.array(True),
        }
        written = write_tensors(request, arrays)
        assert written is not None
        reply = await caller.call("tensors", refs=written[0])
        back = read_tensors(response, reply["refs"], copy=False)
        for name, array in arrays.items():
            assert back[name].dtype == array.dtype and back[name].tolist() == array.tolist()
        assert np.shares_memory(back["x"], np.frombuffer(response.view(0, response.size), np.uint8))
        del back
        caller.notify("free", offsets=reply["offsets"])
        for offset in written[1]:
            request.free(offset)
        again = await caller.call("tensors", refs=write_tensors(request, {"x": arrays["x"]})[0])  # type: ignore[index]
        assert again["offsets"] == [0]  # the peer freed its blocks in the response slab
    finally:
        request.close()
        response.close()


async def test_ten_thousand_pipelined_calls(caller: Caller) -> None:
    replies = await asyncio.gather(*(caller.call("echo", n=n) for n in range(10_000)))
    assert [reply["n"] for reply in replies] == list(range(10_000))
    assert caller.pending == 0


async def test_bulk_drain_many_frames_per_read(peer: tuple[str, asyncio.subprocess.Process]) -> None:
    channel = await Channel.connect(peer[0])
    try:
        channel.send_nowait({"op": "burst", "count": 5000})
        seen: list[Message] = []
        reads = 0
        while len(seen) < 5000:
            seen.extend(await channel.receive_many())
            reads += 1
        assert seen == [{"notice": index} for index in range(5000)]
        assert reads < 100, f"{reads} wake-ups for 5000 frames"
    finally:
        await channel.close()


async def test_peer_exit_fails_pending_and_later_calls(caller: Caller, peer: tuple[str, asyncio.subprocess.Process]) -> None:
    hanging = asyncio.ensure_future(caller.call("hang"))
    await asyncio.sleep(0.05)
    with pytest.raises(Unavailable, match="the engine process is gone"):
        await caller.call("exit")
    with pytest.raises(Unavailable, match="the engine process is gone"):
        await hanging
    assert await peer[1].wait() == 3
    await asyncio.wait_for(caller.wait_closed(), 5)
    assert caller.closed and caller.pending == 0
    with pytest.raises(Unavailable):
        await caller.call("echo")
    with pytest.raises(Unavailable):
        caller.notify("release", offsets=[])
    with pytest.raises(ChannelClosed):
        await caller.channel.receive_many()


async def test_peer_killed_mid_stream(caller: Caller, peer: tuple[str, asyncio.subprocess.Process]) -> None:
    calls = [asyncio.ensure_future(caller.call("hang")) for _ in range(100)]
    await asyncio.sleep(0.05)
    peer[1].kill()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert all(isinstance(result, Unavailable) for result in results)


# in one process ---------------------------------------------------------------------------------------------
class Recorder:
    """A ChannelServer handler that records frames and fds, replying to "echo" unless paused."""

    def __init__(self) -> None:
        self.frames: list[Message] = []
        self.fds: list[int] = []
        self.fds_at: list[int] = []  # len(frames) when each batch of fds was seen
        self.reading = asyncio.Event()
        self.reading.set()
        self.channels: list[Channel] = []

    async def __call__(self, channel: Channel) -> None:
        self.channels.append(channel)
        while True:
            await self.reading.wait()
            for message in await channel.receive_many():
                self.frames.append(message)
                if channel.received_fds:
                    self.fds_at.append(len(self.frames))
                    self.fds.extend(channel.received_fds)
                    channel.received_fds.clear()
                if message.get("op") == "echo":
                    channel.send_nowait({"id": message["id"], "echo": message.get("value")})


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Recorder]]:
    address = abstract_address()
    recorder = Recorder()
    server = await ChannelServer.listen(address, recorder)
    yield address, recorder
    await server.close()


async def test_fd_frame_keeps_order_with_queued_frames(served: tuple[str, Recorder]) -> None:
    address, recorder = served
    channel = await Channel.connect(address)
    read, write = os.pipe()
    try:
        for index in range(3):
            channel.send_nowait({"n": index})
        await channel.send({"n": 3}, fds=[write])
        channel.send_nowait({"n": 4})
        caller = Caller(channel)
        assert (await caller.call("echo", value=5))["echo"] == 5
        assert [frame.get("n") for frame in recorder.frames[:5]] == [0, 1, 2, 3, 4]
        # the fds are in received_fds by the time the frame they came with is returned (with earlier ones)
        assert len(recorder.fds_at) == 1 and recorder.fds_at[0] <= 4 and len(recorder.fds) == 1
        os.write(recorder.fds[0], b"through the passed fd")
        assert os.read(read, 100) == b"through the passed fd"
        assert not os.get_inheritable(recorder.fds[0])  # received close-on-exec
        await caller.close()
    finally:
        for fd in (read, write, *recorder.fds):
            os.close(fd)


async def test_file_system_address_is_removed_on_close(tmp_path: Path) -> None:
    address = str(tmp_path / "engine.sock")
    recorder = Recorder()
    server = await ChannelServer.listen(address, recorder)
    caller = Caller(await Channel.connect(address))
    assert (await caller.call("echo", value="x"))["echo"] == "x"
    await server.close()
    assert not Path(address).exists()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(caller.call("echo", value="y"), 5)
    await caller.close()


async def test_cancelled_call_tells_the_peer(served: tuple[str, Recorder]) -> None:
    address, recorder = served
    caller = Caller(await Channel.connect(address), cancel_op="cancel")
    task = asyncio.ensure_future(caller.call("infer", model="m"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await caller.call("echo", value=1))["echo"] == 1
    assert recorder.frames[:2] == [{"id": 1, "op": "infer", "model": "m"}, {"op": "cancel", "id": 1}]
    assert caller.pending == 0
    await caller.close()


async def test_unsolicited_frames_go_to_on_message(served: tuple[str, Recorder]) -> None:
    address, recorder = served
    notices: list[Message] = []
    caller = Caller(await Channel.connect(address), on_message=notices.append)
    assert (await caller.call("echo", value=1))["echo"] == 1
    recorder.channels[0].send_nowait({"op": "config", "version": 2})
    recorder.channels[0].send_nowait({"id": 12345, "late": True})  # no such call: a notice too
    for _ in range(100):
        if len(notices) == 2:
            break
        await asyncio.sleep(0.01)
    assert notices == [{"op": "config", "version": 2}, {"id": 12345, "late": True}]
    await caller.close()


async def test_writer_stays_bounded_when_the_peer_stops_reading(
    served: tuple[str, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, recorder = served
    recorder.reading.clear()
    monkeypatch.setattr(channel_module, "READ_LIMIT", 10)
    channel = await Channel.connect(address)
    payload = "x" * 10_000
    sent = 0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            while True:
                await channel.send({"payload": payload})
                sent += 1
    # the kernel buffers took some, then send waited: the buffer stopped near the high-water mark
    assert channel.write_buffer_size <= channel_module.HIGH_WATER + 20_000
    monkeypatch.setattr(channel_module, "HARD_LIMIT", channel.write_buffer_size + 50_000)
    with pytest.raises(ChannelClosed):
        for _ in range(100):
            channel.send_nowait({"payload": payload})
    assert channel.closed
    assert sent > 10


async def test_reader_pauses_and_resumes(served: tuple[str, Recorder], monkeypatch: pytest.MonkeyPatch) -> None:
    address, recorder = served
    monkeypatch.setattr(channel_module, "READ_LIMIT", 5)
    recorder.reading.clear()
    channel = await Channel.connect(address)
    for index in range(2000):
        channel.send_nowait({"n": index})
    await asyncio.sleep(0.1)
    recorder.reading.set()
    caller = Caller(channel)
    assert (await caller.call("echo", value="done"))["echo"] == "done"
    assert [frame["n"] for frame in recorder.frames[:2000]] == list(range(2000))
    await caller.close()


async def test_server_close_ends_channels() -> None:
    other = abstract_address()
    recorder = Recorder()
    server = await ChannelServer.listen(other, recorder)
    client = await Channel.connect(other)
    client.send_nowait({"op": "x"})
    for _ in range(100):
        if recorder.frames:
            break
        await asyncio.sleep(0.01)
    await server.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(client.receive_many(), 5)
    await client.close()
    with pytest.raises(ConnectionRefusedError):
        await Channel.connect(other)


async def test_malformed_frames_close_the_channel(served: tuple[str, Recorder]) -> None:
    address, recorder = served
    channel = await Channel.connect(address)
    channel._sock.send(b"\x03\x00\x00\x00[1]")  # JSON, but not an object
    for _ in range(100):
        if recorder.channels and recorder.channels[0].closed:
            break
        await asyncio.sleep(0.01)
    assert recorder.channels[0].closed
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(channel.receive_many(), 5)
    await channel.close()


async def test_lazy_notices_ride_along_with_the_next_call(served: tuple[str, Recorder], monkeypatch: pytest.MonkeyPatch) -> None:
    """A lazy notice ("release") does not wake the peer on its own: it goes out with the next call, or
    after LAZY_FLUSH_S when no call comes; order is kept either way."""
    address, recorder = served
    monkeypatch.setattr(channel_module, "LAZY_FLUSH_S", 0.3)
    caller = Caller(await Channel.connect(address))
    assert (await caller.call("echo", value=0))["echo"] == 0
    caller.notify("release", ticket=1, lazy=True)
    await asyncio.sleep(0.05)  # several loop turns: a deferred notice would have gone by now
    assert [f.get("op") for f in recorder.frames] == ["echo"]
    assert (await caller.call("echo", value=2))["echo"] == 2
    assert [(f.get("op"), f.get("ticket", f.get("value"))) for f in recorder.frames] == [
        ("echo", 0), ("release", 1), ("echo", 2)
    ]  # fmt: skip
    caller.notify("release", ticket=3, lazy=True)
    for _ in range(100):  # nothing else to ride with: the timer sends it
        if len(recorder.frames) == 4:
            break
        await asyncio.sleep(0.01)
    assert recorder.frames[3] == {"op": "release", "ticket": 3}
    await caller.close()

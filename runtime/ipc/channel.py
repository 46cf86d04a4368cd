"""Length-prefixed orjson frames over a SOCK_STREAM unix socket, for asyncio, drained in bulk.

A frame is a 4-byte little-endian length and an orjson body (a small dict; tensors never travel here,
they are in a Slab). The Channel drives its non-blocking socket itself with loop.add_reader/add_writer
rather than through asyncio streams, because file descriptors ride on frames (SCM_RIGHTS): every read
is a recvmsg with room for them, and a send with fds is a sendmsg on the same socket, in order with the
frames before it. Any frame may carry fds (the handshake sends the two slab memfds).

- receive_many() returns every complete frame that has arrived (at least one): one wake-up per socket
  read, however many descriptors it brought.
- send_nowait() appends a frame to the write buffer; the buffer goes to the socket once per event-loop
  turn (loop.call_soon), so the frames a loop turn produces share one send() and one wake-up of the peer.
  If the peer stops reading and the buffer passes HIGH_WATER, `await send()` waits until it is back
  under LOW_WATER; past HARD_LIMIT the peer counts as stuck and the channel is closed (memory stays
  bounded whatever the peer does).
- Reading pauses while READ_LIMIT frames wait unread, so a slow consumer pushes back on the sender
  through the socket buffer instead of growing this process.

Caller is request/response by "id" on top; ChannelServer accepts channels. Abstract addresses
("\\0name") and file-system paths both work.
"""
from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from runtime.errors import Code, RuntimeServingError, Unavailable

__all__ = ["Caller", "Channel", "ChannelClosed", "ChannelServer", "Message"]

log = logging.getLogger(__name__)

Message = dict[str, Any]

_LENGTH = struct.Struct("<I")
#: A frame longer than this is a protocol error (descriptors are a few hundred bytes).
MAX_FRAME = 16 * 1024 * 1024
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
HARD_LIMIT = 64 * 1024 * 1024
#: The longest a lazy frame (send_nowait(lazy=True)) waits for another frame to ride along with.
LAZY_FLUSH_S = 0.002
#: Complete frames held unread before reading from the socket pauses.
READ_LIMIT = 8192
#: File descriptors one recvmsg can take.
MAX_FDS = 16
_READ_SIZE = 256 * 1024
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_CLOSED_MESSAGE = "the engine process is gone"


class ChannelClosed(ConnectionError):
    """The peer closed the channel (or it was closed here, or it broke)."""


def _encode(message: Message) -> bytes:
    body = orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
    return _LENGTH.pack(len(body)) + body


class Channel:
    """One connected unix stream socket speaking frames. Make it with `connect` or from ChannelServer."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self.received_fds: list[int] = []
        # read side
        self._rbuf = bytearray()
        self._chunk = memoryview(bytearray(_READ_SIZE))
        self._inbox: list[Message] = []
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._reading = True
        # A consumer (Caller) takes frames straight from the read callback, without a task wake-up.
        self._consumer: Callable[[list[Message]], None] | None = None
        self._on_closed: Callable[[BaseException], None] | None = None
        # write side
        self._wparts: list[bytes] = []  # frames not yet handed to the socket
        self._wbuf = bytearray()  # bytes the socket did not take
        self._wsize = 0  # len(wparts bytes) + len(wbuf)
        self._flush_scheduled = False
        self._lazy_timer: asyncio.TimerHandle | None = None  # flushes lazy frames nothing else took along
        self._sent_this_turn = False  # a frame went straight out this loop turn; later ones coalesce
        self._writing = False  # add_writer is active
        self._holding = False  # a send with fds is under way: queued frames wait for it
        self._fd_lock = asyncio.Lock()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    async def connect(cls, address: str) -> Channel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def write_buffer_size(self) -> int:
        return self._wsize

    # reading ------------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            # Into one reused buffer: recvmsg(256 KiB) would allocate (mmap), shrink (mremap) and free
            # (munmap) a bytes object per read, three syscalls that cost more than the read itself.
            nbytes, ancdata, flags, _ = self._sock.recvmsg_into([self._chunk], _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.received_fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            self._fail(ChannelClosed("more file descriptors came with a frame than a read can take"))
            return
        if not nbytes:
            self._eof = True
            self._stop_reading()
            self._wake()
            return
        self._rbuf += self._chunk[:nbytes]
        self._parse()
        if len(self._inbox) >= READ_LIMIT:
            self._stop_reading()

    def _parse(self) -> None:
        buffer = self._rbuf
        end = len(buffer)
        pos = 0
        inbox = self._inbox
        unpack = _LENGTH.unpack_from
        view = memoryview(buffer)
        try:
            while end - pos >= 4:
                (length,) = unpack(buffer, pos)
                if length > MAX_FRAME:
                    raise ChannelClosed(f"a frame of {length} bytes is over the limit of {MAX_FRAME}")
                stop = pos + 4 + length
                if stop > end:
                    break
                message = orjson.loads(view[pos + 4 : stop])
                if not isinstance(message, dict):
                    raise ChannelClosed(f"a frame holds {type(message).__name__}, not an object")
                inbox.append(message)
                pos = stop
        except (ChannelClosed, orjson.JSONDecodeError) as exc:
            view.release()
            self._fail(exc if isinstance(exc, ChannelClosed) else ChannelClosed(f"a frame is not JSON: {exc}"))
            return
        view.release()
        if pos:
            del buffer[:pos]
        if inbox:
            if self._consumer is not None:
                self._inbox = []
                self._consumer(inbox)
            else:
                self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._on_closed is not None and (self._closed or self._eof):
            on_closed, self._on_closed = self._on_closed, None
            on_closed(self._error or ChannelClosed("the channel is closed"))

    def consume(self, on_messages: Callable[[list[Message]], None], on_closed: Callable[[BaseException], None]) -> None:
        """Hand every batch of frames to `on_messages` from the read callback itself (no task wake-up; it
        must not block), and the end of the channel to `on_closed`, once. receive_many is then unused."""
        self._consumer = on_messages
        self._on_closed = on_closed
        if self._inbox:
            messages, self._inbox = self._inbox, []
            on_messages(messages)
        if self._closed or self._eof:
            self._wake()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            if not self._closed:
                self._loop.remove_reader(self._fd)

    async def receive_many(self) -> list[Message]:
        """Every complete frame that has arrived, in order; waits for at least one. ChannelClosed at EOF."""
        while not self._inbox:
            if self._error is not None:
                raise ChannelClosed(str(self._error)) from self._error
            if self._eof or self._closed:
                raise ChannelClosed("the channel is closed")
            if self._waiter is not None:
                raise RuntimeError("receive_many is already being awaited on this channel")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        messages, self._inbox = self._inbox, []
        if not self._reading and not self._eof and not self._closed and self._error is None:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)
        return messages

    # writing ------------------------------------------------------------------------------------------
    def send_nowait(self, message: Message, *, defer: bool = False, lazy: bool = False) -> None:
        """Queue one frame. The first frame of a loop turn goes out at once, with any deferred ones
        queued before it; the frames after it in the same turn are joined into one send at the end of
        the turn. `defer` (notices nobody waits on, e.g. "cancel") waits for the next send or the end
        of the turn, so it rides along with a request instead of waking the peer on its own. `lazy`
        (notices that may wait, e.g. "release") waits for the next send, or LAZY_FLUSH_S: under load
        it always rides along, and the peer is not woken for it."""
        if self._closed or self._error is not None:
            raise ChannelClosed("the channel is closed")
        frame = _encode(message)
        if lazy:
            self._wparts.append(frame)
            self._wsize += len(frame)
            if self._lazy_timer is None and not self._flush_scheduled:
                self._lazy_timer = self._loop.call_later(LAZY_FLUSH_S, self._flush_lazy)
            return
        if not defer and not self._sent_this_turn and not self._writing and not self._holding:
            self._sent_this_turn = True
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
            parts = self._wparts
            if parts:
                parts.append(frame)
                frame = b"".join(parts)
                parts.clear()
            try:
                sent = self._sock.send(frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc)
                raise ChannelClosed(str(exc)) from exc
            if sent < len(frame):
                self._wbuf += memoryview(frame)[sent:]
                self._wsize = len(self._wbuf)
                self._start_writing()
            else:
                self._wsize = 0
            return
        self._wparts.append(frame)
        self._wsize += len(frame)
        if self._wsize > HARD_LIMIT:
            self._fail(ChannelClosed(f"the peer left over {HARD_LIMIT} bytes unread"))
            raise ChannelClosed("the peer stopped reading")
        if not self._flush_scheduled and not self._writing and not self._holding:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        """Send one frame, with `fds` passed along it (SCM_RIGHTS); waits while the buffer is over
        HIGH_WATER. The fds stay open here (the peer gets its own copies)."""
        if not fds:
            self.send_nowait(message)
            if self._wsize > HIGH_WATER:
                await self.drain()
            return
        if len(fds) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} fds go with one frame")
        if self._closed or self._error is not None:
            raise ChannelClosed("the channel is closed")
        frame = _encode(message)
        async with self._fd_lock:
            # Everything queued before goes first; frames queued meanwhile wait (self._holding), so the
            # fds arrive with this frame's first byte and the order of frames is kept.
            while self._wsize:
                await self._wait_flushed()
            self._holding = True
            try:
                while True:
                    try:
                        sent = socket.send_fds(self._sock, [frame], list(fds))
                    except (BlockingIOError, InterruptedError):
                        await self._wait_writable()
                        continue
                    except OSError as exc:
                        self._fail(exc)
                        raise ChannelClosed(str(exc)) from exc
                    break
            finally:
                self._holding = False
            if sent < len(frame):
                self._wbuf += frame[sent:]
                self._wsize += len(frame) - sent
                self._start_writing()
            elif self._wparts:
                self._flush()

    async def _wait_writable(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(self._fd, waiter.set_result, None)
        try:
            await waiter
        finally:
            if not self._closed:
                self._loop.remove_writer(self._fd)
        if self._closed or self._error is not None:
            raise ChannelClosed("the channel is closed")

    async def _wait_flushed(self) -> None:
        if self._flush_scheduled and not self._writing:
            self._flush()
        if self._wsize:
            await self._drain_until(0)

    async def drain(self) -> None:
        """Wait until the write buffer is under LOW_WATER."""
        if self._wsize > LOW_WATER:
            await self._drain_until(LOW_WATER)
        if self._error is not None or self._closed:
            raise ChannelClosed("the channel is closed")

    async def _drain_until(self, level: int) -> None:
        while self._wsize > level:
            if self._error is not None or self._closed:
                raise ChannelClosed("the channel is closed")
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _wake_drainers(self) -> None:
        if self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _flush_lazy(self) -> None:
        self._lazy_timer = None
        if not self._flush_scheduled:
            self._flush()

    def _flush(self) -> None:
        """Hand the queued frames to the socket in one send; what it does not take waits for writability."""
        self._flush_scheduled = False
        self._sent_this_turn = False
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        parts = self._wparts
        if self._closed or self._writing or self._holding or not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        if sent < len(data):
            self._wbuf += memoryview(data)[sent:]
            self._wsize = len(self._wbuf)
            self._start_writing()
        else:
            self._wsize = 0
        self._wake_drainers()

    def _start_writing(self) -> None:
        if not self._writing and not self._closed:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        buffer = self._wbuf
        if self._wparts:
            buffer += b"".join(self._wparts)
            self._wparts.clear()
        while buffer:
            try:
                sent = self._sock.send(buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fail(exc)
                return
            del buffer[:sent]
        self._wsize = len(buffer)
        if not buffer and self._writing and not self._closed:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._wake_drainers()

    # closing ------------------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._teardown()

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        if self._reading:
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        self._sock.close()
        self._wake()
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def close(self, timeout_s: float = 1.0) -> None:
        """Write out what is queued (for up to timeout_s), then close the socket. Received fds are not
        closed: they belong to whoever took them from received_fds."""
        if self._closed:
            return
        if self._wsize and self._error is None:
            with contextlib.suppress(ChannelClosed, TimeoutError):
                await asyncio.wait_for(self._wait_flushed(), timeout_s)
        self._teardown()

    def abort(self) -> None:
        """Close now, dropping whatever is still queued."""
        self._teardown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Channel fd={self._fd} {state} unread={len(self._inbox)} unsent={self._wsize}>"


def _unix_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ChannelServer:
    """Accepts channels on a unix socket and runs `on_channel(channel)` for each as a task; the channel
    is closed when that coroutine returns or fails (a failure is logged)."""

    def __init__(self, sock: socket.socket, address: str, on_channel: Callable[[Channel], Awaitable[None]]) -> None:
        self._sock = sock
        self.address = address
        self._on_channel = on_channel
        self._tasks: set[asyncio.Task[None]] = set()
        self._channels: set[Channel] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    @classmethod
    async def listen(cls, address: str, on_channel: Callable[[Channel], Awaitable[None]]) -> ChannelServer:
        return cls(_unix_socket(address), address, on_channel)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                if self._sock.fileno() == -1:
                    return
                log.warning("accepting an ipc connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            channel = Channel(conn)
            self._channels.add(channel)
            task = loop.create_task(self._serve(channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, channel: Channel) -> None:
        try:
            await self._on_channel(channel)
        except (ChannelClosed, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("an ipc channel handler failed")
        finally:
            self._channels.discard(channel)
            await channel.close()

    async def close(self) -> None:
        """Stop accepting, cancel the handlers, close their channels."""
        self._accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._sock.close()
        if not self.address.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(self.address)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for channel in list(self._channels):
            channel.abort()


def _error_from(reply: Message) -> RuntimeServingError:
    error = reply.get("error")
    if not isinstance(error, dict):
        return RuntimeServingError(f"malformed error reply: {error!r}", Code.INTERNAL)
    try:
        code = Code(error.get("code"))
    except ValueError:
        code = Code.INTERNAL
    return RuntimeServingError(str(error.get("message", "")), code)


class Caller:
    """Calls by id over a Channel: call() sends {"id", "op", **fields} and waits for the reply with that
    id; a reply with "error": {"code", "message"} raises RuntimeServingError(message, Code(code)). When
    the channel closes, every pending and later call raises Unavailable("the engine process is gone").

    A call whose awaiting task is cancelled stops waiting; with `cancel_op`, the peer is also told with
    notify(cancel_op, id=<that call's id>). Frames without a pending id go to `on_message` (if given),
    so the peer can push notices on the same channel.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        cancel_op: str | None = None,
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        self.channel = channel
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._cancel_op = cancel_op
        self._on_message = on_message
        self._closed: BaseException | None = None
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Replies are taken in the channel's read callback: no reader task between the socket and the
        # waiting call (one loop iteration less per round trip).
        channel.consume(self._dispatch, self._close)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def call(self, op: str, **fields: Any) -> Message:
        if self._closed is not None:
            raise Unavailable(_CLOSED_MESSAGE)
        call_id = next(self._ids)
        message: Message = {"id": call_id, "op": op}
        message.update(fields)
        future: asyncio.Future[Message] = self.channel._loop.create_future()
        self._pending[call_id] = future
        try:
            channel = self.channel
            channel.send_nowait(message)
            if channel._wsize > HIGH_WATER:
                await channel.drain()
            reply = await future
        except ChannelClosed:
            raise Unavailable(_CLOSED_MESSAGE) from None
        except asyncio.CancelledError:
            if self._pending.pop(call_id, None) is not None and self._cancel_op is not None:
                with contextlib.suppress(ChannelClosed):
                    self.notify(self._cancel_op, id=call_id)
            raise
        finally:
            self._pending.pop(call_id, None)
        if "error" in reply:
            raise _error_from(reply)
        return reply

    def notify(self, op: str, *, lazy: bool = False, **fields: Any) -> None:
        """Send {"op": op, **fields}; no reply is expected. Deferred (send_nowait(defer=True)): it goes
        with the next call's frame or at the end of this loop turn; `lazy`: with the next call's frame,
        or within LAZY_FLUSH_S."""
        if self._closed is not None:
            raise Unavailable(_CLOSED_MESSAGE)
        message: Message = {"op": op}
        message.update(fields)
        try:
            self.channel.send_nowait(message, defer=not lazy, lazy=lazy)
        except ChannelClosed:
            raise Unavailable(_CLOSED_MESSAGE) from None

    def _dispatch(self, replies: list[Message]) -> None:
        pending = self._pending
        for reply in replies:
            future = pending.pop(reply.get("id"), None)  # type: ignore[arg-type]
            if future is not None:
                if not future.done():
                    future.set_result(reply)
            elif self._on_message is not None:
                try:
                    self._on_message(reply)
                except Exception:
                    log.exception("an ipc message handler failed")

    def _close(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        if not self._done.done():
            self._done.set_result(None)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(Unavailable(_CLOSED_MESSAGE))

    async def wait_closed(self) -> None:
        """Return when the channel has closed (EOF, an error, or close())."""
        await asyncio.shield(self._done)

    async def close(self) -> None:
        """Close the channel; pending calls fail with Unavailable."""
        await self.channel.close()
        self._close(ChannelClosed("the caller was closed"))

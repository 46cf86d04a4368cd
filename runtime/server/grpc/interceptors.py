"""Server interceptors: StreamGuard ends idle bidirectional streams, Drain shuts down without CANCELLED."""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

class _Activity:
    """What one bidirectional stream has been doing: requests read, answers written, last of either."""

    __slots__ = ("answered", "last", "received")

    def __init__(self) -> None:
        self.received = 0
        self.answered = 0
        self.last = time.monotonic()

    @property
    def idle(self) -> bool:
        return self.answered >= self.received


class StreamGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Ends a bidirectional stream that has nothing pending and has sent no request for `idle_timeout_s`
    (DEADLINE_EXCEEDED), and, once the server is stopping, one with nothing pending (UNAVAILABLE), so an
    idle stream pins neither a call slot nor the shutdown. Streams with answers pending go on as usual.
    """

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._stopping: asyncio.Event | None = None  # made inside the running loop

    def _stop_event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    def stop(self) -> None:
        self._stop_event().set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.stream_stream is None:
            return handler
        return grpc.stream_stream_rpc_method_handler(
            self._guarded(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guarded(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def counted(requests: AsyncIterator[Any], activity: _Activity) -> AsyncIterator[Any]:
            async for request in requests:
                activity.received += 1
                activity.last = time.monotonic()
                yield request

        async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            activity = _Activity()
            answers = behavior(counted(requests, activity), context).__aiter__()
            stopping = asyncio.ensure_future(self._stop_event().wait())
            step: asyncio.Future[Any] | None = None
            try:
                while True:
                    step = asyncio.ensure_future(answers.__anext__())
                    ended = await self._wait(step, stopping, activity)
                    if ended is not None:
                        step.cancel()
                        try:
                            await step
                        except (asyncio.CancelledError, StopAsyncIteration):
                            pass
                        await context.abort(*ended)
                    try:
                        answer = step.result()
                    except StopAsyncIteration:
                        return
                    activity.answered += 1
                    activity.last = time.monotonic()
                    yield answer
            finally:
                stopping.cancel()
                # Closed while waiting (the client went away): the last step is nobody's to await.
                if step is not None:
                    if not step.done():
                        step.cancel()
                    elif not step.cancelled():
                        step.exception()  # retrieved, so asyncio does not log it as never retrieved

        return guarded

    async def _wait(
        self, step: asyncio.Future[Any], stopping: asyncio.Future[Any], activity: _Activity
    ) -> tuple[grpc.StatusCode, str] | None:
        """Wait for the next answer; a (code, message) to end the stream with instead, if it should end."""
        while not step.done():
            timeout: float | None = None
            if activity.idle:
                if stopping.done():
                    return grpc.StatusCode.UNAVAILABLE, "server shutting down; reopen the stream on another server"
                timeout = activity.last + self.idle_timeout_s - time.monotonic()
                if timeout <= 0:
                    return (
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"stream idle for {self.idle_timeout_s:g}s with nothing pending; reopen it to send more",
                    )
            waiting = (step,) if stopping.done() else (step, stopping)
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return None



_SHUTTING_DOWN = "server shutting down; retry the call on another server"
_GRACE_OVER = "server shutting down: the call did not finish within the grace period; retry it"


class Drain(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Shutdown without CANCELLED: once draining, a new call is answered UNAVAILABLE (clients retry
    that) while the port stays open; calls already accepted run on; when the grace period is over
    those still running are ended with UNAVAILABLE by us, before grpc's own stop would cancel them.

    Health checks pass through untracked: a probe must see NOT_SERVING during the drain, and a
    Watch must not hold the shutdown.
    """

    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self._calls: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None  # made inside the running loop

    def _idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if not self._calls:
                self._idle.set()
        return self._idle

    def start(self) -> None:
        self.draining = True

    async def wait(self, timeout_s: float) -> bool:
        """True when every accepted call finished within timeout_s."""
        try:
            await asyncio.wait_for(self._idle_event().wait(), max(0.0, timeout_s))
        except TimeoutError:
            return False
        return True

    def expire(self) -> None:
        """End the calls still running: each answers UNAVAILABLE (see _track)."""
        self.expired = True
        for task in list(self._calls):
            task.cancel()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or method.startswith("/grpc.health.v1.Health/"):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _enter(self) -> asyncio.Task[Any] | None:
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
            self._idle_event().clear()
        return task

    def _leave(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._calls.discard(task)
        if not self._calls:
            self._idle_event().set()

    def _unary(self, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def drained(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.draining:
                await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
            task = self._enter()
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                if not self.expired:
                    raise  # the client went away
                await context.abort(grpc.StatusCode.UNAVAILABLE, _GRACE_OVER)
            finally:
                self._leave(task)

        return drained

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def drained(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if self.draining:
                await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
            task = self._enter()
            try:
                async for answer in behavior(requests, context):
                    yield answer
            except asyncio.CancelledError:
                if not self.expired:
                    raise
                await context.abort(grpc.StatusCode.UNAVAILABLE, _GRACE_OVER)
            finally:
                self._leave(task)

        return drained



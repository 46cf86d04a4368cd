"""One OS thread per model instance, so execution never runs on the event loop.

Lighter than loop.run_in_executor: a job is handed over through a SimpleQueue and its result
comes back with one call_soon_threadsafe, with no concurrent.futures.Future to chain.

The threads hold nothing but their job queue between jobs, so a model version whose workers are
shut down (or dropped) leaves no thread and keeps no session alive.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from typing import Any, Callable, TypeVar

from runtime.errors import Code, RuntimeServingError

T = TypeVar("T")

_STOP = object()


class WorkersUnavailable(RuntimeServingError):
    """The OS would not start another thread (too many threads, or out of memory for their stacks)."""

    code = Code.RESOURCE_EXHAUSTED


class InstanceWorkers:
    def __init__(self, count: int, name: str) -> None:
        self._jobs: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(count)]
        self._threads: list[threading.Thread] = []
        # Safety net for workers dropped without shutdown() (a load that failed after they started):
        # the threads are told to stop when this object goes, instead of waiting forever on their queue.
        self._finalizer = weakref.finalize(self, _tell_stop, self._jobs)
        for index, jobs in enumerate(self._jobs):
            thread = threading.Thread(target=_serve, args=(jobs,), name=f"{name}-instance{index}", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": undo the ones that did start
                self.shutdown()
                raise WorkersUnavailable(
                    f"cannot start thread {index + 1} of {count} for the instances ({exc}); "
                    f"{threading.active_count()} threads are running in the server"
                ) from None
            self._threads.append(thread)

    def run(self, instance: int, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `function(*args)` on the instance's thread; the future resolves on the calling loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs[instance].put((loop, future, function, args))
        return future

    def shutdown(self) -> None:
        """Stop and join every thread (after the jobs already handed over); safe to call twice."""
        self._finalizer()
        for thread in self._threads:
            thread.join()
        self._threads.clear()


def _tell_stop(jobs: list[queue.SimpleQueue[Any]]) -> None:
    for queued in jobs:
        queued.put(_STOP)


def _serve(jobs: queue.SimpleQueue[Any]) -> None:
    # A module function, not a method: the thread must not keep its InstanceWorkers alive.
    while (job := jobs.get()) is not _STOP:
        loop, future, settle, outcome = _run_job(job)
        # This thread holds nothing of the job once the loop hears of it: the job's function and
        # arguments (a bound method of the model, a batch of inputs, shared-memory mappings) are gone
        # already, so what the awaiting request frees when it resumes is freed then, not whenever this
        # thread gets the GIL back, and between jobs no retired version or its sessions stay alive.
        del job
        loop.call_soon_threadsafe(settle, future, outcome)
        del loop, future, settle, outcome


def _run_job(job: tuple[Any, ...]) -> tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., None], Any]:
    """Run one job; (loop, future, how to settle it, result or error), with the job's function and
    arguments no longer referenced from this frame."""
    loop, future, function, args = job
    del job
    try:
        result = function(*args)
    except BaseException as exc:  # delivered to the awaiting coroutine
        return loop, future, _settle_error, exc
    return loop, future, _settle, result


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _settle_error(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

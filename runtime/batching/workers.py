"""One OS thread per model instance, so execution never runs on the event loop.

Lighter than loop.run_in_executor: a job is handed over through a SimpleQueue and its result
comes back with one call_soon_threadsafe, with no concurrent.futures.Future to chain.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_STOP = object()


class InstanceWorkers:
    def __init__(self, count: int, name: str) -> None:
        self._jobs: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(count)]
        self._threads = [
            threading.Thread(target=self._serve, args=(jobs,), name=f"{name}-instance{index}", daemon=True)
            for index, jobs in enumerate(self._jobs)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, instance: int, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `function(*args)` on the instance's thread; the future resolves on the calling loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs[instance].put((loop, future, function, args))
        return future

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[Any]) -> None:
        while (job := jobs.get()) is not _STOP:
            loop, future, function, args = job
            try:
                result = function(*args)
            except BaseException as exc:  # delivered to the awaiting coroutine
                loop.call_soon_threadsafe(_settle_error, future, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result)

    def shutdown(self) -> None:
        for jobs in self._jobs:
            jobs.put(_STOP)
        for thread in self._threads:
            thread.join()


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _settle_error(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

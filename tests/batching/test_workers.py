"""runtime/batching/workers.py: the instance threads that run executions off the event loop."""
from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator

import pytest

from runtime.batching.workers import InstanceWorkers


class Batch:
    """Stands for what an execution's arguments hold (input arrays, shared-memory mappings)."""


@pytest.fixture
def fast_switching() -> Iterator[None]:
    # GIL hand-overs as often as the interpreter allows: a thread that still holds a job after telling
    # the loop about it is caught holding it.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


async def test_a_job_s_arguments_are_released_before_its_caller_resumes(fast_switching: None) -> None:
    """When the awaiting request resumes, the thread holds nothing of its job: what the request frees
    then (a batch's arrays, a region's mapping at unregister) is freed at once."""
    workers = InstanceWorkers(1, "model")
    try:
        for _ in range(3000):
            batch = Batch()
            alive = weakref.ref(batch)
            await workers.run(0, lambda b: None, batch)
            del batch
            assert alive() is None
    finally:
        workers.shutdown()

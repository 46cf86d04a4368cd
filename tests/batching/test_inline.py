"""Tiny models run on the event loop itself; slower ones, or all with --inline-execution-us 0, on
their instance threads. Either way every caller gets its own answer."""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from runtime.engine import Engine
from runtime.examples import build_wide_mlp, save_model
from runtime.repository.registry import ModelRegistry
from runtime.types import InferRequest
from tests.engine import OpenEngine
from tests.models import build_identity

UNBATCHED = "max_batch_size: 64\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    save_model(build_identity("FP32"), root, "tiny", config_pbtxt=UNBATCHED)
    # About 3 ms a row on one core: far over the inline limit.
    save_model(build_wide_mlp(), root, "wide", config_pbtxt=UNBATCHED)
    return root


SETTINGS = {"intra_op_threads": 1, "execution_provider": "cpu"}


def executing_threads(registry: ModelRegistry, name: str) -> list[str]:
    """Wrap the model's backend.run to record which thread runs each execution."""
    served = registry.get(name, "")
    seen: list[str] = []
    run = served.backend.run

    def recording(*args: object) -> object:
        seen.append(threading.current_thread().name)
        return run(*args)  # type: ignore[arg-type]

    served.backend.run = recording  # type: ignore[method-assign]
    return seen


async def infer_many(engine: Engine, model: str, count: int, width: int) -> None:
    arrays = [np.full((1, width), i, dtype=np.float32) for i in range(count)]
    requests = [InferRequest(model, "", {"INPUT0" if model == "tiny" else "INPUT": a}) for a in arrays]
    responses = await asyncio.gather(*(engine.infer(r) for r in requests))
    if model == "tiny":
        for array, response in zip(arrays, responses):
            np.testing.assert_array_equal(next(iter(response.outputs.values())), array)


async def test_a_tiny_model_runs_on_the_event_loop_and_a_wide_one_on_its_thread(
    repo: Path, open_engine: OpenEngine
) -> None:
    opened = await open_engine(repo, inline_execution_us=100, **SETTINGS)
    registry, engine = opened.registry, opened.engine
    tiny, wide = executing_threads(registry, "tiny"), executing_threads(registry, "wide")
    await infer_many(engine, "tiny", 40, 4)  # measured on the instance thread at first
    assert registry.get("tiny", "").runs_inline
    tiny.clear()
    await infer_many(engine, "tiny", 40, 4)
    await infer_many(engine, "wide", 4, 512)
    assert tiny and set(tiny) == {threading.current_thread().name}
    assert not registry.get("wide", "").runs_inline
    assert threading.current_thread().name not in wide and len(wide) == 4


async def test_inline_execution_off_keeps_every_model_on_its_thread(repo: Path, open_engine: OpenEngine) -> None:
    opened = await open_engine(repo, inline_execution_us=0, **SETTINGS)
    tiny = executing_threads(opened.registry, "tiny")
    await infer_many(opened.engine, "tiny", 40, 4)
    assert not opened.registry.get("tiny", "").runs_inline
    assert tiny and threading.current_thread().name not in tiny


async def test_the_thread_clock_is_read_for_a_sample_of_executions_only(
    repo: Path, open_engine: OpenEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clock reads (system calls) per timed execution: every one of the first MEASURED_FIRST, then
    one in MEASURE_EVERY, enough for the moving average that decides inline execution."""
    import time

    from runtime import model

    reads = 0
    clock = time.thread_time_ns

    def counting() -> int:
        nonlocal reads
        reads += 1
        return clock()

    monkeypatch.setattr(model.time, "thread_time_ns", counting)
    opened = await open_engine(repo, inline_execution_us=100, **SETTINGS)
    executions = model.MEASURED_FIRST + 10 * model.MEASURE_EVERY
    for i in range(executions):  # one at a time: one execution each
        await infer_many(opened.engine, "tiny", 1, 4)
    assert reads == 2 * (model.MEASURED_FIRST + 10)
    assert opened.registry.get("tiny", "").runs_inline

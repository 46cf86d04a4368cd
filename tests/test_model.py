"""runtime/model.py's batch policy from a config: the batching window parameter (issue 15)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import ModelLoadError
from runtime.examples import save_model
from runtime.types import InferRequest
from tests.conftest import OpenEngine
from tests.models import FIXED_WINDOW, build_identity

WINDOW = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 9000000 }\n"  # 9 s


def lone(model: str) -> InferRequest:
    return InferRequest(model, "", {"INPUT0": np.ones((1, 4), np.float32)})


async def test_batch_window_fixed_keeps_tritons_wait_and_the_default_does_not(
    tmp_path: Path, open_engine: OpenEngine
) -> None:
    repo = tmp_path / "repo"
    save_model(build_identity("FP32"), repo, "adaptive", config_pbtxt=WINDOW)
    save_model(build_identity("FP32"), repo, "fixed", config_pbtxt=WINDOW + FIXED_WINDOW)
    opened = await open_engine(repo)
    adaptive = asyncio.ensure_future(opened.engine.infer(lone("adaptive")))
    fixed = asyncio.ensure_future(opened.engine.infer(lone("fixed")))
    for _ in range(5000):  # the adaptive one answers in ms; the fixed one waits 9 s
        if adaptive.done():
            break
        await asyncio.sleep(0.001)
    assert adaptive.done() and not fixed.done()  # the lone request did not wait out the 9 s window
    assert opened.registry.get("fixed", "").queue.stats.queued == 1  # Triton's: it waits for company
    fixed.cancel()


async def test_an_unknown_batch_window_fails_the_load_naming_the_parameter(
    tmp_path: Path, open_engine: OpenEngine
) -> None:
    repo = tmp_path / "repo"
    bad = 'parameters { key: "batch_window" value: { string_value: "sometimes" } }\n'
    save_model(build_identity("FP32"), repo, "odd", config_pbtxt=WINDOW + bad)
    opened = await open_engine(repo, load=False)
    with pytest.raises(ModelLoadError, match="model 'odd': parameter batch_window must be 'adaptive' or 'fixed', got 'sometimes'"):
        await opened.registry.load("odd")

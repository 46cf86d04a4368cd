"""Ragged batches by padding (config parameter ragged_padding): requests that differ in variable
dims share one execution, and each caller gets exactly its own data back."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.batching.ragged import cut, group_key, pad_stack, ragged_plan
from runtime.engine import Engine
from runtime.errors import ModelLoadError
from runtime.examples import save_model
from runtime._pb import model_config_pb2 as mc
from runtime.repository.model_config import version_spec
from runtime.spec import VersionSpec
from runtime.types import InferRequest
from google.protobuf import text_format
from tests.engine import OpenEngine
from tests.models import FIXED_WINDOW, build_identity

RAGGED = 'parameters { key: "ragged_padding" value: { string_value: "true" } }\n'
WINDOW = "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 300000 }\n" + FIXED_WINDOW
IO = (
    'input { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }\n'
    'output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }\n'
)


def config(text: str) -> VersionSpec:
    return version_spec(text_format.Parse(text, mc.ModelConfig(name="m")))


# ---- the pure part: plan, key, pad and cut -------------------------------------------------------


def test_plan_maps_each_variable_output_axis_to_an_input() -> None:
    plan = ragged_plan(config("max_batch_size: 4\n" + RAGGED + IO), "m")
    assert plan is not None
    assert plan.input_axes == {"INPUT0": (0,)}
    assert plan.output_axes == {"OUTPUT0": ((0, "INPUT0"),)}
    assert ragged_plan(config("max_batch_size: 4\n" + IO), "m") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: 0\n" + RAGGED + IO, "needs a batch dimension"),
        (
            "max_batch_size: 4\n" + RAGGED + 'input { name: "A" data_type: TYPE_FP32 dims: [ 3 ] }\n',
            "no input has a variable",
        ),
        (
            "max_batch_size: 4\n" + RAGGED + 'input { name: "A" data_type: TYPE_FP32 dims: [ -1 ] }\n'
            'output { name: "B" data_type: TYPE_FP32 dims: [ 2, -1 ] }\n',
            "variable dim at position 2 that no input varies at",
        ),
        ('max_batch_size: 4\nparameters { key: "ragged_padding" value: { string_value: "maybe" } }\n' + IO,
         "must be true or false"),
        (
            'max_batch_size: 4\ninput { name: "A" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }\n',
            "Triton's ragged batching",
        ),
    ],
)
def test_configs_that_cannot_be_padded_safely_are_load_errors(text: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        ragged_plan(config(text), "m")


def test_group_key_ignores_only_the_padded_axes() -> None:
    plan = ragged_plan(
        config(
            "max_batch_size: 4\n" + RAGGED
            + 'input { name: "A" data_type: TYPE_FP32 dims: [ -1, 3 ] }\n'
            + 'output { name: "B" data_type: TYPE_FP32 dims: [ -1, 3 ] }\n'
        ),
        "m",
    )
    assert plan is not None
    short, long = np.zeros((1, 2, 3), np.float32), np.zeros((1, 7, 3), np.float32)
    assert group_key({"A": short}, plan) == group_key({"A": long}, plan)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 6), st.integers(1, 4)), min_size=1, max_size=6),
    strings=st.booleans(),
)
def test_pad_then_cut_gives_every_request_its_own_data(lengths: list[tuple[int, int, int]], strings: bool) -> None:
    """With an identity model in between, padding and cutting must be exact inverses per request."""
    plan = ragged_plan(
        config(
            "max_batch_size: 64\n" + RAGGED
            + 'input { name: "A" data_type: TYPE_FP32 dims: [ -1, -1 ] }\n'
            + 'output { name: "B" data_type: TYPE_FP32 dims: [ -1, -1 ] }\n'
        ),
        "m",
    )
    assert plan is not None
    rng = np.random.default_rng(len(lengths))
    requests = []
    for rows, first, second in lengths:
        values = rng.standard_normal((rows, first, second)).astype(np.float32) + 5  # never the pad value 0
        requests.append({"A": values.astype(str).astype(object) if strings else values})
    batch = pad_stack(requests, plan)
    assert batch["A"].shape == (
        sum(r for r, _, _ in lengths), max(f for _, f, _ in lengths), max(s for _, _, s in lengths)
    )
    row = 0
    for request in requests:
        rows = request["A"].shape[0]
        own = cut({"B": batch["A"][row : row + rows]}, request, plan)["B"]
        np.testing.assert_array_equal(own, request["A"])
        row += rows


# ---- end to end through the engine: one execution for ragged requests -----------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    save_model(build_identity("FP32"), root, "padded", config_pbtxt=WINDOW + RAGGED)
    save_model(build_identity("FP32"), root, "unpadded", config_pbtxt=WINDOW)
    save_model(build_identity("BYTES"), root, "padded_text", config_pbtxt=WINDOW + RAGGED)
    return root


async def send_together(engine: Engine, model: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    requests = [InferRequest(model, "", {"INPUT0": array}) for array in arrays]
    responses = await asyncio.gather(*(engine.infer(request) for request in requests))
    return [response.outputs["OUTPUT0"] for response in responses]


async def test_ragged_requests_share_one_execution_and_each_gets_its_own_rows(
    repo: Path, open_engine: OpenEngine
) -> None:
    opened = await open_engine(repo)
    registry, engine = opened.registry, opened.engine
    arrays = [np.arange(1, 1 + n * rows, dtype=np.float32).reshape(rows, n) for n, rows in ((3, 1), (5, 2), (1, 1))]
    for model, executions in (("padded", 1), ("unpadded", 3)):
        outputs = await send_together(engine, model, arrays)
        for sent, got in zip(arrays, outputs):
            np.testing.assert_array_equal(got, sent)
        stats = registry.get(model, "").stats
        assert (stats.execution_count, stats.inference_count) == (executions, 4)
    words = [np.array([[b"a", b"bb"]], dtype=object), np.array([[b"ccc", b"d", b"ee", b"f"]], dtype=object)]
    texts = await send_together(engine, "padded_text", words)
    assert [t.tolist() for t in texts] == [[["a", "bb"]], [["ccc", "d", "ee", "f"]]]
    assert registry.get("padded_text", "").stats.execution_count == 1

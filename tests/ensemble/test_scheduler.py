"""Running ensembles in the core (runtime/ensemble/scheduler.py through Engine.infer): answers equal the
steps run by hand; independent steps run at once and every step goes through its model's own batcher,
batched with direct traffic; a step's failure names the step and its model and keeps its code; an
ensemble is ready only while its models are; composing models swapped under load fail no request; a
stateful step keeps the ensemble's sequence."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from runtime.admin import Admin
from runtime.examples import save_model
from runtime.examples.graph import model, tensor
from runtime.errors import Code, ExecutionError, InvalidInput, ModelLoadError, Unavailable
from runtime.monitoring.observer import MonitoredModel, NullObserver
from runtime.repository import model_config as mcfg
from runtime.types import InferRequest
from tests.engine import InProcess, OpenEngine
from tests.ensemble.models import CLS_CONFIG, PRE_CONFIG, cls, pre, save_ensemble, write_repository
from tests.sequence.models import save_accumulator

RAW = np.arange(12, dtype=np.float32).reshape(3, 4)


@pytest.fixture
async def core(open_engine: OpenEngine, tmp_path: Path) -> InProcess:
    return await open_engine(write_repository(tmp_path))


async def infer(core: InProcess, model: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    return (await core.engine.infer(InferRequest(model, "", dict(inputs)))).outputs


def stats(core: InProcess, model: str) -> tuple[int, int, dict[int, int]]:
    """(successful requests, executions, {batch size: executions}) of a model's version 1."""
    served = core.registry.get(model, "1")
    by_size = {size: durations[1].count for size, durations in served.stats.batch_stats.items()}
    return served.stats.success.count, served.stats.execution_count, by_size


async def test_answers_equal_the_steps_run_by_hand(core: InProcess) -> None:
    outputs = await infer(core, "pipeline", RAW=RAW)
    scaled = (await infer(core, "pre", RAW=RAW))["SCALED"]
    scores = (await infer(core, "cls", FEATURES=scaled))["SCORES"]
    assert list(outputs) == ["SCORES", "SCALED"]  # the ensemble's outputs, in its config's order
    np.testing.assert_array_equal(outputs["SCALED"], scaled)
    np.testing.assert_array_equal(outputs["SCORES"], scores)
    np.testing.assert_allclose(outputs["SCORES"], cls(pre(RAW)), rtol=1e-5)


async def test_each_step_counts_in_its_models_statistics(core: InProcess) -> None:
    await infer(core, "pipeline", RAW=RAW)
    assert stats(core, "pre")[:2] == (1, 1) and stats(core, "cls")[:2] == (1, 1)
    assert stats(core, "pipeline")[0] == 1  # the ensemble's own request count; it runs no batch itself
    assert core.registry.get("pipeline").stats.inference_count == 3


async def test_independent_steps_run_at_once_and_batch_together(core: InProcess) -> None:
    # `double` waits up to 2 s for a second request (max_batch_size 2): its two steps in "fanout" run
    # as one batch only if both were queued before either ran.
    outputs = await infer(core, "fanout", RAW=RAW[:1])
    np.testing.assert_array_equal(outputs["LEFT"], 2 * pre(RAW[:1]))
    np.testing.assert_array_equal(outputs["RIGHT"], 2 * pre(RAW[:1]))
    assert stats(core, "double") == (2, 1, {2: 1})


async def test_ensemble_traffic_batches_with_direct_traffic(core: InProcess) -> None:
    through, direct = await asyncio.gather(infer(core, "mixed", RAW=RAW[:1]), infer(core, "double", X=RAW[1:2]))
    np.testing.assert_array_equal(through["D"], 2 * RAW[:1])
    np.testing.assert_array_equal(direct["Y"], 2 * RAW[1:2])
    assert stats(core, "double") == (2, 1, {2: 1})  # one batch of the ensemble's row and the direct one


async def test_a_clients_mistake_in_a_step_stays_invalid_input(core: InProcess) -> None:
    # The ensemble takes any number of rows; its step's model takes at most 4.
    with pytest.raises(InvalidInput) as caught:
        await infer(core, "guarded", X=np.ones((8, 4), np.float32))
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.message.startswith("model 'guarded' version 1: step 0 (model 'failing'): model 'failing' version 1:")
    assert "max_batch_size" in caught.value.message or "batch" in caught.value.message


async def test_a_failing_step_fails_the_request_naming_the_step(core: InProcess) -> None:
    with pytest.raises(ExecutionError) as caught:
        await infer(core, "guarded", X=np.full((1, 4), 150, np.float32))  # out of the failing model's table
    assert caught.value.code is Code.INTERNAL
    assert "model 'guarded' version 1: step 0 (model 'failing')" in caught.value.message
    np.testing.assert_array_equal((await infer(core, "guarded", X=np.full((1, 4), 3, np.float32)))["Y"], np.full((1, 4), 9))
    assert core.registry.get("guarded").stats.fail.count == 1


async def test_ready_only_while_every_composing_model_is(core: InProcess) -> None:
    assert await core.engine.model_ready("pipeline")
    await core.registry.unload("cls")
    assert not await core.engine.model_ready("pipeline")
    assert await core.engine.model_ready("fanout")  # uses pre and double only
    # The repository index says the same, and why (Admin.index: the repository API's).
    admin = Admin(core.registry, core.settings)
    (row,) = [r for r in await admin.index(ready_only=False) if r.name == "pipeline"]
    assert row.state == "UNAVAILABLE" and "step model 'cls' is not" in row.reason
    assert "pipeline" not in [r.name for r in await admin.index(ready_only=True)]
    with pytest.raises(Unavailable) as caught:
        await infer(core, "pipeline", RAW=RAW)
    assert "step 1 (model 'cls')" in caught.value.message and "not ready" in caught.value.message
    await core.registry.load("cls")
    assert await core.engine.model_ready("pipeline")
    assert "pipeline" in [r.name for r in await admin.index(ready_only=True)]
    np.testing.assert_allclose((await infer(core, "pipeline", RAW=RAW))["SCORES"], cls(pre(RAW)), rtol=1e-5)


async def test_no_ensemble_uses_itself_through_a_reload(core: InProcess, tmp_path: Path) -> None:
    # outer -> pipeline; reloading pipeline to use outer would make requests recurse forever.
    save_ensemble(tmp_path, "outer", PIPELINE_LIKE.replace("NAME", "outer").replace("MODEL", "pipeline").replace("OUT", "SCORES"))
    await core.registry.load("outer")
    looped = PIPELINE_LIKE.replace("NAME", "pipeline").replace("MODEL", "outer").replace("OUT", "SCORES")
    with pytest.raises(ModelLoadError) as caught:
        await core.registry.load("pipeline", override=mcfg.parse_config_text(looped, "test"))
    assert "step 0 (model 'outer') uses the ensemble 'pipeline' itself (through 'outer')" in caught.value.message
    assert await core.engine.model_ready("outer")  # the failed reload changed nothing that serves


PIPELINE_LIKE = """\
name: "NAME"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] } ]
ensemble_scheduling {
  step [ { model_name: "MODEL" input_map { key: "RAW" value: "RAW" } output_map { key: "SCORES" value: "OUT" } } ]
}
"""


async def test_composing_models_swapped_under_load_fail_no_request(core: InProcess) -> None:
    """Clients keep the pipeline busy while both its models are reloaded, three times each; every
    request is answered, correctly. Each swap waits for answers after the previous one (events)."""
    answered = 0
    progress = asyncio.Event()
    stop = asyncio.Event()
    failures: list[BaseException] = []
    expected = cls(pre(RAW))

    async def client() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                outputs = await infer(core, "pipeline", RAW=RAW)
                np.testing.assert_allclose(outputs["SCORES"], expected, rtol=1e-5)
            except BaseException as exc:  # noqa: BLE001 - every failure is the finding
                failures.append(exc)
                return
            answered += 1
            progress.set()

    async def answers_after(count: int) -> None:
        while answered < count:
            progress.clear()
            await progress.wait()

    clients = [asyncio.ensure_future(client()) for _ in range(8)]
    try:
        replaced = []
        for generation in range(3):
            await answers_after(answered + 8)
            for name, config in (("pre", PRE_CONFIG), ("cls", CLS_CONFIG)):
                before = core.registry.get(name)
                text = config + f'parameters {{ key: "generation" value {{ string_value: "{generation}" }} }}\n'
                await core.registry.load(name, override=mcfg.parse_config_text(text, "test"))
                replaced.append(core.registry.get(name) is not before)
        await answers_after(answered + 8)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert failures == []
    assert all(replaced), replaced  # every load swapped in a new version object


class StepSeen(NullObserver):
    """Sets `seen` when a request for `model` starts (the engine queues it before it next yields)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.seen = asyncio.Event()

    def request_started(self, request: InferRequest, model: MonitoredModel) -> None:
        if request.model_name == self.model:
            self.seen.set()


async def test_a_cancelled_request_takes_its_steps_out_of_their_queues(open_engine: OpenEngine, tmp_path: Path) -> None:
    observer = StepSeen("double")
    core = await open_engine(write_repository(tmp_path), observer=observer)
    # `double` holds a lone request in its 2 s window: the step is still waiting when the client goes.
    request = asyncio.ensure_future(infer(core, "mixed", RAW=RAW[:1]))
    await observer.seen.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    # Two direct requests make one full batch; a step left behind would have taken one's place.
    await asyncio.gather(infer(core, "double", X=RAW[:1]), infer(core, "double", X=RAW[1:2]))
    assert stats(core, "double") == (2, 1, {2: 1})


TWICE_SUM = """\
name: "twice_sum"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] } ]
ensemble_scheduling {
  step [
    { model_name: "twice" input_map { key: "X" value: "RAW" } output_map { key: "Y" value: "doubled" } },
    { model_name: "acc" input_map { key: "INPUT" value: "doubled" } output_map { key: "OUTPUT" value: "SUM" } }
  ]
}
"""


async def test_a_stateful_step_keeps_its_sequence_and_a_stateless_one_ignores_it(open_engine: OpenEngine, tmp_path: Path) -> None:
    """As Triton: the ensemble's sequence_id reaches every step; `twice` has no sequence batcher and runs
    without it, the accumulator after it keeps each sequence's running sum."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "X"], ["Y"])], "twice",
        [tensor("X", TensorProto.FLOAT, ["batch", 1])], [tensor("Y", TensorProto.FLOAT, ["batch", 1])],
    )
    save_model(model(graph), tmp_path, "twice", config_pbtxt="max_batch_size: 8\n")
    save_accumulator(tmp_path, "acc")
    save_ensemble(tmp_path, "twice_sum", TWICE_SUM)
    core = await open_engine(tmp_path)

    async def step(key: int, value: float, start: bool = False, end: bool = False) -> float:
        parameters = {"sequence_id": key, "sequence_start": start, "sequence_end": end}
        request = InferRequest("twice_sum", "", {"RAW": np.array([[value]], np.float32)}, parameters=parameters)
        return float((await core.engine.infer(request)).outputs["SUM"].item())

    # Two sequences, interleaved: each gets the running sum of its own doubled values.
    assert [await step(7, 1, start=True), await step(8, 10, start=True)] == [2, 20]
    assert [await step(7, 2), await step(8, 20)] == [6, 60]
    assert [await step(7, 3, end=True), await step(8, 30, end=True)] == [12, 120]


class Parents(NullObserver):
    """The trace_parent each request arrived with, by model."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def request_started(self, request: InferRequest, model: MonitoredModel) -> None:
        self.seen[request.model_name] = request.trace_parent


async def test_the_steps_carry_the_callers_traceparent(open_engine: OpenEngine, tmp_path: Path) -> None:
    # Tracing is off here, so each step passes the caller's header on (runtime.tracing.child_traceparent;
    # a traced request's steps get a child of its span instead, tests/tracing/test_spans.py).
    observer = Parents()
    core = await open_engine(write_repository(tmp_path), observer=observer)
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await core.engine.infer(InferRequest("pipeline", "", {"RAW": RAW}, trace_parent=header))
    assert observer.seen == {"pipeline": header, "pre": header, "cls": header}

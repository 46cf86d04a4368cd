"""The sequence batcher through the in-process engine: running sums, controls, both strategies, the
sequence table's rules (start, unknown, limit, idle release), implicit state from a file, load
errors, and a hot swap with live sequences. The same behaviour over HTTP, gRPC and streaming is in
test_protocols.py."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.errors import Code, RuntimeServingError
from runtime.model import ModelState
from runtime.monitoring.collectors import RuntimeCollector
from runtime.types import InferRequest
from tests.engine import InProcess, OpenEngine
from tests.sequence.models import save_accumulator

OLDEST = "max_candidate_sequences: 16 preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 20000"
DIRECT = "max_queue_delay_microseconds: 20000 minimum_slot_utilization: 0.5"


UNBATCHED = {"acc_fp32"}  # max_batch_size 0: INPUT is [1], not [batch, 1]


def request(model: str, key: Any, value: float, start: bool = False, end: bool = False, **params: Any) -> InferRequest:
    parameters: dict[str, Any] = {"sequence_id": key, "sequence_start": start, "sequence_end": end, **params}
    data = np.array([value] if model in UNBATCHED else [[value]], np.float32)
    return InferRequest(model, "", {"INPUT": data}, parameters=parameters)


async def run_sequence(core: InProcess, model: str, key: Any, values: list[float]) -> list[dict[str, Any]]:
    results = []
    for i, value in enumerate(values):
        response = await core.engine.infer(request(model, key, value, start=i == 0, end=i == len(values) - 1))
        results.append({name: array.item() for name, array in response.outputs.items()})
    return results


async def expect(core: InProcess, req: InferRequest, code: Code, *fragments: str) -> str:
    with pytest.raises(RuntimeServingError) as caught:
        await core.engine.infer(req)
    assert caught.value.code is code, caught.value.message
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    save_accumulator(tmp_path, "acc_oldest", strategy="oldest", strategy_block=OLDEST)
    save_accumulator(tmp_path, "acc_direct", strategy="direct", strategy_block=DIRECT, flag_type="BOOL", instances=2)
    save_accumulator(tmp_path, "acc_fp32", strategy="direct", flag_type="FP32", corrid="TYPE_INT32", max_batch_size=0)
    save_accumulator(tmp_path, "acc_string", strategy="oldest", corrid="TYPE_STRING")
    return tmp_path


@pytest.mark.parametrize("model", ["acc_oldest", "acc_direct", "acc_fp32"])
async def test_interleaved_sequences_each_get_their_own_running_sums(open_engine: OpenEngine, repo: Path, model: str) -> None:
    core = await open_engine(repo)
    values = {key: [float(key * 10 + step) for step in range(6)] for key in range(1, 13)}
    results = await asyncio.gather(*(run_sequence(core, model, key, steps) for key, steps in values.items()))
    for (key, steps), got in zip(values.items(), results):
        assert [r["OUTPUT"] for r in got] == list(np.cumsum(steps)), key
        assert [r["START_OUT"] for r in got] == [1, 0, 0, 0, 0, 0]
        assert [r["END_OUT"] for r in got] == [0, 0, 0, 0, 0, 1]
        assert all(r["READY_OUT"] == 1 for r in got)
        assert all(r["CORRID_OUT"] == key for r in got)
        assert set(got[0]) == {"OUTPUT", "START_OUT", "END_OUT", "READY_OUT", "CORRID_OUT"}  # no state output
    served = core.registry.get(model)
    assert served.sequencer is not None and served.sequencer.live == 0
    assert served.sequencer.stats.starts == served.sequencer.stats.ends == 12
    assert served.stats.inference_count == 72


async def test_oldest_batches_hold_several_sequences(open_engine: OpenEngine, repo: Path) -> None:
    core = await open_engine(repo)
    await asyncio.gather(*(run_sequence(core, "acc_oldest", key, [1.0] * 4) for key in range(1, 9)))
    stats = core.registry.get("acc_oldest").stats
    assert stats.inference_count == 32
    assert stats.execution_count < stats.inference_count
    assert max(stats.batch_stats) > 1


async def test_string_ids_and_a_string_corrid(open_engine: OpenEngine, repo: Path) -> None:
    core = await open_engine(repo)
    got = await asyncio.gather(*(run_sequence(core, "acc_string", f"session-{i}", [1.0, 2.0, 3.0]) for i in range(4)))
    for i, results in enumerate(got):
        assert [r["OUTPUT"] for r in results] == [1.0, 3.0, 6.0]
        assert results[0]["CORRID_OUT"] == f"session-{i}"  # an ONNX string tensor holds str


async def test_a_request_of_one_sequence_waits_for_the_one_before(open_engine: OpenEngine, repo: Path) -> None:
    """Sent together (as a stream client may), the requests of one sequence still run in order, one at a time."""
    core = await open_engine(repo)
    first = core.engine.infer(request("acc_oldest", 7, 1.0, start=True))
    rest = [core.engine.infer(request("acc_oldest", 7, float(v), end=v == 5)) for v in range(2, 6)]
    results = await asyncio.gather(first, *rest)
    assert [r.outputs["OUTPUT"].item() for r in results] == [1.0, 3.0, 6.0, 10.0, 15.0]


async def test_bad_sequence_requests_are_invalid_argument(open_engine: OpenEngine, repo: Path) -> None:
    core = await open_engine(repo)
    invalid = Code.INVALID_ARGUMENT
    await expect(core, request("acc_oldest", 5, 1.0), invalid, "sequence 5", "must specify the START flag")
    await core.engine.infer(request("acc_oldest", 5, 1.0, start=True))
    await expect(core, request("acc_oldest", 5, 1.0, start=True), invalid, "sequence 5", "already live")
    await expect(core, request("acc_oldest", 0, 1.0, start=True), invalid, "sequence_id", "non-zero")
    await expect(core, request("acc_oldest", "", 1.0, start=True), invalid, "sequence_id")
    await expect(core, request("acc_oldest", 1.5, 1.0, start=True), invalid, "sequence_id", "float")
    await expect(core, request("acc_oldest", True, 1.0, start=True), invalid, "sequence_id", "bool")
    await expect(core, request("acc_oldest", -3, 1.0, start=True), invalid, "sequence_id")
    await expect(core, request("acc_oldest", 2**64, 1.0, start=True), invalid, "sequence_id")
    await expect(core, request("acc_oldest", 6, 1.0, start="yes"), invalid, "sequence_start", "boolean")
    plain = InferRequest("acc_oldest", "", {"INPUT": np.array([[1.0]], np.float32)})
    await expect(core, plain, invalid, "acc_oldest", "sequence_id")
    two_rows = InferRequest("acc_oldest", "", {"INPUT": np.ones((2, 1), np.float32)}, parameters={"sequence_id": 9, "sequence_start": True})
    await expect(core, two_rows, invalid, "one row per request")
    control = request("acc_oldest", 10, 1.0, start=True)
    control.inputs["START"] = np.ones((1, 1), np.int32)
    await expect(core, control, invalid, "START")
    await expect(core, request("acc_fp32", "text", 1.0, start=True), invalid, "string", "CORRID")
    # A failed request leaves the sequence as it was: sequence 5 continues from its first value.
    response = await core.engine.infer(request("acc_oldest", 5, 2.0, end=True))
    assert response.outputs["OUTPUT"].item() == 3.0


async def test_a_sequence_request_to_a_model_without_a_sequence_batcher(open_engine: OpenEngine, tmp_path: Path) -> None:
    from runtime.examples import save_model
    from tests.models import build_identity

    save_model(build_identity("FP32"), tmp_path, "plain")
    core = await open_engine(tmp_path)
    req = InferRequest("plain", "", {"INPUT0": np.ones((1, 2), np.float32)}, parameters={"sequence_id": 3, "sequence_start": True})
    await expect(core, req, Code.INVALID_ARGUMENT, "plain", "no sequence_batching")


async def test_idle_sequences_are_released(open_engine: OpenEngine, tmp_path: Path) -> None:
    save_accumulator(tmp_path, "acc_idle", strategy="oldest", idle_us=50_000)
    core = await open_engine(tmp_path)
    await core.engine.infer(request("acc_idle", 1, 1.0, start=True))
    sequencer = core.registry.get("acc_idle").sequencer
    assert sequencer is not None and sequencer.live == 1
    for _ in range(100):  # released 50 ms after its last request; poll up to 2 s
        if sequencer.live == 0:
            break
        await asyncio.sleep(0.02)
    assert sequencer.live == 0 and sequencer.stats.idle_releases == 1
    await expect(core, request("acc_idle", 1, 1.0), Code.INVALID_ARGUMENT, "not live", "released after 50000 us idle")
    again = await core.engine.infer(request("acc_idle", 1, 4.0, start=True))  # the id may start afresh
    assert again.outputs["OUTPUT"].item() == 4.0


async def test_live_sequences_are_bounded(open_engine: OpenEngine, repo: Path) -> None:
    core = await open_engine(repo, max_sequences=3)
    for key in (1, 2, 3):
        await core.engine.infer(request("acc_oldest", key, 1.0, start=True))
    message = await expect(core, request("acc_oldest", 4, 1.0, start=True), Code.RESOURCE_EXHAUSTED, "--max-sequences 3")
    assert "3 sequences are live" in message
    await core.engine.infer(request("acc_oldest", 1, 1.0, end=True))
    await core.engine.infer(request("acc_oldest", 4, 1.0, start=True))  # a place is free again


async def test_direct_backlog_waits_for_a_free_slot(open_engine: OpenEngine, tmp_path: Path) -> None:
    """One instance, two slots: a third sequence waits in the backlog until a slot is released."""
    save_accumulator(tmp_path, "acc_small", strategy="direct", max_batch_size=2)
    core = await open_engine(tmp_path)
    await core.engine.infer(request("acc_small", 1, 1.0, start=True))
    await core.engine.infer(request("acc_small", 2, 1.0, start=True))
    waiting = asyncio.ensure_future(core.engine.infer(request("acc_small", 3, 5.0, start=True)))
    sequencer = core.registry.get("acc_small").sequencer
    assert sequencer is not None
    await asyncio.sleep(0.05)
    assert not waiting.done() and sequencer.backlog == 1
    # /metrics shows the waiting request (in the sequence batcher, not in the idle batch queue).
    families = {family.name: family for family in RuntimeCollector(core.registry).collect()}
    depth = [s.value for s in families["model_runtime_queue_depth"].samples if s.labels["model"] == "acc_small"]
    assert depth == [1]
    await core.engine.infer(request("acc_small", 1, 1.0, end=True))
    assert (await waiting).outputs["OUTPUT"].item() == 5.0


async def test_initial_state_from_a_file_inside_the_model_directory(open_engine: OpenEngine, tmp_path: Path) -> None:
    save_accumulator(tmp_path, "acc_file", initial_state='data_file: "hundred.bin"')
    (tmp_path / "acc_file" / "initial_state").mkdir()
    np.array([100.0], np.float32).tofile(tmp_path / "acc_file" / "initial_state" / "hundred.bin")
    save_accumulator(tmp_path, "acc_escape", initial_state='data_file: "../../../etc/passwd"')
    core = await open_engine(tmp_path)
    results = await run_sequence(core, "acc_file", 1, [1.0, 2.0])
    assert [r["OUTPUT"] for r in results] == [101.0, 103.0]
    errors = core.registry.model_errors()
    record = core.registry.record("acc_escape")
    assert "must be a file name inside the model's initial_state directory" in (record.reason or errors.get("acc_escape", "")), record


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        ('control_input [ { name: "NOPE" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] } ] } ]',
         "'NOPE' is not an input of the ONNX model"),
        ('control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1] } ] } ]',
         "'START' is TYPE_INT32 in the ONNX model"),
        ('control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [1] } ] } ]',
         "two values"),
        ('control_input [ { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]',
         "CONTROL_SEQUENCE_CORRID needs data_type"),
        ('state [ { input_name: "STATE_IN" output_name: "NOPE" data_type: TYPE_FP32 dims: [1] } ]',
         "'NOPE' is not an output of the ONNX model"),
        ('state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [1] } ]',
         "state's data_type is TYPE_INT32"),
        ("max_sequence_idle_microseconds: 99999999999", "max_sequence_idle_microseconds is 99999999999"),
        ("direct { minimum_slot_utilization: 1.5 }", "minimum_slot_utilization is 1.5"),
        ("oldest { preferred_batch_size: [ 64 ] }", "preferred_batch_size[0] is 64"),
        ("iterative_sequence: true", "iterative_sequence is not supported"),
    ],
)
async def test_config_errors_name_the_field(open_engine: OpenEngine, tmp_path: Path, block: str, fragment: str) -> None:
    from runtime.examples import save_model
    from tests.sequence.models import build_accumulator

    save_model(build_accumulator(), tmp_path, "acc_bad", config_pbtxt=f"max_batch_size: 8\nsequence_batching {{ {block} }}\n")
    core = await open_engine(tmp_path)
    reason = core.registry.record("acc_bad").reason or core.registry.model_errors().get("acc_bad", "")
    assert fragment in reason and "model 'acc_bad'" in reason, reason


async def test_swap_with_live_sequences(open_engine: OpenEngine, tmp_path: Path) -> None:
    """Live sequences finish on the version they started on; new ones start on the new version. The load
    returns at once; the old version is freed once its last sequence has ended."""
    save_accumulator(tmp_path, "acc_swap", strategy="oldest")
    core = await open_engine(tmp_path)
    for key in (1, 2):
        response = await core.engine.infer(request("acc_swap", key, 1.0, start=True))
        assert response.model_version == "1"
    old = core.registry.get("acc_swap", "1")
    save_accumulator(tmp_path, "acc_swap", version=2, strategy="oldest")
    assert await asyncio.wait_for(core.registry.load("acc_swap"), 10) == [2]
    assert core.registry.ready_versions("acc_swap") == [2]
    fresh = await core.engine.infer(request("acc_swap", 3, 10.0, start=True))
    assert fresh.model_version == "2"
    again = await expect(core, request("acc_swap", 1, 1.0, start=True), Code.INVALID_ARGUMENT, "already live")
    assert "sequence 1" in again
    middle = await core.engine.infer(request("acc_swap", 1, 2.0))
    assert (middle.model_version, middle.outputs["OUTPUT"].item()) == ("1", 3.0)
    assert old.state is ModelState.UNLOADING  # still holding sequences 1 and 2
    for key in (1, 2):
        last = await core.engine.infer(request("acc_swap", key, 5.0, end=True))
        assert last.model_version == "1"
    for _ in range(500):  # its close runs in the background once the last sequence ended; up to 5 s
        if old.state is ModelState.UNAVAILABLE:
            break
        await asyncio.sleep(0.01)
    assert old.state is ModelState.UNAVAILABLE and core.registry.record("acc_swap", "1").served is None
    ended = await core.engine.infer(request("acc_swap", 3, 1.0, end=True))
    assert (ended.model_version, ended.outputs["OUTPUT"].item()) == ("2", 11.0)


async def test_shutdown_releases_live_sequences(open_engine: OpenEngine, tmp_path: Path) -> None:
    """A server that stops does not wait out max_sequence_idle for sequences no request can continue."""
    save_accumulator(tmp_path, "acc_stop", strategy="direct", idle_us=3_600_000_000)
    core = await open_engine(tmp_path)
    await core.engine.infer(request("acc_stop", 1, 1.0, start=True))
    await asyncio.wait_for(core.registry.close(), 5)
    assert core.registry.record("acc_stop").state is ModelState.UNAVAILABLE


async def test_direct_waits_for_its_slot_utilization(open_engine: OpenEngine, tmp_path: Path) -> None:
    """minimum_slot_utilization 1.0 with a 10 s window: three ready slots of four wait; the fourth
    completes the batch, and the four run as one execution."""
    save_accumulator(
        tmp_path, "acc_util", strategy="direct", max_batch_size=4,
        strategy_block="max_queue_delay_microseconds: 10000000 minimum_slot_utilization: 1.0",
    )
    core = await open_engine(tmp_path)
    first = [asyncio.ensure_future(core.engine.infer(request("acc_util", key, float(key), start=True))) for key in (1, 2, 3)]
    for _ in range(20):  # let the three reach their slots
        await asyncio.sleep(0)
    assert not any(task.done() for task in first)
    last = await core.engine.infer(request("acc_util", 4, 4.0, start=True))
    results = [await asyncio.wait_for(task, 5) for task in first]
    assert [r.outputs["OUTPUT"].item() for r in [*results, last]] == [1.0, 2.0, 3.0, 4.0]
    stats = core.registry.get("acc_util").stats
    assert (stats.execution_count, stats.inference_count) == (1, 4)


async def test_oldest_closes_a_batch_at_a_preferred_size(open_engine: OpenEngine, tmp_path: Path) -> None:
    """oldest with preferred_batch_size 4 and a 10 s window: four ready sequences run at once, as one batch."""
    save_accumulator(
        tmp_path, "acc_preferred", strategy="oldest",
        strategy_block="max_candidate_sequences: 8 preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 10000000",
    )
    core = await open_engine(tmp_path)
    results = await asyncio.wait_for(
        asyncio.gather(*(core.engine.infer(request("acc_preferred", key, float(key), start=True)) for key in range(1, 5))), 5
    )
    assert [r.outputs["OUTPUT"].item() for r in results] == [1.0, 2.0, 3.0, 4.0]
    stats = core.registry.get("acc_preferred").stats
    assert (stats.execution_count, stats.inference_count) == (1, 4)

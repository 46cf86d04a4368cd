"""Every numeric field of a model config has a range (runtime/repository/limits.py), refused at load.

Hostile values go through the admin API's `config` override of a running server (and config.pbtxt for
a few): each must be answered 400 naming the field, the value and the range, leave the repository
byte for byte as it was, and leave the serving model answering. The values at the edges load.
"""
from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from runtime.config import MAX_BATCH_SIZE, MAX_GPU_ID, MAX_QUEUE_SIZE, MAX_SEQUENCES, available_cores
from runtime.errors import ModelLoadError
from runtime.examples import save_model
from runtime.repository import limits
from runtime.repository.model_config import config_from_json
from tests.repository.snapshot import tree
from tests.serving import RunningServer, running_server

TOKEN = "limits-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE: dict[str, Any] = {"max_batch_size": 8}
CORES = available_cores()
INSTANCES = limits.max_instances()


def build_flex(factor: float) -> onnx.ModelProto:
    """y = factor * x for x of shape [batch, n]: any width, so dims edges can load."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT0", "factor"], ["OUTPUT0"])],
        "flex",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor("factor", TensorProto.FLOAT, [], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def warmup(**fields: Any) -> dict[str, Any]:
    sample = {"data_type": "TYPE_FP32", "dims": fields.pop("dims", [4]), "zero_data": True}
    return {"model_warmup": [{"name": "w", "inputs": {"INPUT0": sample}, **fields}]}


ENSEMBLE_STEP = {"model_name": "flex", "input_map": {"INPUT0": "INPUT0"}, "output_map": {"OUTPUT0": "OUTPUT0"}}


SEQUENCE_STATE = {"input_name": "STATE_IN", "output_name": "STATE_OUT", "data_type": "TYPE_FP32", "dims": [1]}


def thread_parameter(key: str) -> Callable[[int], dict[str, Any]]:
    return lambda v: {"parameters": {key: {"string_value": str(v)}}}


@dataclass(frozen=True)
class Case:
    """One limit: how to set the field to v, the label the error names, hostile and edge values."""

    build: Callable[[int], dict[str, Any]]
    label: str
    outside: tuple[int, ...]  # each refused (a uint field has nothing below 0 to send)
    edges: tuple[int, ...]  # each accepted
    loads: bool = True  # the edges load for real (False: the edge model cannot, checked in-process)
    expect: str = ""  # the range as the message writes it, when narrowed by another field


CASES: dict[str, Case] = {
    "max_batch_size": Case(lambda v: {"max_batch_size": v}, "max_batch_size", (-1, MAX_BATCH_SIZE + 1), (1, MAX_BATCH_SIZE)),
    "instance_group.count": Case(
        lambda v: {"instance_group": [{"count": v, "kind": "KIND_CPU"}]}, "instance_group[0].count",
        (-1, INSTANCES + 1, 100_000), (0, INSTANCES),
    ),
    "instance_group.gpus": Case(
        lambda v: {"instance_group": [{"count": 1, "kind": "KIND_CPU", "gpus": [v]}]}, "instance_group[0].gpus[0]",
        (-1, MAX_GPU_ID + 1), (0, MAX_GPU_ID),
    ),
    "parameters.intra_op_thread_count": Case(
        thread_parameter("intra_op_thread_count"), "parameters.intra_op_thread_count", (-1, CORES + 1, 100_000), (0, CORES)
    ),
    "parameters.inter_op_thread_count": Case(
        thread_parameter("inter_op_thread_count"), "parameters.inter_op_thread_count", (-1, CORES + 1), (0, CORES)
    ),
    "dims": Case(
        lambda v: {"input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [v]}]}, "input 'INPUT0' dims[0]",
        (0, -2, limits.MAX_DIM + 1), (-1, 1, limits.MAX_DIM),
    ),
    "dims.count": Case(
        lambda v: {"input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [1] * v}]}, "input 'INPUT0' dims count",
        (limits.MAX_RANK + 1,), (1, limits.MAX_RANK), loads=False,
    ),
    "version_policy.latest.num_versions": Case(
        lambda v: {"version_policy": {"latest": {"num_versions": v}}}, "version_policy.latest.num_versions",
        (limits.MAX_VERSIONS + 1, 2**32 - 1), (0, limits.MAX_VERSIONS),
    ),
    "version_policy.specific.versions": Case(
        lambda v: {"version_policy": {"specific": {"versions": [v]}}}, "version_policy.specific.versions[0]",
        (0, -5), (1, 2**63 - 1), loads=False,
    ),
    "version_policy.specific.versions.count": Case(
        lambda v: {"version_policy": {"specific": {"versions": [1] * v}}}, "version_policy.specific.versions count",
        (0, limits.MAX_VERSIONS + 1), (1, limits.MAX_VERSIONS),
    ),
    "optimization.graph.level": Case(
        lambda v: {"optimization": {"graph": {"level": v}}}, "optimization.graph.level", (-2, 2, 99), (-1, 0, 1)
    ),
    "dynamic_batching.preferred_batch_size": Case(
        lambda v: {"dynamic_batching": {"preferred_batch_size": [v]}}, "dynamic_batching.preferred_batch_size[0]",
        (0, -3, 9), (1, 8), expect="between 1 and 8",
    ),
    "dynamic_batching.max_queue_delay_microseconds": Case(
        lambda v: {"dynamic_batching": {"max_queue_delay_microseconds": v}}, "dynamic_batching.max_queue_delay_microseconds",
        (limits.MAX_DELAY_US + 1, 2**64 - 1), (0, limits.MAX_DELAY_US),
    ),
    "dynamic_batching.priority_levels": Case(
        lambda v: {"dynamic_batching": {"priority_levels": v}}, "dynamic_batching.priority_levels",
        (limits.MAX_PRIORITY_LEVELS + 1, 2**64 - 1), (0, limits.MAX_PRIORITY_LEVELS),
    ),
    "dynamic_batching.default_priority_level": Case(
        lambda v: {"dynamic_batching": {"priority_levels": 2, "default_priority_level": v}},
        "dynamic_batching.default_priority_level", (3, 2**64 - 1), (0, 2), expect="between 0 and 2",
    ),
    "dynamic_batching.priority_queue_policy.key": Case(
        lambda v: {"dynamic_batching": {"priority_levels": 2, "priority_queue_policy": {str(v): {"max_queue_size": 4}}}},
        "dynamic_batching.priority_queue_policy key", (0, 3), (1, 2), expect="between 1 and 2",
    ),
    "queue_policy.default_timeout_microseconds": Case(
        lambda v: {"dynamic_batching": {"default_queue_policy": {"default_timeout_microseconds": v}}},
        "dynamic_batching.default_queue_policy.default_timeout_microseconds",
        (limits.MAX_TIMEOUT_US + 1, 2**64 - 1), (0, limits.MAX_TIMEOUT_US),
    ),
    "queue_policy.max_queue_size": Case(
        lambda v: {"dynamic_batching": {"priority_levels": 2, "priority_queue_policy": {"2": {"max_queue_size": v}}}},
        "dynamic_batching.priority_queue_policy[2].max_queue_size", (MAX_QUEUE_SIZE + 1, 2**32 - 1), (0, MAX_QUEUE_SIZE),
    ),
    "model_warmup.batch_size": Case(
        lambda v: warmup(batch_size=v), "model_warmup[0].batch_size", (9, 2**32 - 1), (0, 8), expect="between 0 and 8"
    ),
    "model_warmup.count": Case(
        lambda v: warmup(count=v), "model_warmup[0].count", (limits.MAX_WARMUP_COUNT + 1, 2**32 - 1),
        (0, limits.MAX_WARMUP_COUNT),
    ),
    "model_warmup.inputs.dims": Case(
        lambda v: warmup(dims=[v]), "model_warmup[0].inputs['INPUT0'].dims[0]", (0, -1, limits.MAX_DIM + 1), (1, 4),
    ),
    "model_warmup.inputs.elements": Case(
        lambda v: warmup(batch_size=1, dims=[v]), "model_warmup[0].inputs['INPUT0'] elements",
        (limits.MAX_WARMUP_ELEMENTS + 1,), (1, limits.MAX_WARMUP_ELEMENTS), loads=False,
    ),
    # Sequence batching: flex is no sequence model, so the edges are checked in-process.
    "sequence_batching.max_sequence_idle_microseconds": Case(
        lambda v: {"sequence_batching": {"max_sequence_idle_microseconds": v}},
        "sequence_batching.max_sequence_idle_microseconds", (limits.MAX_TIMEOUT_US + 1, 2**64 - 1),
        (0, limits.MAX_TIMEOUT_US), loads=False,
    ),
    "sequence_batching.max_queue_delay_microseconds": Case(
        lambda v: {"sequence_batching": {"oldest": {"max_queue_delay_microseconds": v}}},
        "sequence_batching.oldest.max_queue_delay_microseconds", (limits.MAX_DELAY_US + 1, 2**64 - 1),
        (0, limits.MAX_DELAY_US), loads=False,
    ),
    "sequence_batching.direct.minimum_slot_utilization": Case(
        lambda v: {"sequence_batching": {"direct": {"minimum_slot_utilization": v}}},
        "sequence_batching.direct.minimum_slot_utilization", (-1, 2), (0, 1), loads=False,
    ),
    "sequence_batching.oldest.max_candidate_sequences": Case(
        lambda v: {"sequence_batching": {"oldest": {"max_candidate_sequences": v}}},
        "sequence_batching.oldest.max_candidate_sequences", (-1, MAX_SEQUENCES + 1), (0, MAX_SEQUENCES), loads=False,
    ),
    "sequence_batching.oldest.preferred_batch_size": Case(
        lambda v: {"sequence_batching": {"oldest": {"preferred_batch_size": [v]}}},
        "sequence_batching.oldest.preferred_batch_size[0]", (0, 9), (1, 8), loads=False, expect="between 1 and 8",
    ),
    "sequence_batching.state.count": Case(
        lambda v: {"sequence_batching": {"state": [SEQUENCE_STATE] * v}}, "sequence_batching.state count",
        (limits.MAX_STATES + 1,), (0, limits.MAX_STATES), loads=False,
    ),
    "sequence_batching.state.initial_state.elements": Case(
        lambda v: {"sequence_batching": {"state": [{
            **SEQUENCE_STATE, "dims": [-1], "initial_state": [{"data_type": "TYPE_FP32", "dims": [v], "zero_data": True}],
        }]}},
        "sequence_batching.state[0].initial_state[0] elements", (limits.MAX_STATE_ELEMENTS + 1,),
        (1, limits.MAX_STATE_ELEMENTS), loads=False,
    ),
    # The edges belong to ensembles (flex is none), so they are checked in-process.
    "ensemble_scheduling.step.count": Case(
        lambda v: {"ensemble_scheduling": {"step": [ENSEMBLE_STEP] * v}}, "ensemble_scheduling step count",
        (0, limits.MAX_ENSEMBLE_STEPS + 1), (1, limits.MAX_ENSEMBLE_STEPS), loads=False,
    ),
    "ensemble_scheduling.step.model_version": Case(
        lambda v: {"ensemble_scheduling": {"step": [{**ENSEMBLE_STEP, "model_version": v}]}},
        "ensemble_scheduling.step[0].model_version", (-2, -5), (-1, 0, 1, 2**63 - 1), loads=False,
    ),
}


def config_of(case: Case, value: int) -> dict[str, Any]:
    return {**BASE, **case.build(value)}


def load(server: RunningServer, config: dict[str, Any] | str) -> tuple[int, str]:
    body = {"parameters": {"config": config if isinstance(config, str) else json.dumps(config)}}
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        connection.request("POST", "/v2/repository/models/flex/load", body=json.dumps(body), headers=AUTH)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    message = json.loads(raw).get("error", "") if raw else ""
    return response.status, message


def answer(server: RunningServer) -> float:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        return float(client.infer("flex", [tensor]).as_numpy("OUTPUT0")[0, 0])
    finally:
        client.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits") / "repo"
    save_model(build_flex(2.0), root, "flex", 1, config_pbtxt="max_batch_size: 8\n")
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(
        repo, tmp_path_factory.mktemp("srv"),
        ["--model-control-mode", "explicit", "--load-model", "flex", "--admin-token", TOKEN],
    ) as running:
        yield running


@pytest.fixture
def baseline(server: RunningServer) -> Iterator[RunningServer]:
    """The model serving its plain config before and after the test, whatever the test loaded."""
    assert load(server, BASE)[0] == 200
    yield server
    status, message = load(server, BASE)
    assert status == 200, message


def test_every_limit_has_a_case() -> None:
    assert set(CASES) == set(limits.LIMITS)


OUTSIDE = [pytest.param(key, v, id=f"{key}={v}") for key, case in CASES.items() for v in case.outside]
EDGES = [pytest.param(key, v, id=f"{key}={v}") for key, case in CASES.items() for v in case.edges]


@pytest.mark.parametrize(("key", "value"), OUTSIDE)
def test_out_of_range_is_refused_naming_field_value_and_range(
    baseline: RunningServer, repo: Path, key: str, value: int
) -> None:
    case = CASES[key]
    before = tree(repo)
    status, message = load(baseline, config_of(case, value))
    assert status == 400, message
    limit = limits.LIMITS[key]
    assert f"model 'flex': {case.label} is {value}; it must be {case.expect or limit.describe()}" in message
    assert tree(repo) == before
    assert answer(baseline) == 2.0


@pytest.mark.parametrize(("key", "value"), EDGES)
def test_values_at_the_edges_are_accepted(baseline: RunningServer, key: str, value: int) -> None:
    case = CASES[key]
    config = config_from_json(config_of(case, value), "edge")
    try:
        limits.check(config, "model 'flex'")
    except ModelLoadError as exc:
        # another field's limit may bind first (a warm-up of 2**31-1 elements); never this one
        assert f"{case.label} is " not in exc.message
    if case.loads:
        status, message = load(baseline, config_of(case, value))
        assert status == 200, message


def test_instances_are_capped_over_all_groups(baseline: RunningServer, repo: Path) -> None:
    before = tree(repo)
    half = INSTANCES // 2 + 1
    groups = [{"count": half, "kind": "KIND_CPU"}, {"count": half, "kind": "KIND_CPU"}]
    status, message = load(baseline, {**BASE, "instance_group": groups})
    assert status == 400
    assert f"instance_group count (all groups together) is {2 * half}; it must be between 0 and {INSTANCES}" in message
    assert tree(repo) == before and answer(baseline) == 2.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"instance_group": [{"count": 1, "kind": 7}]}, "instance_group[0].kind is 7; it must be one of KIND_AUTO"),
        ({"input": [{"name": "INPUT0", "data_type": 99}]}, "input[0].data_type is 99; it must be one of TYPE_INVALID"),
        (
            {"dynamic_batching": {"default_queue_policy": {"timeout_action": 5}}},
            "dynamic_batching.default_queue_policy.timeout_action is 5; it must be one of REJECT, DELAY",
        ),
        ({"parameters": {"intra_op_thread_count": {"string_value": "many"}}}, "parameters.intra_op_thread_count must be an integer"),
    ],
    ids=["kind", "data_type", "timeout_action", "thread-text"],
)
def test_numbers_no_enumeration_names_are_refused(
    baseline: RunningServer, repo: Path, config: dict[str, Any], message: str
) -> None:
    before = tree(repo)
    status, text = load(baseline, {**BASE, **config})
    assert status == 400 and message in text, text
    assert tree(repo) == before and answer(baseline) == 2.0


CONFIG_FILE_CASES = [
    ("instance_group [ { count: 100000 kind: KIND_CPU } ]", f"instance_group[0].count is 100000; it must be between 0 and {INSTANCES}"),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "100000" } }', "parameters.intra_op_thread_count is 100000"),
    ("dynamic_batching { max_queue_delay_microseconds: 18446744073709551615 }", "dynamic_batching.max_queue_delay_microseconds is 18446744073709551615; it must be between 0 and 10000000"),
    ("optimization { graph { level: 99 } }", "optimization.graph.level is 99; it must be one of -1, 0, 1"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_FILE_CASES, ids=["count", "intra", "delay", "level"])
def test_config_pbtxt_values_are_checked_too(
    server: RunningServer, repo: Path, text: str, message: str
) -> None:
    """The issue's own values, from a model's config.pbtxt: a load fails with 400 and the file stays as it is."""
    model = repo / "filecfg"
    if not model.exists():
        save_model(build_flex(3.0), repo, "filecfg", 1)
    (model / "config.pbtxt").write_text("max_batch_size: 8\n" + text + "\n")
    before = tree(repo)
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        connection.request("POST", "/v2/repository/models/filecfg/load", body="{}", headers=AUTH)
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 400
    assert body["error"].startswith("model 'filecfg': ") and message in body["error"]
    assert tree(repo) == before
    assert answer(server) == 2.0


def test_the_table_describes_its_ranges() -> None:
    """README's limits table is written from this table: every row has a reason and a sane span."""
    for key, limit in limits.LIMITS.items():
        assert limit.why and limit.low <= limit.high, key
    assert limits.max_instances() <= 64

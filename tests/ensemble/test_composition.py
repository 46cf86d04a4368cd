"""Ensemble load errors name the step (runtime/ensemble/graph.py and composition.py, through the registry):
an unknown model or version, an unmapped or doubly-produced tensor, a cycle, a datatype or shape that
differs between steps, and the other wirings that cannot run. Each bad ensemble sits beside good ones
in one repository, loaded once; its load fails and the index says why."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime.model import ModelState
from tests.engine import in_process_engine
from tests.ensemble.models import save_ensemble, write_repository


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += " " + " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version} {maps} }}'


def ensemble(
    name: str, steps: list[str], raw: str = "TYPE_FP32", out: str = "OUT", out_dims: str = "4", other: str = ""
) -> str:
    """An ensemble RAW -> ... -> OUT (and `other`, of those dims, when given)."""
    more = f', {{ name: "other" data_type: TYPE_FP32 dims: [ {other} ] }}' if other else ""
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        f'input [ {{ name: "RAW" data_type: {raw} dims: [ 4 ] }} ]\n'
        f'output [ {{ name: "{out}" data_type: TYPE_FP32 dims: [ {out_dims} ] }}{more} ]\n'
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n"
    )


PRE = step("pre", {"RAW": "RAW"}, {"SCALED": "OUT"})
# name -> (config, fragments the load error must hold)
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "unknown_model": (
        ensemble("unknown_model", [PRE, step("nope", {"X": "OUT"}, {"Y": "other"})], other="4"),
        ("step 1 (model 'nope')", "not loaded"),
    ),
    "unknown_version": (
        ensemble("unknown_version", [step("pre", {"RAW": "RAW"}, {"SCALED": "OUT"}, version=7)]),
        ("step 0 (model 'pre')", "no version 7 serving"),
    ),
    "unmapped_tensor": (
        ensemble("unmapped_tensor", [PRE, step("double", {"X": "missing"}, {"Y": "other"})]),
        ("step 1 (model 'double')", "'missing'", "no step produces"),
    ),
    "doubly_produced": (
        ensemble("doubly_produced", [PRE, step("double", {"X": "RAW"}, {"Y": "OUT"})]),
        ("step 1 (model 'double')", "'OUT'", "step 0 (model 'pre') also writes"),
    ),
    "two_outputs_one_tensor": (
        ensemble("two_outputs_one_tensor", [step("pre", {"RAW": "RAW"}, {"SCALED": "OUT"}), step("cls", {"FEATURES": "OUT"}, {"SCORES": "both", "LOGITS": "both"})]),
        ("step 1 (model 'cls')", "which another of its outputs also writes"),
    ),
    "reads_itself": (
        ensemble("reads_itself", [PRE, step("double", {"X": "loop"}, {"Y": "loop"})]),
        ("step 1 (model 'double') reads a tensor it writes itself: a cycle",),
    ),
    "writes_an_input": (
        ensemble("writes_an_input", [PRE, step("double", {"X": "OUT"}, {"Y": "RAW"})]),
        ("step 1 (model 'double')", "'RAW'", "is an ensemble input"),
    ),
    "cycle": (
        ensemble(
            "cycle",
            [PRE, step("double", {"X": "b"}, {"Y": "a"}), step("double", {"X": "a"}, {"Y": "b"})],
        ),
        ("cycle", "step 1 (model 'double')", "step 2 (model 'double')"),
    ),
    "datatype_mismatch": (
        ensemble("datatype_mismatch", [PRE], raw="TYPE_INT32"),
        ("step 0 (model 'pre')", "input 'RAW' takes FP32", "INT32", "datatypes"),
    ),
    "shape_mismatch": (
        ensemble("shape_mismatch", [step("cls", {"FEATURES": "RAW"}, {"SCORES": "s"}), step("pre", {"RAW": "s"}, {"SCALED": "OUT"})]),
        ("step 1 (model 'pre')", "input 'RAW' takes shape [-1, 4]", "output 'SCORES' of step 0 (model 'cls')", "[-1, 3]"),
    ),
    "output_shape_mismatch": (
        ensemble("output_shape_mismatch", [PRE], out_dims="5"),
        ("ensemble output 'OUT' takes shape [-1, 5]", "step 0 (model 'pre')"),
    ),
    "output_not_produced": (
        ensemble("output_not_produced", [step("pre", {"RAW": "RAW"}, {"SCALED": "elsewhere"})]),
        ("ensemble output 'OUT' is produced by no step",),
    ),
    "unknown_input": (
        ensemble("unknown_input", [step("pre", {"RAW": "RAW", "NOPE": "RAW"}, {"SCALED": "OUT"})]),
        ("step 0 (model 'pre')", "input_map names input 'NOPE'", "model 'pre' version 1 does not have"),
    ),
    "unknown_output": (
        ensemble("unknown_output", [step("pre", {"RAW": "RAW"}, {"NOPE": "OUT"})]),
        ("step 0 (model 'pre')", "output_map names output 'NOPE'"),
    ),
    "input_left_out": (
        ensemble("input_left_out", [PRE, step("cls", {}, {"SCORES": "other"})], other="3"),
        ("step 1 (model 'cls')", "leaves out 'FEATURES'", "model 'cls' version 1 requires"),
    ),
    "uses_itself": (
        ensemble("uses_itself", [PRE, step("uses_itself", {"RAW": "RAW"}, {"OUT": "other"})], other="4"),
        ("step 1 (model 'uses_itself')", "itself", "cycle"),
    ),
    "batch_too_large": (
        ensemble("batch_too_large", [step("double", {"X": "RAW"}, {"Y": "OUT"})]),
        ("step 0 (model 'double')", "max_batch_size 8 is larger than model 'double' version 1's 2"),
    ),
    "version_out_of_range": (
        ensemble("version_out_of_range", [step("pre", {"RAW": "RAW"}, {"SCALED": "OUT"}, version=-5)]),
        ("ensemble_scheduling.step[0].model_version is -5",),
    ),
    "input_read_by_no_step": (
        ensemble("input_read_by_no_step", [step("pre", {"RAW": "OUT"}, {"SCALED": "OUT"})]),
        ("ensemble input 'RAW' is read by no step",),
    ),
    "output_read_by_no_one": (
        ensemble("output_read_by_no_one", [PRE, step("double", {"X": "OUT"}, {"Y": "dangling"})]),
        ("step 1 (model 'double'): output 'Y' writes ensemble tensor 'dangling', which no step reads",),
    ),
    "optimization": (
        ensemble("optimization", [PRE]) + "optimization { graph { level: 1 } }\n",
        ("an ensemble runs no session of its own; remove optimization",),
    ),
    "no_steps": (
        'name: "no_steps"\nplatform: "ensemble"\ninput [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]\n',
        ("at least one step",),
    ),
    "no_tensors": (
        f'name: "no_tensors"\nplatform: "ensemble"\nensemble_scheduling {{ step [ {PRE} ] }}\n',
        ("must list every input and output",),
    ),
    "wrong_platform": (
        f'name: "wrong_platform"\nplatform: "onnxruntime_onnx"\nensemble_scheduling {{ step [ {PRE} ] }}\n',
        ("ensemble_scheduling needs platform 'ensemble'",),
    ),
}


@pytest.fixture(scope="module")
def reasons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ModelState, str]]:
    """Every model's state and load error, from one load of the whole repository."""
    root = write_repository(tmp_path_factory.mktemp("ensembles"))
    for name, (config, _) in CASES.items():
        save_ensemble(root, name, config)

    async def load(repo: Path) -> dict[str, tuple[ModelState, str]]:
        async with in_process_engine(repo) as core:
            found = {name: (ModelState.UNAVAILABLE, error) for name, error in core.registry.model_errors().items()}
            return found | {r.name: (r.state, r.reason) for r in core.registry.records()}

    return asyncio.run(load(root))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_ensemble_fails_to_load_naming_the_step(reasons: dict[str, tuple[ModelState, str]], name: str) -> None:
    state, reason = reasons[name]
    assert state is ModelState.UNAVAILABLE, f"{name} loaded: {reason}"
    for fragment in CASES[name][1]:
        assert fragment in reason, f"{fragment!r} not in {reason!r}"


def test_good_ensembles_load_after_the_models_they_name(reasons: dict[str, tuple[ModelState, str]]) -> None:
    # "fanout" and "pipeline" sort before "pre", which they use.
    for name in ("pipeline", "fanout", "mixed", "guarded"):
        assert reasons[name] == (ModelState.READY, ""), reasons[name]

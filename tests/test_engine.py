"""runtime/engine.py through the in-process engine (no transport): inference, validation, health, metadata."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.errors import InvalidInput, ModelNotFound
from runtime.examples import build_mlp, build_simple, save_model
from runtime.examples.configs import SIMPLE_CONFIG
from runtime.types import InferRequest, RequestedOutput
from tests.engine import OpenEngine



@pytest.fixture
def repo(tmp_path: Path) -> Path:
    save_model(build_simple(), tmp_path, "simple", config_pbtxt=SIMPLE_CONFIG)
    save_model(build_mlp(), tmp_path, "mlp", version=1, config_pbtxt="version_policy { all {} }\n")
    save_model(build_mlp(seed=1), tmp_path, "mlp", version=2)
    return tmp_path


def simple_inputs(rows: int = 2, dtype: type = np.int32) -> dict[str, np.ndarray]:
    a = np.arange(rows * 16, dtype=dtype).reshape(rows, 16)
    return {"INPUT0": a, "INPUT1": np.ones_like(a)}


async def test_infer_returns_every_output_in_the_models_order(repo: Path, open_engine: OpenEngine) -> None:
    engine = (await open_engine(repo, execution_provider="cpu")).engine
    inputs = simple_inputs()
    response = await engine.infer(InferRequest("simple", "", inputs, id="req-1"))
    assert (response.model_name, response.model_version, response.id) == ("simple", "1", "req-1")
    assert list(response.outputs) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(response.outputs["OUTPUT0"], inputs["INPUT0"] + 1)
    np.testing.assert_array_equal(response.outputs["OUTPUT1"], inputs["INPUT0"] - 1)


async def test_requested_outputs_come_back_alone_in_the_clients_order(repo: Path, open_engine: OpenEngine) -> None:
    engine = (await open_engine(repo, execution_provider="cpu")).engine
    wanted = [RequestedOutput("OUTPUT1"), RequestedOutput("OUTPUT0")]
    response = await engine.infer(InferRequest("simple", "", simple_inputs(), requested_outputs=wanted))
    assert list(response.outputs) == ["OUTPUT1", "OUTPUT0"]
    only = await engine.infer(InferRequest("simple", "", simple_inputs(), requested_outputs=[RequestedOutput("OUTPUT1")]))
    assert list(only.outputs) == ["OUTPUT1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: {**i, "EXTRA": i["INPUT0"]}, "unexpected input 'EXTRA'"),
        (lambda i: {"INPUT0": i["INPUT0"]}, "missing input 'INPUT1'"),
        (lambda i: {k: v.astype(np.float32) for k, v in i.items()}, "has datatype FP32, but the model expects INT32"),
        (lambda i: {k: v[:, :8] for k, v in i.items()}, r"has shape \[2, 8\]"),
        (lambda i: {k: np.repeat(v, 5, axis=0) for k, v in i.items()}, "batch size 10"),
        (lambda i: {"INPUT0": i["INPUT0"], "INPUT1": i["INPUT1"][:1]}, "disagree on the batch size"),
    ],
    ids=["extra", "missing", "datatype", "shape", "batch-too-big", "batch-disagrees"],
)
async def test_requests_that_do_not_fit_the_model_are_invalid(
    repo: Path, open_engine: OpenEngine, change: object, message: str
) -> None:
    engine = (await open_engine(repo, execution_provider="cpu")).engine
    inputs = change(simple_inputs())  # type: ignore[operator]
    with pytest.raises(InvalidInput, match=message) as caught:
        await engine.infer(InferRequest("simple", "", inputs))
    assert "model 'simple' version 1" in str(caught.value)


async def test_an_unknown_output_is_invalid(repo: Path, open_engine: OpenEngine) -> None:
    engine = (await open_engine(repo, execution_provider="cpu")).engine
    with pytest.raises(InvalidInput, match="unknown output 'NOPE'"):
        await engine.infer(InferRequest("simple", "", simple_inputs(), requested_outputs=[RequestedOutput("NOPE")]))


async def test_unknown_models_and_versions_are_not_found(repo: Path, open_engine: OpenEngine) -> None:
    engine = (await open_engine(repo, execution_provider="cpu")).engine
    with pytest.raises(ModelNotFound):
        await engine.infer(InferRequest("missing", "", simple_inputs()))
    with pytest.raises(ModelNotFound):
        await engine.infer(InferRequest("simple", "7", simple_inputs()))
    assert not await engine.model_ready("missing") and not await engine.model_ready("simple", "7")


async def test_versions_metadata_and_health(repo: Path, open_engine: OpenEngine) -> None:
    engine = (await open_engine(repo, execution_provider="cpu")).engine
    assert await engine.live() and await engine.ready()
    assert await engine.model_ready("simple") and await engine.model_ready("mlp", "1") and await engine.model_ready("mlp", "2")
    name, _, extensions = await engine.server_metadata()
    assert name and "statistics" in extensions and "model_repository" in extensions
    metadata = await engine.model_metadata("mlp")
    assert sorted(metadata.versions) == ["1", "2"] and metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype) for t in metadata.inputs] == [("INPUT", "FP32")]
    x = np.ones((1, 16), dtype=np.float32)
    latest = await engine.infer(InferRequest("mlp", "", {"INPUT": x}))
    first = await engine.infer(InferRequest("mlp", "1", {"INPUT": x}))
    assert (latest.model_version, first.model_version) == ("2", "1")
    assert not np.array_equal(latest.outputs["PROBABILITIES"], first.outputs["PROBABILITIES"])
    engine.stop_accepting()
    assert await engine.live() and not await engine.ready()

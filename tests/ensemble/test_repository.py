"""Ensembles in the repository's life cycle: in poll mode, a new ensemble and the model it uses are
loaded in one poll (the ensemble after its model), and a changed ensemble config is reloaded (its
version directory stays empty); loading an ensemble loads the models it uses, as Triton does."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from runtime.admin import Admin
from runtime.errors import InvalidInput, ModelLoadError
from runtime.examples import save_model
from runtime.repository.poller import RepositoryPoller
from runtime.types import InferRequest
from tests.engine import OpenEngine
from tests.serving import RunningServer, running_server
from tests.ensemble.models import MIXED_CONFIG, build_double, cls, pre, save_ensemble, write_repository


async def test_the_poller_loads_a_new_ensemble_after_its_model_and_reloads_it(open_engine: OpenEngine, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    core = await open_engine(repo)
    poller = RepositoryPoller(core.registry, interval_s=3600, quiet_s=0)
    poller.prime()
    # "a_twice" sorts before "zz_double", the model it uses; both appear in one scan.
    config = MIXED_CONFIG.replace('"mixed"', '"a_twice"').replace('"double"', '"zz_double"')
    save_ensemble(repo, "a_twice", config)
    save_model(build_double(), repo, "zz_double", config_pbtxt="max_batch_size: 2\n")
    await poller.poll_once()  # seen
    await poller.poll_once()  # unchanged since: loaded
    assert await core.engine.model_ready("a_twice")
    raw = np.ones((1, 4), np.float32)
    response = await core.engine.infer(InferRequest("a_twice", "", {"RAW": raw}))
    np.testing.assert_array_equal(response.outputs["D"], 2 * raw)

    (repo / "a_twice" / "config.pbtxt").write_text(config.replace('"D"', '"DOUBLED"'))
    await poller.poll_once()
    await poller.poll_once()
    response = await core.engine.infer(InferRequest("a_twice", "", {"RAW": raw}))
    assert list(response.outputs) == ["DOUBLED"]
    assert list((repo / "a_twice" / "1").iterdir()) == []


async def test_loading_an_ensemble_loads_the_models_it_uses(open_engine: OpenEngine, tmp_path: Path) -> None:
    # Explicit mode: only the ensemble is named (--load-model pipeline); Triton loads its models too.
    core = await open_engine(write_repository(tmp_path), load=False)
    await core.registry.load("pipeline")
    assert await core.engine.model_ready("pipeline")
    assert sorted(r.name for r in core.registry.records()) == ["cls", "pipeline", "pre"]
    raw = np.ones((2, 4), np.float32)
    outputs = (await core.engine.infer(InferRequest("pipeline", "", {"RAW": raw}))).outputs
    np.testing.assert_allclose(outputs["SCORES"], cls(pre(raw)), rtol=1e-5)


async def test_ensembles_that_use_each_other_fail_to_load_without_hanging(open_engine: OpenEngine, tmp_path: Path) -> None:
    core = await open_engine(write_repository(tmp_path), load=False)
    for name, other in (("ring_a", "ring_b"), ("ring_b", "ring_a")):
        save_ensemble(tmp_path, name, MIXED_CONFIG.replace('"mixed"', f'"{name}"').replace('"double"', f'"{other}"').replace('"X"', '"RAW"').replace('"Y"', '"D"'))
    with pytest.raises(ModelLoadError) as caught:
        await core.registry.load("ring_a")
    assert "step 0 (model 'ring_b')" in caught.value.message
    assert not await core.engine.model_ready("ring_b")


async def test_unload_dependents_takes_the_composing_models_no_serving_ensemble_needs(
    open_engine: OpenEngine, tmp_path: Path
) -> None:
    """Triton's unload_dependents: pipeline (pre, cls) goes with cls but not pre, which fanout (pre,
    double) still uses; then fanout goes with both of its models. Without it, the models stay."""
    core = await open_engine(write_repository(tmp_path), load=False, model_control_mode="explicit")
    admin = Admin(core.registry, core.settings)
    for name in ("pipeline", "fanout", "mixed"):
        await core.registry.load(name)

    def serving() -> list[str]:
        return sorted(entry.name for entry in core.registry.entries() if entry.serving)

    assert serving() == ["cls", "double", "fanout", "mixed", "pipeline", "pre"]
    await admin.unload("mixed")  # Triton's default: its model (double) stays
    assert serving() == ["cls", "double", "fanout", "pipeline", "pre"]
    await admin.unload("pipeline", {"unload_dependents": True})
    assert serving() == ["double", "fanout", "pre"]
    await admin.unload("fanout", {"unload_dependents": True})
    assert serving() == []


async def test_unload_parameters_are_checked(open_engine: OpenEngine, tmp_path: Path) -> None:
    core = await open_engine(write_repository(tmp_path), load=False, model_control_mode="explicit")
    admin = Admin(core.registry, core.settings)
    await core.registry.load("pipeline")
    with pytest.raises(InvalidInput, match="'unload_dependents' must be true or false, got str"):
        await admin.unload("pipeline", {"unload_dependents": "yes"})
    with pytest.raises(InvalidInput, match="unknown unload parameter 'cascade'"):
        await admin.unload("pipeline", {"cascade": True})
    assert await core.engine.model_ready("pipeline")  # a refused call changes nothing


@pytest.fixture(scope="module", params=[1, 3], ids=["workers1", "workers3"])
def explicit_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    repository = write_repository(tmp_path_factory.mktemp("ensemble-explicit-repo"))
    with running_server(
        repository, tmp_path_factory.mktemp("ensemble-explicit"), ["--model-control-mode", "explicit"], workers=request.param
    ) as server:
        yield server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unload_dependents_through_tritonclient(explicit_server: RunningServer, protocol: str) -> None:
    """tritonclient's unload_model(..., unload_dependents=True) over HTTP and gRPC, and its default (False)."""
    client: Any = (
        httpclient.InferenceServerClient(explicit_server.http_url)
        if protocol == "http"
        else grpcclient.InferenceServerClient(explicit_server.grpc_url)
    )
    try:
        metadata = client.get_server_metadata()
        extensions = metadata["extensions"] if protocol == "http" else list(metadata.extensions)
        assert "model_repository(unload_dependents)" in extensions
        client.load_model("pipeline")
        client.load_model("fanout")
        client.unload_model("pipeline", unload_dependents=True)
        assert [client.is_model_ready(m) for m in ("pipeline", "cls", "pre", "fanout")] == [False, False, True, True]
        client.unload_model("fanout")  # the default keeps its models
        assert [client.is_model_ready(m) for m in ("fanout", "pre", "double")] == [False, True, True]
        client.load_model("fanout")
        client.unload_model("fanout", unload_dependents=True)
        assert not any(client.is_model_ready(m) for m in ("fanout", "pre", "double", "cls", "pipeline"))
    finally:
        client.close()

"""Ensembles in the repository's life cycle: in poll mode, a new ensemble and the model it uses are
loaded in one poll (the ensemble after its model), and a changed ensemble config is reloaded; its
version directory stays empty."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.examples import save_model
from runtime.repository.poller import RepositoryPoller
from runtime.types import InferRequest
from tests.engine import OpenEngine
from tests.ensemble.models import MIXED_CONFIG, build_double, save_ensemble


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

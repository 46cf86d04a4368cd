"""Triton's response cache (runtime/cache.py): keys, verification, LRU, and the engine's hit path over
HTTP and gRPC, with its statistics-extension and Prometheus counts."""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from runtime.cache import ENTRY_OVERHEAD_BYTES, CacheKey, ResponseCache
from runtime.config import Settings, cache_size_bytes
from runtime.engine import Engine
from runtime.examples import save_model
from runtime.types import InferRequest, RequestedOutput
from tests.conftest import OpenEngine
from tests.models import FAILING_INSTANCE_GROUP, build_failing, build_identity
from tests.monitoring.scrape import scrape
from tests.repository.models import build_scale
from tests.server.conftest import Client, protocol_client
from tests.serving import RunningServer, running_server

CACHED = "max_batch_size: 8\nresponse_cache { enable: true }\n"


class Version:
    """Stands in for a loaded version: the cache only needs an object it can refer to weakly."""


def key_of(cache: ResponseCache, version: object, inputs: dict[str, Any], **changes: Any) -> CacheKey:
    args: dict[str, Any] = dict(name="m", number=1, requested=None, parameters={})
    args.update(changes)
    return cache.key(version, args["name"], args["number"], inputs, args["requested"], args["parameters"])


# ---- keys and entries ----------------------------------------------------------------------------


def test_equal_requests_share_a_key_and_anything_that_changes_the_answer_changes_it() -> None:
    cache = ResponseCache(1 << 20)
    version = Version()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    base = key_of(cache, version, {"X": x})
    assert key_of(cache, version, {"X": x.copy()}) == base
    assert key_of(cache, version, {"X": x}, parameters={"priority": 2, "timeout": 5}) == base  # scheduling only
    different = [
        key_of(cache, version, {"X": x + 1}),  # bytes
        key_of(cache, version, {"X": x.reshape(2, 2)}),  # shape
        key_of(cache, version, {"X": x.astype(np.int32)}),  # datatype
        key_of(cache, version, {"Y": x}),  # input name
        key_of(cache, version, {"X": x}, requested=[RequestedOutput("OUT")]),
        key_of(cache, version, {"X": x}, requested=[RequestedOutput("OUT", classification=2)]),
        key_of(cache, version, {"X": x}, parameters={"custom": 1}),
        key_of(cache, version, {"X": x}, number=2),
        key_of(cache, version, {"X": x}, name="n"),
        key_of(cache, Version(), {"X": x}),  # another loaded version (a reload, a swap)
    ]
    assert len({k.digest for k in [base, *different]}) == len(different) + 1
    texts = np.array([[b"a", b"bc"]], dtype=object)
    assert key_of(cache, version, {"T": texts}) != key_of(cache, version, {"T": np.array([[b"ab", b"c"]], dtype=object)})


def test_a_hash_collision_is_a_miss_not_another_answer() -> None:
    cache = ResponseCache(1 << 20)
    version = Version()
    stored = key_of(cache, version, {"X": np.zeros((1, 4), np.float32)})
    cache.put(stored, {"OUT": np.ones((1, 4), np.float32)})
    other = key_of(cache, version, {"X": np.ones((1, 4), np.float32)})
    colliding = CacheKey(stored.digest, other.material)  # as if blake2b had collided
    assert cache.get(colliding) is None
    hit = cache.get(stored)
    assert hit is not None and np.array_equal(hit["OUT"], np.ones((1, 4), np.float32))


def test_least_recently_used_answers_go_first_within_the_budget() -> None:
    cache = ResponseCache(4 * (ENTRY_OVERHEAD_BYTES + 1024))  # room for about three answers of 1 KiB
    version = Version()
    keys = [key_of(cache, version, {"X": np.full((1, 4), i, np.float32)}) for i in range(5)]
    answer = {"OUT": np.zeros((1, 256), np.float32)}  # 1 KiB
    for key in keys[:3]:
        assert cache.put(key, answer)
    assert cache.get(keys[0]) is not None  # keys[0] is now the most recent
    cache.put(keys[3], answer)
    cache.put(keys[4], answer)
    assert cache.used_bytes <= cache.size_bytes
    assert [cache.get(key) is not None for key in keys] == [True, False, False, True, True]
    assert cache.stats.evictions == 2


def test_an_answer_larger_than_the_budget_is_not_stored_and_answers_cannot_be_changed() -> None:
    cache = ResponseCache(ENTRY_OVERHEAD_BYTES + 512)
    version = Version()
    key = key_of(cache, version, {"X": np.zeros((1, 4), np.float32)})
    assert not cache.put(key, {"OUT": np.zeros((1, 1024), np.float32)})
    assert cache.get(key) is None and len(cache) == 0
    small = {"OUT": np.zeros((1, 4), np.float32)}
    assert cache.put(key, small)
    small["OUT"][0, 0] = 7  # the caller's array: the cache kept its own copy
    hit = cache.get(key)
    assert hit is not None and hit["OUT"][0, 0] == 0
    with pytest.raises(ValueError):
        hit["OUT"][0, 0] = 7


def test_a_freed_version_takes_its_answers_with_it() -> None:
    cache = ResponseCache(1 << 20)
    kept, freed = Version(), Version()
    for version in (kept, freed):
        cache.put(key_of(cache, version, {"X": np.zeros((1, 4), np.float32)}), {"OUT": np.zeros((1, 4), np.float32)})
    assert len(cache) == 2
    del freed, version  # the loop variable held it too
    gc.collect()
    assert len(cache) == 1
    assert cache.used_bytes == sum(entry.nbytes for entry in cache._entries.values())


def test_cache_config_is_tritons_local_size() -> None:
    assert cache_size_bytes(None) == 0
    assert cache_size_bytes("local,size=1048576") == 1 << 20
    for bad, fragment in [
        ("redis,size=10", "not local,size=BYTES"),
        ("local", "not local,size=BYTES"),
        ("local,size=10,ttl=3", "not local,size=BYTES"),
        ("local,size=ten", "not an integer"),
        ("local,size=0", "out of range"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            Settings(cache_config=bad)


# ---- the engine: hits, failures, reloads (in process) ------------------------------------------


def request(value: float, model: str = "scale") -> InferRequest:
    return InferRequest(model, "", {"INPUT0": np.full((1, 4), value, np.float32)})


async def test_a_reloaded_version_never_answers_from_its_predecessor(tmp_path: Path, open_engine: OpenEngine) -> None:
    repo = tmp_path / "repo"
    save_model(build_scale(2.0), repo, "scale", config_pbtxt=CACHED)
    opened = await open_engine(repo)
    engine = Engine(opened.registry, response_cache=ResponseCache(1 << 20))
    first = await engine.infer(request(1.0))
    again = await engine.infer(request(1.0))
    assert np.array_equal(again.outputs["OUTPUT0"], first.outputs["OUTPUT0"])
    served = opened.registry.get("scale", "")
    assert (served.stats.cache_hit.count, served.stats.cache_miss.count, served.stats.execution_count) == (1, 1, 1)
    save_model(build_scale(3.0), repo, "scale", config_pbtxt=CACHED)  # same version number, new file
    await opened.registry.load("scale")
    after = await engine.infer(request(1.0))
    np.testing.assert_array_equal(after.outputs["OUTPUT0"], np.full((1, 4), 3.0, np.float32))


async def test_failures_are_never_cached_and_uncached_models_never_look(tmp_path: Path, open_engine: OpenEngine) -> None:
    repo = tmp_path / "repo"
    save_model(build_failing(), repo, "failing", config_pbtxt=CACHED + FAILING_INSTANCE_GROUP)
    save_model(build_scale(2.0), repo, "scale", config_pbtxt="max_batch_size: 8\n")
    opened = await open_engine(repo)
    cache = ResponseCache(1 << 20)
    engine = Engine(opened.registry, response_cache=cache)
    for _ in range(2):
        with pytest.raises(Exception, match="failing"):
            await engine.infer(request(500.0, "failing"))  # an out-of-range index: the execution fails
    failing = opened.registry.get("failing", "")
    assert (failing.stats.cache_hit.count, failing.stats.cache_miss.count, failing.stats.fail.count) == (0, 2, 2)
    for _ in range(2):
        await engine.infer(request(1.0))
    scale = opened.registry.get("scale", "")
    assert (scale.stats.cache_hit.count, scale.stats.cache_miss.count, scale.stats.execution_count) == (0, 0, 2)
    assert len(cache) == 0


# ---- over HTTP and gRPC -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[1, 3], ids=["workers1", "workers3"])
def cache_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cache")
    save_model(build_identity("FP32"), root / "repo", "cached", config_pbtxt=CACHED)
    with running_server(root / "repo", root / "srv", ["--cache-config", "local,size=1048576"], workers=request.param) as running:
        yield running


@pytest.fixture(scope="module", params=["http", "grpc"])
def client(request: pytest.FixtureRequest, cache_server: RunningServer) -> Client:
    return protocol_client(request.param, cache_server)


def inference_stats(client: Client) -> dict[str, Any]:
    if client.protocol == "http":
        entry: dict[str, Any] = client.triton.get_inference_statistics("cached")["model_stats"][0]
        return entry
    response = client.triton.get_inference_statistics("cached", as_json=True)
    grpc_entry: dict[str, Any] = response["model_stats"][0]
    return grpc_entry


def counts(entry: dict[str, Any]) -> dict[str, int]:
    stats = entry["inference_stats"]
    return {
        "hit": int(stats.get("cache_hit", {}).get("count", 0)),
        "miss": int(stats.get("cache_miss", {}).get("count", 0)),
        "success": int(stats["success"].get("count", 0)),
        "executions": int(entry.get("execution_count", 0)),
        "inferences": int(entry.get("inference_count", 0)),
        "hit_ns": int(stats.get("cache_hit", {}).get("ns", 0)),
    }


def test_a_repeated_request_is_answered_from_the_cache(client: Client, cache_server: RunningServer) -> None:
    data = np.random.default_rng().standard_normal((1, 4)).astype(np.float32)  # unseen by earlier tests
    before = counts(inference_stats(client))
    answers = [client.infer("cached", [client.input("INPUT0", data)]).as_numpy("OUTPUT0") for _ in range(3)]
    for answer in answers:
        np.testing.assert_array_equal(answer, data)
    after = counts(inference_stats(client))
    assert after["hit"] - before["hit"] == 2
    assert after["miss"] - before["miss"] == 1
    assert after["executions"] - before["executions"] == 1  # the hits never executed
    assert after["inferences"] - before["inferences"] == 1  # Triton's: inference_count excludes hits
    assert after["success"] - before["success"] == 3  # ... and success includes them
    assert after["hit_ns"] > before["hit_ns"]
    other = client.infer("cached", [client.input("INPUT0", data + 1)]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(other, data + 1)
    assert counts(inference_stats(client))["miss"] - after["miss"] == 1
    metrics = scrape(cache_server.metrics_url)
    hits = metrics.value("model_runtime_cache_hits_total", model="cached", version="1")
    misses = metrics.value("model_runtime_cache_misses_total", model="cached", version="1")
    assert hits is not None and hits >= 2 and misses is not None and misses >= 2
    assert (metrics.value("model_runtime_cache_duration_seconds_total", model="cached", version="1", result="hit") or 0) > 0

"""runtime.monitoring in-process: histogram semantics, drift windows and PSI, monitoring plans from
monitoring.json / reference.json, and the observer driven through a real registry and engine."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Histogram as PromHistogram
from prometheus_client.parser import text_string_to_metric_families

from runtime import monitoring as metrics
from runtime.app import JsonFormatter
from runtime.config import Settings
from runtime.engine import Engine
from runtime.errors import ExecutionError, InvalidInput, ModelNotFound
from runtime.examples import save_model
from tests.engine import OpenEngine
from tests.models import FAILING_INSTANCE_GROUP, build_failing, build_identity
from runtime.monitoring import (
    ArrayHistogram,
    ClassWatch,
    GpuCollector,
    MetricsObserver,
    MonitoringError,
    SlidingBins,
    ValueWatch,
    VersionInfo,
    build_plan,
    population_stability_index,
)
from runtime.model import ModelState
from runtime.monitoring.observer import BatchTiming
from runtime.repository.registry import ModelRegistry
from runtime.types import InferRequest, TensorSpec

P = metrics.PREFIX


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


# ---- building blocks ---------------------------------------------------------------------------

BOUNDS = [0.0, 0.5, 1.0, 2.5]
finite = st.floats(min_value=-5, max_value=5, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(finite, st.sampled_from(BOUNDS)), max_size=40))
def test_histograms_bucket_like_prometheus_client(values: list[float]) -> None:
    registry = CollectorRegistry()
    reference = PromHistogram("h", "h", buckets=BOUNDS, registry=registry)
    bulk = ArrayHistogram(BOUNDS)
    for v in values:
        reference.observe(v)
    bulk.observe_array(np.asarray(values, dtype=np.float32))
    expected = {
        s.labels["le"]: s.value for s in next(iter(registry.collect())).samples if s.name == "h_bucket"
    }
    assert dict(bulk.buckets()) == expected
    assert bulk.sum == pytest.approx(sum(values), abs=1e-4)


def test_array_histogram_leaves_out_non_finite_values() -> None:
    bulk = ArrayHistogram([1.0])
    bulk.observe_array(np.array([0.5, np.nan, np.inf, 2.0, -np.inf]))
    assert bulk.buckets() == [("1.0", 1), ("+Inf", 2)]
    assert bulk.sum == 2.5


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.lists(st.lists(st.integers(0, 4), max_size=30), max_size=12))
def test_sliding_bins_count_the_last_window_observations(window: int, chunks: list[list[int]]) -> None:
    bins = SlidingBins(5, window)
    seen: list[int] = []
    for chunk in chunks:
        bins.add(np.asarray(chunk, dtype=np.int64))
        seen.extend(chunk)
        assert (
            bins.counts.tolist()
            == np.bincount(np.asarray(seen[-window:], dtype=np.int64), minlength=5).tolist()
        )
        assert bins.filled == min(window, len(seen))


def test_population_stability_index() -> None:
    assert population_stability_index(np.array([1.0, 1.0]), np.array([5.0, 5.0])) == 0.0
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert population_stability_index(np.array([0.5, 0.5]), np.array([1.0, 3.0])) == pytest.approx(
        0.27465, abs=1e-4
    )
    # an empty bin counts as PSI_EPSILON, so the score is large but finite
    assert 4.0 < population_stability_index(np.array([0.25] * 4), np.array([0, 0, 1, 1])) < 5.0


def test_parse_buckets() -> None:
    assert metrics.parse_buckets(["0.5", 0.1, "1"]) == (0.1, 0.5, 1.0)
    for bad in (["x"], [], ["inf"], list(range(metrics.MAX_BUCKETS + 1))):
        with pytest.raises(ValueError):
            metrics.parse_buckets(bad)


# ---- monitoring plans --------------------------------------------------------------------------


def info(
    tmp_path: Path,
    outputs: list[TensorSpec],
    inputs: list[TensorSpec] | None = None,
    labels: dict[str, tuple[str, ...]] | None = None,
) -> VersionInfo:
    (tmp_path / "1").mkdir(parents=True, exist_ok=True)
    return VersionInfo(
        name="m",
        version=1,
        model_dir=tmp_path,
        version_dir=tmp_path / "1",
        batching=True,
        inputs=tuple(inputs or [TensorSpec("X", "FP32", (-1, 4))]),
        outputs=tuple(outputs),
        labels=labels or {},
    )


def kinds(plan: metrics.Plan) -> dict[str, str]:
    return {name: type(watch).__name__ for name, watch in plan.outputs}


def test_default_plan_counts_small_float_outputs_by_class_and_histograms_other_numbers(
    tmp_path: Path,
) -> None:
    outputs = [
        TensorSpec("PROBS", "FP32", (-1, 4)),
        TensorSpec("SCORE", "FP32", (-1, 1)),
        TensorSpec("IDS", "INT64", (-1, 16)),
        TensorSpec("WIDE", "FP32", (-1, 40)),  # more classes than auto-counting allows: values
        TensorSpec("IMAGE", "FP32", (-1, 64, 64)),  # too many values per row: off
        TensorSpec("TEXT", "BYTES", (-1, 1)),
        TensorSpec("DYNAMIC", "FP32", (-1, -1)),
    ]
    plan = build_plan(info(tmp_path, outputs), 100)
    assert kinds(plan) == {
        "PROBS": "ClassWatch",
        "SCORE": "ValueWatch",
        "IDS": "ValueWatch",
        "WIDE": "ValueWatch",
    }
    probs = dict(plan.outputs)["PROBS"]
    assert isinstance(probs, ClassWatch) and probs.classes == ["0", "1", "2", "3"]
    assert plan.inputs == []


def test_label_file_names_the_classes(tmp_path: Path) -> None:
    lines = ("cat", "dog", "cat", "")  # the label file's lines, as the load read them
    plan = build_plan(info(tmp_path, [TensorSpec("P", "FP32", (-1, 4))], labels={"P": lines}), 100)
    watch = dict(plan.outputs)["P"]
    assert isinstance(watch, ClassWatch)
    assert watch.classes == ["cat", "dog", "cat#2", "3"]  # unique label values; unlabelled classes by index


def test_sidecar_turns_predictions_off_or_picks_outputs_and_buckets(tmp_path: Path) -> None:
    outputs = [TensorSpec("PROBS", "FP32", (-1, 4)), TensorSpec("SCORE", "FP32", (-1, 1))]
    (tmp_path / "monitoring.json").write_text(json.dumps({"predictions": False}))
    assert build_plan(info(tmp_path, outputs), 100).outputs == []
    (tmp_path / "monitoring.json").write_text(
        json.dumps(
            {
                "outputs": {"PROBS": {"kind": "value", "buckets": [0.5, 0.25]}},
                "inputs": {"X": {"features": [3, 1]}},
            }
        )
    )
    plan = build_plan(info(tmp_path, outputs), 100)
    ((name, watch),) = plan.outputs
    assert name == "PROBS" and isinstance(watch, ValueWatch)
    assert watch.histograms[""].bounds == (0.25, 0.5)
    ((input_name, input_watch),) = plan.inputs
    assert input_name == "X" and isinstance(input_watch, ValueWatch)
    assert sorted(input_watch.histograms) == ["1", "3"]
    # a version's own monitoring.json wins over the model's
    (tmp_path / "1" / "monitoring.json").write_text(json.dumps({"outputs": {"SCORE": {}}}))
    assert kinds(build_plan(info(tmp_path, outputs), 100)) == {"SCORE": "ValueWatch"}


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        ({"predictions": "yes"}, "'predictions'"),
        ({"outputs": {"NOPE": {}}}, "no output 'NOPE'"),
        ({"outputs": {"P": {"kind": "pie"}}}, "kind must be"),
        ({"outputs": {"P": {"buckets": "x"}}}, "'buckets'"),
        ({"inputs": {"X": {"features": list(range(100))}}}, "features"),
        ({"max_classes": 1}, "max_classes"),
    ],
)
def test_bad_sidecar_is_an_error_naming_the_file(
    tmp_path: Path, sidecar: dict[str, Any], message: str
) -> None:
    (tmp_path / "monitoring.json").write_text(json.dumps(sidecar))
    with pytest.raises(MonitoringError, match=message) as caught:
        build_plan(info(tmp_path, [TensorSpec("P", "FP32", (-1, 4))]), 100)
    assert "monitoring.json" in str(caught.value)


def test_reference_gives_drift_for_values_classes_and_inputs(tmp_path: Path) -> None:
    reference = {
        "outputs": {
            "SCORE": {"edges": [0, 0.5, 1], "frequencies": [0.5, 0.5]},  # numpy.histogram style
            "P": {"classes": {"a": 0.5, "b": 0.25, "2": 0.25}},  # by label or index
        },
        "inputs": {"X": {"edges": [0.0], "frequencies": [1, 3], "feature": 2}},  # interior cut points
    }
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    (tmp_path / "monitoring.json").write_text(json.dumps({"predictions": False}))
    outputs = [TensorSpec("SCORE", "FP32", (-1, 1)), TensorSpec("P", "FP32", (-1, 3))]
    plan = build_plan(info(tmp_path, outputs, labels={"P": ("a", "b", "c")}), 10)
    watches = dict(plan.outputs)
    score, probs = watches["SCORE"], watches["P"]
    assert isinstance(score, ValueWatch) and not score.histograms  # predictions off: drift only
    assert isinstance(probs, ClassWatch) and probs.counts is None
    assert probs.drift is not None and probs.drift.expected.tolist() == [0.5, 0.25, 0.25]
    plan.update(
        {"X": np.array([[9, 9, -1, 9], [9, 9, 1, 9]], np.float32)},
        {"SCORE": np.array([[0.1], [0.9]], np.float32), "P": np.array([[1, 0, 0], [0, 0, 1]], np.float32)},
        2,
    )
    plan.flush()
    assert score.drift is not None and score.drift.window.counts.tolist() == [1, 1]
    assert probs.drift.window.counts.tolist() == [1, 0, 1]
    ((_, x),) = plan.inputs
    assert x.drift is not None and x.drift.window.counts.tolist() == [1, 1]  # only feature 2 is compared


@pytest.mark.parametrize(
    "reference",
    [
        {"outputs": {"SCORE": {"edges": [0, 1], "frequencies": [1, 2, 3, 4]}}},
        {"outputs": {"SCORE": {"edges": [1, 0, 2], "frequencies": [1, 1]}}},
        {"outputs": {"SCORE": {"edges": [0, 1, 2], "frequencies": [0, 0]}}},
        {"outputs": {"SCORE": {"classes": [0.5, 0.5]}}},  # SCORE has one value per row: no classes
        {"outputs": {"NOPE": {"edges": [0, 1], "frequencies": [1, 1, 1]}}},
        {"inputs": {"X": {"edges": [0], "frequencies": [1, 1], "feature": -1}}},
    ],
)
def test_bad_reference_is_an_error(tmp_path: Path, reference: dict[str, Any]) -> None:
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    with pytest.raises(MonitoringError):
        build_plan(info(tmp_path, [TensorSpec("SCORE", "FP32", (-1, 1))]), 10)


def test_plan_counts_held_batches_in_bulk_and_in_order(tmp_path: Path) -> None:
    outputs = [TensorSpec("P", "FP32", (-1, 2)), TensorSpec("V", "FP32", (-1, -1))]
    (tmp_path / "monitoring.json").write_text(
        json.dumps({"outputs": {"P": {}, "V": {"kind": "value", "buckets": [0]}}})
    )
    (tmp_path / "reference.json").write_text(json.dumps({"outputs": {"P": {"classes": [0.5, 0.5]}}}))
    plan = build_plan(info(tmp_path, outputs), 3)
    watches = dict(plan.outputs)
    probs, values = watches["P"], watches["V"]
    assert isinstance(probs, ClassWatch) and isinstance(values, ValueWatch)
    for winner, width in [(0, 1), (1, 3), (1, 2), (0, 1)]:  # V's rows differ in width: no concatenation
        row = np.zeros((1, 2), np.float32)
        row[0, winner] = 1
        plan.update({}, {"P": row, "V": -np.ones((1, width), np.float32)}, 1)
    assert len(plan.held) == 3  # the first batch was counted at once, to learn its size; the others wait
    assert probs.counts is not None and probs.counts.tolist() == [1, 0]
    plan.flush()
    assert plan.held == []
    assert probs.counts is not None and probs.counts.tolist() == [2, 2]
    assert probs.drift is not None and sorted(probs.drift.window.ring.tolist()) == [0, 1, 1]  # the last three
    assert values.histograms[""].counts.tolist() == [7, 0]
    for _ in range(metrics.FLUSH_BATCHES):
        plan.update({}, {"P": np.array([[0, 1]], np.float32)}, 1)
    assert plan.held == [] and probs.counts.tolist() == [2, 2 + metrics.FLUSH_BATCHES]  # flushed by itself


def test_watches_ignore_arrays_of_unexpected_shape_or_type() -> None:
    watch = ClassWatch("P", ["a", "b"], count=True, drift=None)
    watch.update(np.zeros((3, 5), np.float32), 3)
    watch.update(np.array([["x", "y"]], dtype=object), 1)
    assert watch.counts is not None and watch.counts.tolist() == [0, 0]
    values = ValueWatch("V", [0.0], None)
    values.update(np.array([b"x"], dtype=object), 1)
    assert values.histograms[""].counts.tolist() == [0, 0]


# ---- the observer through a real registry and engine ----------------------------------------

CLF_CONFIG = """\
name: "clf"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 3 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" }]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    save_model(build_identity("FP32"), root, "clf", config_pbtxt=CLF_CONFIG)
    (root / "clf" / "labels.txt").write_text("cat\ndog\nbird\n")
    save_model(build_failing(), root, "failing", config_pbtxt=FAILING_INSTANCE_GROUP)
    return root


async def serving(
    open_engine: OpenEngine, repo: Path, observer: MetricsObserver
) -> tuple[ModelRegistry, Engine, CollectorRegistry]:
    core = await open_engine(repo, observer=observer)
    return core.registry, core.engine, metrics.build_registry(core.registry, observer, gpu=False)


def request(model: str, array: np.ndarray, protocol: str = "http", version: str = "") -> InferRequest:
    return InferRequest(model, version, {"INPUT0": array}, protocol=protocol)


async def test_observer_counts_requests_predictions_and_batches(repo: Path, open_engine: OpenEngine) -> None:
    observer = MetricsObserver(latency_buckets=[0.5, 10])
    registry, engine, prom = await serving(open_engine, repo, observer)
    await engine.infer(request("clf", np.array([[1, 0, 0], [0, 2, 1]], np.float32)))
    await engine.infer(request("clf", np.array([[0, 0, 3]], np.float32), protocol="grpc"))
    with pytest.raises(InvalidInput):
        await engine.infer(request("clf", np.zeros((1, 5), np.float32)))
    with pytest.raises(ExecutionError):
        await engine.infer(request("failing", np.full((1, 4), 100, np.float32)))
    for name in [f"nope-{i}" for i in range(50)]:
        with pytest.raises(ModelNotFound):
            await engine.infer(request(name, np.zeros((1, 3), np.float32)))
    await observer.settled()
    scraped = samples(generate_latest(prom))
    clf = {"model": "clf", "version": "1"}
    ok = {"outcome": "success", "reason": ""}
    assert value(scraped, f"{P}_requests_total", **clf, protocol="http", **ok) == 1
    assert value(scraped, f"{P}_requests_total", **clf, protocol="grpc", **ok) == 1
    assert (
        value(
            scraped, f"{P}_requests_total", **clf, protocol="http", outcome="failure", reason="invalid_input"
        )
        == 1
    )
    assert (
        value(
            scraped,
            f"{P}_requests_total",
            model="failing",
            version="1",
            protocol="http",
            outcome="failure",
            reason="execution_error",
        )
        == 1
    )
    # fifty unknown names, one series
    unknown = [k for k in scraped if k[0] == f"{P}_requests_total" and ("model", "") in k[1]]
    assert len(unknown) == 1 and scraped[unknown[0]] == 50
    assert {dict(k[1])["class"]: v for k, v in scraped.items() if k[0] == f"{P}_prediction_class_total"} == {
        "cat": 1,
        "dog": 1,
        "bird": 1,
    }
    assert value(scraped, f"{P}_inference_rows_total", **clf) == 3
    assert value(scraped, f"{P}_executions_total", **clf) == 2
    assert value(scraped, f"{P}_batch_size_bucket", **clf, le="1.0") == 1
    assert value(scraped, f"{P}_batch_size_bucket", **clf, le="2.0") == 2
    assert value(scraped, f"{P}_request_duration_seconds_bucket", **clf, protocol="http", le="10.0") == 1
    assert value(scraped, f"{P}_compute_duration_seconds_count", **clf, phase="infer") == 2
    assert value(scraped, f"{P}_traffic_weight", **clf) == 1
    assert value(scraped, f"{P}_inflight_requests", **clf) == 0  # every admitted request has finished
    await registry.close()


async def test_in_flight_gauge_follows_the_request_started_hook(repo: Path, open_engine: OpenEngine) -> None:
    observer = MetricsObserver()
    registry, _, prom = await serving(open_engine, repo, observer)
    served = registry.get("clf")
    req = request("clf", np.zeros((1, 3), np.float32))
    observer.request_started(req, served)
    observer.request_started(req, served)
    assert value(samples(generate_latest(prom)), f"{P}_inflight_requests", model="clf", version="1") == 2
    observer.request_finished(req, served, "success", 0.01)
    assert value(samples(generate_latest(prom)), f"{P}_inflight_requests", model="clf", version="1") == 1
    await registry.close()


async def test_basic_detail_leaves_out_predictions_and_off_records_nothing(repo: Path, open_engine: OpenEngine) -> None:
    details: list[tuple[metrics.Detail, bool, bool]] = [("basic", False, True), ("off", False, False)]
    for detail, predictions, requests in details:
        observer = MetricsObserver(detail=detail)
        registry, engine, prom = await serving(open_engine, repo, observer)
        await engine.infer(request("clf", np.array([[1, 0, 0]], np.float32)))
        await observer.settled()
        names = {k[0] for k in samples(generate_latest(prom))}
        assert (f"{P}_prediction_class_total" in names) is predictions, detail
        assert (f"{P}_requests_total" in names) is requests, detail
        assert f"{P}_model_state" in names  # read from the registry at scrape time either way
        await registry.close()


async def test_series_of_models_gone_from_the_registry_are_dropped(repo: Path, open_engine: OpenEngine) -> None:
    observer = MetricsObserver()
    registry, engine, prom = await serving(open_engine, repo, observer)
    await engine.infer(request("clf", np.array([[1, 0, 0]], np.float32)))
    assert ("clf", 1) in observer.series_keys()
    observer.forget("clf")
    assert ("clf", 1) not in observer.series_keys()
    assert (
        value(samples(generate_latest(prom)), f"{P}_model_state", model="clf", version="1", state="READY")
        == 1
    )
    await registry.close()


class FakeServed:
    """What the observer reads of a ServedModel (weak-referenceable, like the real one)."""

    def __init__(self, model_dir: Path = Path("/nonexistent"), name: str = "m") -> None:
        self.name, self.version, self.max_batch_size = name, 1, 4
        self.model_dir, self.version_dir = model_dir, model_dir / "1"
        self.model_inputs: list[TensorSpec] = []
        self.model_outputs = [TensorSpec("P", "FP32", (-1, 2))]
        self.labels: dict[str, tuple[str, ...]] = {}
        self.state = ModelState.READY


def fake_model(model_dir: Path = Path("/nonexistent")) -> Any:
    return FakeServed(model_dir)


def one_row(winner: int) -> dict[str, np.ndarray]:
    row = np.zeros((1, 2), np.float32)
    row[0, winner] = 1
    return {"P": row}


def test_a_reloaded_version_keeps_its_prediction_counts(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "reference.json").write_text(json.dumps({"outputs": {"P": {"classes": [0.5, 0.5]}}}))
    observer = MetricsObserver()
    timing = BatchTiming(rows=1, queue_seconds=[0.0], input_seconds=0, infer_seconds=0, output_seconds=0)
    first, second = fake_model(tmp_path), fake_model(tmp_path)  # two loads of version 1
    for winner in (0, 1, 1):
        observer.batch_executed(first, timing, {}, one_row(winner))
    observer.batch_executed(second, timing, {}, one_row(0))
    (series,) = observer.series()
    assert series.plan is not None
    observer.flush(series)
    ((_, watch),) = series.plan.outputs
    assert isinstance(watch, ClassWatch) and watch.counts is not None
    assert watch.counts.tolist() == [2, 2]  # carried over from the first load, plus the new batch
    assert watch.drift is not None and watch.drift.window.filled == 1  # drift starts afresh


def test_observer_never_raises_and_logs_a_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    observer = MetricsObserver()
    model = fake_model()
    no_waits: Any = None
    broken = BatchTiming(rows=1, queue_seconds=no_waits, input_seconds=0, infer_seconds=0, output_seconds=0)
    with caplog.at_level(logging.ERROR, logger="runtime.monitoring"):
        for _ in range(3):
            observer.batch_executed(model, broken, {}, {})
            observer.request_finished(None, model, "success", 0.0)  # type: ignore[arg-type]
            (series,) = observer.series()
            observer.flush(series)  # the broken timings fail when counted
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 2  # once where requests are recorded, once where batches are counted
    assert series.timings == []  # the bad batch is dropped, not retried forever
    # odd outputs are ignored rather than raising
    timing = BatchTiming(rows=1, queue_seconds=[0.0], input_seconds=0, infer_seconds=0, output_seconds=0)
    observer.batch_executed(model, timing, {}, {"P": np.array(["x"], dtype=object)})
    observer.flush(series)
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 2
    assert series.executions == 1


def test_sampled_request_log_is_structured(caplog: pytest.LogCaptureFixture) -> None:
    observer = MetricsObserver(request_log_sample_rate=1.0)
    req = InferRequest("clf", "", {}, id="r-1", protocol="grpc")
    with caplog.at_level(logging.INFO, logger="runtime.requests"):
        observer.request_finished(req, None, "not_found", 0.0012)
    (record,) = caplog.records
    entry = json.loads(JsonFormatter().format(record))
    assert entry["logger"] == "runtime.requests"
    assert {k: entry[k] for k in ("event", "model", "protocol", "outcome", "duration_ms", "id")} == {
        "event": "request",
        "model": "clf",
        "protocol": "grpc",
        "outcome": "not_found",
        "duration_ms": 1.2,
        "id": "r-1",
    }
    assert "model='clf'" in record.getMessage()
    quiet = MetricsObserver(request_log_sample_rate=0.0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="runtime.requests"):
        quiet.request_finished(req, None, "not_found", 0.0012)
    assert caplog.records == []


def test_gpu_collector_reads_nvml() -> None:
    class FakeNvml:
        def nvmlInit(self) -> None: ...
        def nvmlDeviceGetCount(self) -> int:
            return 1

        def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
            return "gpu0"

        def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
            return SimpleNamespace(used=3 * 2**30, total=80 * 2**30)

        def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
            return SimpleNamespace(gpu=42)

        def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
            import os

            return [
                SimpleNamespace(pid=os.getpid(), usedGpuMemory=2**30),
                SimpleNamespace(pid=-1, usedGpuMemory=5),
            ]

    collector = GpuCollector.create(FakeNvml)
    assert collector is not None
    registry = CollectorRegistry()
    registry.register(collector)
    scraped = samples(generate_latest(registry))
    assert value(scraped, f"{P}_gpu_memory_used_bytes", gpu="0") == 3 * 2**30
    assert value(scraped, f"{P}_gpu_memory_total_bytes", gpu="0") == 80 * 2**30
    assert value(scraped, f"{P}_gpu_utilization_ratio", gpu="0") == 0.42
    assert value(scraped, f"{P}_gpu_process_memory_bytes", gpu="0") == 2**30

    def no_driver() -> Any:
        raise OSError("NVML Shared Library Not Found")

    assert GpuCollector.create(no_driver) is None


def test_observer_for_settings() -> None:
    assert metrics.observer_for(Settings(allow_metrics=False)) is None
    logging_only = metrics.observer_for(Settings(allow_metrics=False, request_log_sample_rate=0.5))
    assert logging_only is not None and logging_only.detail == "off"
    observer = metrics.observer_for(Settings(metrics_latency_buckets=["0.1,0.2", "1"], drift_window=7))
    assert observer is not None and observer.latency_buckets == (0.1, 0.2, 1.0) and observer.drift_window == 7

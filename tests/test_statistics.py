"""runtime/statistics.py: the snapshots' round trip through JSON (how they cross the --workers hop)."""
from __future__ import annotations

import dataclasses

import orjson

from runtime import statistics
from runtime.statistics import BatchStatistics, Duration, ModelStatistics


def test_a_snapshot_survives_the_hop_field_for_field() -> None:
    durations = {f.name: Duration(i + 1, 1000 * (i + 1)) for i, f in enumerate(dataclasses.fields(ModelStatistics)) if f.type == "Duration"}
    assert {"success", "queue", "cache_hit", "cache_miss"} <= set(durations)  # every Duration field, new ones too
    snapshot = ModelStatistics(
        name="m", version="3", last_inference_ms=17, inference_count=40, execution_count=5,
        batch_stats=[BatchStatistics(8, Duration(2, 20), Duration(2, 200), Duration(2, 30))], **durations,
    )  # fmt: skip
    sent = orjson.loads(orjson.dumps(dataclasses.asdict(snapshot)))
    assert statistics.from_dict(ModelStatistics, sent) == snapshot


def test_fields_the_sender_does_not_know_keep_their_defaults() -> None:
    doc = orjson.loads(orjson.dumps(dataclasses.asdict(ModelStatistics("m", "1", 0, 0, 0, *[Duration()] * 6, []))))
    del doc["cache_hit"]
    assert statistics.from_dict(ModelStatistics, doc).cache_hit == Duration()

"""Which requests are traced: Triton's trace settings, global and per model (runtime/tracing/control.py)."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidInput
from runtime.tracing.control import TraceControl


def traced(control: TraceControl, model: str, requests: int, parent: bool | None = None) -> int:
    return sum(control.sample(model, parent) for _ in range(requests))


def test_defaults_are_tritons() -> None:
    control = TraceControl("TIMESTAMPS", 1000, exporting=True)
    assert control.settings() == {
        "trace_file": "",
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": "1000",
        "trace_count": "-1",
        "log_frequency": "0",
        "trace_mode": "opentelemetry",
    }


def test_one_in_every_trace_rate_is_traced_the_first_included() -> None:
    control = TraceControl("TIMESTAMPS", 4, exporting=True)
    assert [control.sample("m") for _ in range(9)] == [True, False, False, False, True, False, False, False, True]


def test_off_traces_nothing_and_says_so_in_one_flag() -> None:
    control = TraceControl("OFF", 1, exporting=True)
    assert not control.active and traced(control, "m", 10) == 0
    control.update("", {"trace_level": ["TIMESTAMPS"]})
    assert control.active and traced(control, "m", 3) == 3
    control.update("", {"trace_level": ["OFF"]})
    assert not control.active


def test_the_callers_flag_decides_for_requests_that_carry_one() -> None:
    control = TraceControl("TIMESTAMPS", 1000, exporting=True)
    assert traced(control, "m", 5, parent=True) == 5
    assert traced(control, "m", 5, parent=False) == 0
    off = TraceControl("OFF", 1, exporting=True)
    assert traced(off, "m", 5, parent=True) == 0  # OFF is off, whatever the caller asks


def test_trace_count_runs_down_and_is_reported() -> None:
    control = TraceControl("TIMESTAMPS", 1, exporting=True)
    control.update("", {"trace_count": "2"})
    assert traced(control, "m", 5) == 2
    assert control.settings()["trace_count"] == "0"
    control.update("", {"trace_count": None})  # back to the start-up value: no limit
    assert control.settings()["trace_count"] == "-1" and traced(control, "m", 3) == 3


def test_a_models_settings_override_the_global_ones_key_by_key() -> None:
    control = TraceControl("OFF", 1000, exporting=True)
    assert control.update("clf", {"trace_level": ["TIMESTAMPS"], "trace_rate": "2"})["trace_rate"] == "2"
    assert control.active
    assert traced(control, "clf", 4) == 2 and traced(control, "other", 4) == 0
    control.update("", {"log_frequency": "5"})
    assert control.settings("clf")["log_frequency"] == "5"  # not overridden: follows the global one
    control.update("clf", {"trace_level": None})  # cleared: the global OFF again
    assert control.settings("clf")["trace_level"] == ["OFF"] and traced(control, "clf", 4) == 0
    assert not control.active


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"trace_levle": ["OFF"]}, "unknown trace setting 'trace_levle'"),
        ({"trace_level": ["LOUD"]}, "unknown trace_level 'LOUD'"),
        ({"trace_level": ["TENSORS"]}, "TENSORS is not supported"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, "OFF cannot be combined"),
        ({"trace_rate": "0"}, "trace_rate 0 is out of range"),
        ({"trace_rate": "ten"}, "trace_rate must be an integer, got 'ten'"),
        ({"trace_count": "-2"}, "trace_count -2 is out of range"),
        ({"trace_file": "/tmp/t.json"}, "trace_file cannot be changed"),
        ({"trace_mode": "triton"}, "trace_mode cannot be changed"),
    ],
)
def test_bad_settings_are_refused_whole(changes: dict[str, object], message: str) -> None:
    control = TraceControl("TIMESTAMPS", 10, exporting=True)
    with pytest.raises(InvalidInput, match=message):
        control.update("", {"trace_rate": "3", **changes})  # type: ignore[dict-item]
    assert control.settings()["trace_rate"] == "10"


def test_without_an_exporter_tracing_cannot_be_turned_on() -> None:
    control = TraceControl("TIMESTAMPS", 1, exporting=False)
    assert control.settings()["trace_level"] == ["OFF"]
    with pytest.raises(InvalidInput, match="tracing needs an exporter; start the server with --trace-otlp-endpoint"):
        control.update("", {"trace_level": ["TIMESTAMPS"]})
    assert control.update("", {"trace_rate": "5"})["trace_rate"] == "5"



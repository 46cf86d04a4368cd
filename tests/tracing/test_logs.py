"""Triton's logging settings applied to Python logging (runtime/tracing/logs.py): levels on and off one by one."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from runtime.app import JsonFormatter
from runtime.errors import InvalidInput
from runtime.tracing.logs import LogControl


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of the test's own, set up as configure_logging sets the root one (one handler, INFO)."""
    own = logging.getLogger("tests.tracing.logs")
    own.propagate = False
    own.setLevel(logging.INFO)
    # Only this handler is the test's: pytest's capture may add its own to the logger too.
    own.handlers[:] = [logging.StreamHandler(io.StringIO())]
    own.handlers[0].setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    try:
        yield own
    finally:
        own.handlers[:] = []


def written(logger: logging.Logger) -> list[str]:
    stream = logger.handlers[0].stream  # type: ignore[attr-defined]
    return list(stream.getvalue().splitlines())


def emit_each_level(log: logging.Logger) -> None:
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")


def test_each_level_turns_off_alone(logger: logging.Logger) -> None:
    control = LogControl("text", JsonFormatter, logger, logger.handlers[:1])
    assert control.settings() == {
        "log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0, "log_format": "default",
    }
    control.update({"log_warning": False})
    emit_each_level(logger)
    assert written(logger) == ["INFO i", "ERROR e"]


def test_verbose_logging_adds_debug_records(logger: logging.Logger) -> None:
    control = LogControl("text", JsonFormatter, logger, logger.handlers[:1])
    control.update({"log_verbose_level": 1, "log_info": False})
    emit_each_level(logger)
    assert written(logger) == ["DEBUG d", "WARNING w", "ERROR e"]
    control.update({"log_verbose_level": 0})
    assert logger.level == logging.INFO


def test_the_format_switches_to_json_and_back(logger: logging.Logger) -> None:
    control = LogControl("text", JsonFormatter, logger, logger.handlers[:1])
    control.update({"log_format": "json"})
    logger.warning("as json")
    entry = json.loads(written(logger)[-1])
    assert (entry["level"], entry["message"]) == ("warning", "as json")
    assert control.update({"log_format": "ISO8601"})["log_format"] == "ISO8601"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"log_infos": True}, "unknown setting 'log_infos'"),
        ({"log_info": "yes"}, "log_info must be true or false"),
        ({"log_verbose_level": -1}, "log_verbose_level must be an integer"),
        ({"log_format": "xml"}, "log_format must be one of default, ISO8601, json"),
        ({"log_file": "/tmp/x.log"}, "log_file cannot be set"),
    ],
)
def test_bad_settings_change_nothing(logger: logging.Logger, changes: dict[str, object], message: str) -> None:
    control = LogControl("text", JsonFormatter, logger, logger.handlers[:1])
    with pytest.raises(InvalidInput, match=message):
        control.update({"log_error": False, **changes})
    assert control.settings()["log_error"] is True

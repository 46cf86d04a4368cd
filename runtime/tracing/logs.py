"""Triton's logging extension settings, applied to this process's Python logging at run time.

Settings (`GET/POST /v2/logging`, gRPC `LogSettings`): `log_info`, `log_warning`, `log_error`
(each level on or off, independently, as Triton has them), `log_verbose_level` (above 0: debug
records too), `log_format` (`default` or Triton's `ISO8601` for text lines, or our `json`), and the
read-only `log_file` (logs go to stderr). The levels are one filter on the root handlers; the
format swaps their formatter. Imports nothing from the transports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, Union

from runtime.errors import InvalidInput, quoted

LogValue = Union[bool, int, str]
KEYS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")
FORMATS = ("default", "ISO8601", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_VERBOSE = 2**32 - 1


class _LevelFilter(logging.Filter):
    """Drops the records of levels turned off (Triton's flags are per level, not a threshold)."""

    def __init__(self) -> None:
        super().__init__("runtime.logging-extension")
        self.info = self.warning = self.error = True
        self.verbose = 0

    def filter(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if level >= logging.ERROR:
            return self.error
        if level >= logging.WARNING:
            return self.warning
        if level >= logging.INFO:
            return self.info
        return self.verbose > 0


class LogSettingsApi(Protocol):
    """What the logging extension (runtime/server/logging_ext.py) calls: this process's LogControl, or a
    --workers front end's link that applies a change in every process."""

    async def log_settings(self) -> dict[str, LogValue]: ...

    async def update_log_settings(self, changes: Mapping[str, object]) -> dict[str, LogValue]: ...


class LogControl:
    """The logging settings of this process; `json_formatter` makes the --log-format json formatter."""

    def __init__(
        self,
        log_format: str,
        json_formatter: Callable[[], logging.Formatter],
        logger: logging.Logger | None = None,
        handlers: Sequence[logging.Handler] | None = None,
    ) -> None:
        # The root logger and the handlers configure_logging gave it, unless told otherwise (tests).
        self._logger = logger if logger is not None else logging.getLogger()
        self._handlers = list(handlers if handlers is not None else self._logger.handlers)
        self._json_formatter = json_formatter
        self._filter = _LevelFilter()
        self._format = "json" if log_format == "json" else "default"
        self._level_before = self._logger.level
        self._installed = False

    def settings(self) -> dict[str, LogValue]:
        f = self._filter
        return {
            "log_file": "",
            "log_info": f.info,
            "log_warning": f.warning,
            "log_error": f.error,
            "log_verbose_level": f.verbose,
            "log_format": self._format,
        }

    def update(self, changes: Mapping[str, object]) -> dict[str, LogValue]:
        """Check every change first, then apply them all (none on a bad one)."""
        checked: dict[str, LogValue] = {}
        for key, value in changes.items():
            if key not in KEYS:
                raise InvalidInput(f"log settings: unknown setting {quoted(key)}; known: {', '.join(KEYS)}")
            if key == "log_file":
                if value != "":
                    raise InvalidInput("log settings: log_file cannot be set; logs go to the standard error stream")
            elif key == "log_format":
                if value not in FORMATS:
                    raise InvalidInput(f"log settings: log_format must be one of {', '.join(FORMATS)}, got {value!r}")
                checked[key] = str(value)
            elif key == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERBOSE:
                    raise InvalidInput(f"log settings: log_verbose_level must be an integer from 0 to {MAX_VERBOSE}, got {value!r}")
                checked[key] = value
            else:
                if not isinstance(value, bool):
                    raise InvalidInput(f"log settings: {key} must be true or false, got {value!r}")
                checked[key] = value
        self._install()
        for key, value in checked.items():
            if key == "log_format":
                self._format = str(value)
                self._set_formatter()
            elif key == "log_verbose_level":
                self._filter.verbose = int(value)
            else:
                setattr(self._filter, key.removeprefix("log_"), bool(value))
        # Debug records are made only while verbose logging is on (making them costs even if dropped).
        root = self._logger
        if self._filter.verbose > 0:
            root.setLevel(logging.DEBUG)
        elif root.level < logging.INFO:
            root.setLevel(max(self._level_before, logging.INFO))
        return self.settings()

    # LogSettingsApi: the same, for the transports.
    async def log_settings(self) -> dict[str, LogValue]:
        return self.settings()

    async def update_log_settings(self, changes: Mapping[str, object]) -> dict[str, LogValue]:
        return self.update(changes)

    def _install(self) -> None:
        if not self._installed:
            for handler in self._handlers:
                handler.addFilter(self._filter)
            self._installed = True

    def _set_formatter(self) -> None:
        if self._format == "json":
            formatter = self._json_formatter()
        elif self._format == "ISO8601":
            formatter = logging.Formatter(TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S%z")
        else:
            formatter = logging.Formatter(TEXT_FORMAT)
        for handler in self._handlers:
            handler.setFormatter(formatter)

"""Which requests are traced: Triton's trace settings (trace extension), global and per model.

Settings are what Triton's `GET/POST /v2[/models/{m}]/trace/setting` and gRPC `TraceSetting` speak:
`trace_level` (a list: OFF, or TIMESTAMPS), `trace_rate` (trace one request in every N),
`trace_count` (traces left, -1 for no limit), `log_frequency`, and the read-only `trace_file` and
`trace_mode`. A model's own settings override the global ones key by key; updating a key to null
clears it (a model's then follows the global value, a global one returns to its start-up value).

`sample` is on the request path: with every scope OFF it is one attribute read. Imports no
OpenTelemetry: the settings exist (and are reported) whether or not an exporter is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, Union

from runtime.errors import InvalidInput, quoted

SettingValue = Union[str, list[str]]
LEVELS = ("OFF", "TIMESTAMPS")
KEYS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode")
READ_ONLY = {"trace_file": "", "trace_mode": "opentelemetry"}
MAX_RATE = 2**31 - 1


class TraceSettingsApi(Protocol):
    """What the trace extension (runtime/server/trace.py) calls: a TraceControl in the process that makes
    the spans, or whatever forwards to it (a --workers front end's link to the engine process)."""

    async def trace_settings(self, model: str = "") -> dict[str, SettingValue]: ...

    async def update_trace_settings(self, model: str, changes: Mapping[str, SettingValue | None]) -> dict[str, SettingValue]: ...


@dataclass(slots=True)
class _Scope:
    """The effective settings of one scope (global, or one model with overrides) and its counters."""

    on: bool
    rate: int
    count: int  # traces left; -1: no limit
    seen: int = 0  # requests that asked this scope


def _level(value: SettingValue, where: str) -> list[str]:
    levels = [value] if isinstance(value, str) else value
    if not levels or not all(isinstance(level, str) for level in levels):
        raise InvalidInput(f"{where}: trace_level must be a list of levels, e.g. [\"TIMESTAMPS\"]")
    upper = [level.upper() for level in levels]
    for level in upper:
        if level == "TENSORS":
            raise InvalidInput(f"{where}: trace_level TENSORS is not supported; use TIMESTAMPS or OFF")
        if level not in LEVELS:
            raise InvalidInput(f"{where}: unknown trace_level {quoted(level)}; use TIMESTAMPS or OFF")
    if "OFF" in upper and len(set(upper)) > 1:
        raise InvalidInput(f"{where}: trace_level OFF cannot be combined with another level")
    return sorted(set(upper))


def _integer(key: str, value: SettingValue, low: int, where: str) -> str:
    text = value[0] if isinstance(value, list) and len(value) == 1 else value
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: {key} must be one integer, got {value!r}")
    try:
        number = int(text)
    except ValueError:
        raise InvalidInput(f"{where}: {key} must be an integer, got {quoted(text)}") from None
    if not low <= number <= MAX_RATE:
        raise InvalidInput(f"{where}: {key} {number} is out of range; it must be between {low} and {MAX_RATE}")
    return str(number)


def _normalise(key: str, value: SettingValue, where: str) -> SettingValue:
    if key not in KEYS:
        raise InvalidInput(f"{where}: unknown trace setting {quoted(key)}; known: {', '.join(KEYS)}")
    if key in READ_ONLY:
        text = value[0] if isinstance(value, list) and len(value) == 1 else value
        if text != READ_ONLY[key]:
            raise InvalidInput(
                f"{where}: {key} cannot be changed: traces are exported over OTLP (--trace-otlp-endpoint)"
            )
        return READ_ONLY[key]
    if key == "trace_level":
        return _level(value, where)
    if key == "trace_rate":
        return _integer(key, value, 1, where)
    if key == "trace_count":
        return _integer(key, value, -1, where)
    return _integer(key, value, 0, where)  # log_frequency


class TraceControl:
    """The trace settings of this process and the per-request sampling decision."""

    def __init__(self, level: str = "OFF", rate: int = 1000, exporting: bool = False) -> None:
        # Without an exporter there is nowhere to send spans: levels other than OFF are refused.
        self.exporting = exporting
        self._defaults: dict[str, SettingValue] = {
            "trace_file": "",
            "trace_level": _level(level, "--trace-level"),
            "trace_rate": _integer("trace_rate", str(rate), 1, "--trace-rate"),
            "trace_count": "-1",
            "log_frequency": "0",
            "trace_mode": "opentelemetry",
        }
        if self._defaults["trace_level"] != ["OFF"] and not exporting:
            self._defaults["trace_level"] = ["OFF"]
        self._global: dict[str, SettingValue] = dict(self._defaults)
        self._models: dict[str, dict[str, SettingValue]] = {}
        self._global_scope = self._scope(self._global)
        self._scopes: dict[str, _Scope] = {}
        self.active = self._global_scope.on  # any scope on: read first on the request path

    # ---- the extension ------------------------------------------------------------------------

    def settings(self, model: str = "") -> dict[str, SettingValue]:
        """The settings in force for `model` ("" for the global ones), with trace_count's live value."""
        merged = {**self._global, **self._models.get(model, {})} if model else dict(self._global)
        scope = self._scopes.get(model, self._global_scope) if model else self._global_scope
        merged["trace_count"] = str(scope.count)
        return merged

    def update(self, model: str, changes: Mapping[str, SettingValue | None]) -> dict[str, SettingValue]:
        """Apply `changes` (None clears a key) to `model`'s settings or the global ones; all or nothing."""
        where = f"model {quoted(model)}" if model else "trace settings"
        target = dict(self._models.get(model, {})) if model else dict(self._global)
        for key, value in changes.items():
            if value is None:
                if key not in KEYS:
                    raise InvalidInput(f"{where}: unknown trace setting {quoted(key)}; known: {', '.join(KEYS)}")
                if model:
                    target.pop(key, None)
                else:
                    target[key] = self._defaults[key]
            else:
                target[key] = _normalise(key, value, where)
        merged = {**self._global, **target} if model else target
        if merged["trace_level"] != ["OFF"] and not self.exporting:
            raise InvalidInput(f"{where}: tracing needs an exporter; start the server with --trace-otlp-endpoint")
        if model:
            self._models[model] = target
        else:
            self._global = target
        self._rebuild(model, changes)
        return self.settings(model)

    # TraceSettingsApi: the same, for the transports.
    async def trace_settings(self, model: str = "") -> dict[str, SettingValue]:
        return self.settings(model)

    async def update_trace_settings(self, model: str, changes: Mapping[str, SettingValue | None]) -> dict[str, SettingValue]:
        return self.update(model, changes)

    def _scope(self, settings: Mapping[str, SettingValue]) -> _Scope:
        return _Scope(
            on=settings["trace_level"] != ["OFF"],
            rate=int(str(settings["trace_rate"])),
            count=int(str(settings["trace_count"])),
        )

    def _rebuild(self, model: str, changes: Mapping[str, SettingValue | None]) -> None:
        # A scope's counters restart only when its rate or count is set; a level change keeps them.
        def rebuilt(old: _Scope, settings: Mapping[str, SettingValue]) -> _Scope:
            new = self._scope(settings)
            if "trace_count" not in changes:
                new.count = old.count
            if "trace_rate" not in changes:
                new.seen = old.seen
            return new

        if model:
            old = self._scopes.get(model, self._global_scope)
            self._scopes[model] = rebuilt(old, {**self._global, **self._models[model]})
        else:
            self._global_scope = rebuilt(self._global_scope, self._global)
            for name, overrides in self._models.items():
                self._scopes[name] = rebuilt(self._scopes.get(name, self._global_scope), {**self._global, **overrides})
        self.active = self._global_scope.on or any(scope.on for scope in self._scopes.values())

    # ---- the request path ---------------------------------------------------------------------

    def sample(self, model: str, parent_sampled: bool | None = None) -> bool:
        """Whether to trace this request of `model`. A caller's W3C trace flag (`parent_sampled`)
        decides for the requests that carry one; the others are traced one in every trace_rate."""
        if not self.active:
            return False
        scope = self._scopes.get(model, self._global_scope) if self._scopes else self._global_scope
        if not scope.on or scope.count == 0:
            return False
        if parent_sampled is None:
            scope.seen += 1
            if (scope.seen - 1) % scope.rate:
                return False
        elif not parent_sampled:
            return False
        if scope.count > 0:
            scope.count -= 1
        return True

"""The admin operations, transport-free: token check, control-mode rules, parameter decoding, the index.

runtime/server/repository.py carries them over HTTP (Triton's model-repository extension plus our
swap controls) and gRPC; neither walks the registry itself.
"""
from __future__ import annotations

import hmac
import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from runtime.config import Settings
from runtime.errors import Code, InvalidInput, RuntimeServingError, quoted
from runtime.repository.model_config import config_from_json
from runtime.repository.registry import ModelRegistry, decode_file_parameter
from runtime.repository.store import MAX_VERSION, VERSION, check_model_name


UNLOAD_DEPENDENTS = "unload_dependents"  # Triton's unload parameter (model_repository(unload_dependents))


class Unauthenticated(RuntimeServingError):
    code = Code.UNAUTHENTICATED


class NotAllowed(RuntimeServingError):
    code = Code.FAILED_PRECONDITION


# Traffic weights are relative; the bound keeps their sums finite and the split exact.
MAX_TRAFFIC_WEIGHT = 1e9
LABEL = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")


def kind_of(value: object) -> str:
    return "null" if value is None else type(value).__name__


def parse_json_text(text: object, where: str) -> Any:
    """A JSON document carried in a string parameter; orjson bounds nesting and refuses NaN and Infinity."""
    if not isinstance(text, str):
        raise InvalidInput(f"{where} must be a string holding JSON, got {kind_of(text)}")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{where} is not JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One line of the repository index: a model version, or a model with no version loaded (version None)."""

    name: str
    state: str
    reason: str
    version: str | None = None
    traffic_weight: float | None = None  # its share of the traffic, when the model has weights set
    labels: tuple[str, ...] | None = None  # the labels naming it, when any do


def check_token(settings: Settings, credential: str | None) -> None:
    """The bearer-token check of every admin call (none when no token is configured)."""
    token = settings.admin_token
    if not token:
        return
    expected = f"Bearer {token}"
    if credential is None or not hmac.compare_digest(credential.encode(), expected.encode()):
        raise Unauthenticated("the admin API needs 'Authorization: Bearer <token>' with the configured token")


class AdminApi(Protocol):
    """What runtime/server/repository.py calls: the Admin in this process, or a front end's RemoteAdmin
    (runtime/frontend.py). authenticate is local in both (the token is in the settings)."""

    def authenticate(self, credential: str | None) -> None: ...
    async def index(self, ready_only: bool) -> list[IndexRow]: ...
    async def load(self, name: str, parameters: dict[str, Any], binary_files: bool = False) -> list[int]: ...
    async def unload(self, name: str, parameters: dict[str, Any] | None = None) -> None: ...
    async def rollback(self, name: str) -> list[int]: ...
    async def traffic(self, name: str, weights: Any) -> None: ...
    async def labels(self, name: str, labels: Any) -> None: ...


class Admin:
    """Transport-free admin operations: token check, control-mode rules, parameter decoding."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    def authenticate(self, credential: str | None) -> None:
        check_token(self.settings, credential)

    def _allow_changes(self) -> None:
        mode = self.settings.model_control_mode
        if mode == "none":
            raise NotAllowed("model changes are not allowed in --model-control-mode none (use explicit)")
        if mode == "poll":
            raise NotAllowed("model changes through the API are not allowed in --model-control-mode poll")

    async def index(self, ready_only: bool) -> list[IndexRow]:
        """Every version the registry knows (loaded, failed or unloaded) and every model in the repository."""
        rows: list[IndexRow] = []
        known = set()
        for entry in self.registry.entries():
            known.add(entry.name)
            records = {**entry.unloaded, **entry.failed, **entry.serving}
            if not records:
                if not ready_only:
                    rows.append(IndexRow(entry.name, "UNAVAILABLE", entry.error or "not loaded"))
                continue
            labels_by_version: dict[int, list[str]] = {}
            for label, version in entry.labels.items():
                labels_by_version.setdefault(version, []).append(label)
            total = sum(entry.weights.values())
            for version, record in sorted(records.items()):
                serving = version in entry.serving
                if ready_only and not serving:
                    continue
                weight = entry.weights.get(version, 0.0) / total if serving and entry.weights else None
                labels = tuple(sorted(labels_by_version[version])) if serving and version in labels_by_version else None
                state, reason = record.state.value, record.reason
                if serving and record.served is not None and (why := self.registry.unready_step(record.served)):
                    state, reason = "UNAVAILABLE", why  # an ensemble whose step's model is not serving
                    if ready_only:
                        continue
                rows.append(IndexRow(entry.name, state, reason, str(version), weight, labels))
        if not ready_only:
            for name in self.registry.store.model_names():
                if name not in known:
                    rows.append(IndexRow(name, "UNAVAILABLE", "not loaded"))
        return rows

    async def load(self, name: str, parameters: dict[str, Any], binary_files: bool = False) -> list[int]:
        """Triton's load: `config` (JSON text) and `file:<version>/<path>` (base64 text, or bytes when `binary_files`)."""
        self._allow_changes()
        check_model_name(name)
        override = None
        files: dict[str, bytes] = {}
        for key, value in parameters.items():
            if key == "config":
                where = f"model {name!r}: load parameter 'config'"
                doc = parse_json_text(value, where)
                if not isinstance(doc, dict):
                    raise InvalidInput(f"{where} must be a JSON object (a model configuration), got {kind_of(doc)}")
                try:
                    override = config_from_json(doc, where)
                except (TypeError, ValueError, RecursionError) as exc:  # ParseDict's own, beside ParseError
                    raise InvalidInput(f"{where} is not a model configuration: {quoted(str(exc))}") from None
            elif key.startswith("file:"):
                path, content = decode_file_parameter(name, key, value, binary_files)
                files[path] = content
            else:
                raise InvalidInput(f"model {name!r}: unknown load parameter {quoted(key)} (config, file:<version>/<path>)")
        if files and override is None:
            raise InvalidInput(f"model {name!r}: file: parameters need a 'config' parameter too (as Triton's API requires)")
        return await self.registry.load(name, override, files or None)

    async def unload(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """Triton's unload; its one parameter, unload_dependents (a boolean), unloads an ensemble's composing
        models too (ModelRegistry.unload)."""
        self._allow_changes()
        check_model_name(name)
        dependents = False
        for key, value in (parameters or {}).items():
            if key != UNLOAD_DEPENDENTS:
                raise InvalidInput(f"model {name!r}: unknown unload parameter {quoted(key)} ({UNLOAD_DEPENDENTS})")
            if not isinstance(value, bool):
                raise InvalidInput(
                    f"model {name!r}: unload parameter {UNLOAD_DEPENDENTS!r} must be true or false, got {kind_of(value)}"
                )
            dependents = value
        await self.registry.unload(name, dependents=dependents)

    async def rollback(self, name: str) -> list[int]:
        self._allow_changes()
        return await self.registry.rollback(name)

    async def traffic(self, name: str, weights: Any) -> None:
        self._allow_changes()
        check_model_name(name)
        if not isinstance(weights, dict):
            raise InvalidInput(f'model {name!r}: traffic needs {{"weights": {{"<version>": <weight>, ...}}}}, got {kind_of(weights)}')
        parsed: dict[int, float] = {}
        for version, weight in weights.items():
            where = f"model {name!r}: traffic weight for version {quoted(version)}"
            if not isinstance(version, str) or not VERSION.match(version) or int(version) > MAX_VERSION:
                raise InvalidInput(f"{where}: the key must be a version number (1 to {MAX_VERSION})")
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise InvalidInput(f"{where} must be a number, got {kind_of(weight)}")
            finite = isinstance(weight, int) or math.isfinite(weight)  # ints compare exactly, however large
            if not finite or not 0 <= weight <= MAX_TRAFFIC_WEIGHT:
                raise InvalidInput(f"{where} must be between 0 and {MAX_TRAFFIC_WEIGHT:g}, got {quoted(weight)}")
            parsed[int(version)] = float(weight)
        self.registry.set_traffic(name, parsed)

    async def labels(self, name: str, labels: Any) -> None:
        self._allow_changes()
        check_model_name(name)
        if not isinstance(labels, dict):
            raise InvalidInput(f'model {name!r}: labels needs {{"labels": {{"<label>": <version number>, ...}}}}, got {kind_of(labels)}')
        for label, version in labels.items():
            if not isinstance(label, str) or not LABEL.match(label) or label.isdigit():
                raise InvalidInput(
                    f"model {name!r}: label {quoted(label)} must be 1-64 letters, digits, '_', '-', '.', not all digits"
                )
            if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
                raise InvalidInput(
                    f"model {name!r}: label {label!r} must name a version number (1 to {MAX_VERSION}), got {quoted(version)}"
                )
        self.registry.set_labels(name, labels)

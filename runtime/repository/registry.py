"""Model name -> versions -> live ServedModel, and the hot-swap operations on that map.

Swap order (never unload before the replacement serves): load the new versions beside the old,
warm them up, switch routing in one assignment, then drain the old versions' queued and running
requests and only then free them. A failed load changes nothing that serves.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from runtime import ensemble
from runtime.config import Settings
from runtime.errors import (
    Code,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    RuntimeServingError,
    Unavailable,
    quoted,
)
from runtime.model import ModelState, ServedModel
from runtime.monitoring.observer import NullObserver, Observer
from runtime.repository import loader
from runtime.repository import model_config as mcfg
from runtime.sequence import SequenceDirectory
from runtime.repository.store import ModelDir, RepositoryStore, StagedUpload, check_model_name, stage_upload

log = logging.getLogger(__name__)

T = TypeVar("T")


class MemoryBudgetExceeded(RuntimeServingError):
    code = Code.RESOURCE_EXHAUSTED


@dataclass(slots=True)
class VersionRecord:
    name: str
    version: int
    state: ModelState
    reason: str = ""
    served: ServedModel | None = None
    load_seconds: float = 0.0
    estimated_bytes: int = 0
    fingerprint: loader.VersionFingerprint | None = None


@dataclass(slots=True)
class Snapshot:
    """What a model served before a change, for rollback."""

    versions: tuple[int, ...]
    override: mcfg.ModelConfig | None
    weights: dict[int, float]
    labels: dict[str, int]


@dataclass(slots=True)
class ModelEntry:
    name: str
    serving: dict[int, VersionRecord] = field(default_factory=dict)  # READY versions, routable
    failed: dict[int, VersionRecord] = field(default_factory=dict)  # last failure per version
    unloaded: dict[int, VersionRecord] = field(default_factory=dict)
    # Stopped serving, not yet drained and freed. Not `unloaded`: a reload of the same version
    # replaces its record there, and the replaced one must still be closed.
    retiring: list[VersionRecord] = field(default_factory=list)
    weights: dict[int, float] = field(default_factory=dict)  # traffic split for requests naming no version
    labels: dict[str, int] = field(default_factory=dict)  # e.g. stable -> 1, canary -> 2
    history: list[Snapshot] = field(default_factory=list)
    override: mcfg.ModelConfig | None = None
    error: str = ""  # model-level failure (bad config.pbtxt, no versions)
    # Live sequences of every version (sequence batching): a sequence finishes on the version it started on.
    sequences: SequenceDirectory[ServedModel] = field(default_factory=SequenceDirectory)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _credit: dict[int, float] = field(default_factory=dict)  # smooth weighted round-robin state
    _default: ServedModel | None = None

    def snapshot(self) -> Snapshot:
        return Snapshot(tuple(sorted(self.serving)), self.override, dict(self.weights), dict(self.labels))

    def refresh_default(self) -> None:
        ready = [v for v, r in self.serving.items() if r.served is not None]
        self._default = self.serving[max(ready)].served if ready else None
        self.weights = {v: w for v, w in self.weights.items() if v in self.serving and w > 0}
        self._credit = {v: 0.0 for v in self.weights}

    def route(self) -> ServedModel | None:
        """The version a request naming no version goes to: split by weight, else the latest."""
        if not self.weights:
            return self._default
        # Smooth weighted round-robin: exact proportions, no randomness, no bursts.
        total = 0.0
        best = -1
        for version, weight in self.weights.items():
            self._credit[version] += weight
            total += weight
            if best < 0 or self._credit[version] > self._credit[best]:
                best = version
        self._credit[best] -= total
        return self.serving[best].served


MAX_HISTORY = 16


class ModelRegistry:
    def __init__(self, store: RepositoryStore, settings: Settings, observer: Observer | None = None) -> None:
        self._store = store
        self._settings = settings
        self.observer: Observer = observer or NullObserver()
        self._entries: dict[str, ModelEntry] = {}
        self._pulling: set[str] = set()  # ensembles loading their composing models (_load_composing)
        self._sequence_drains: set[asyncio.Task[None]] = set()  # retired versions finishing their live sequences
        # Called, synchronously, after every change to what serves (versions, routing, labels): the engine
        # process of --workers N marks its front ends' catalogues stale there (runtime/catalogue.py).
        self.listeners: list[Callable[[], None]] = []

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    @property
    def store(self) -> RepositoryStore:
        return self._store

    # ---- loading and swapping ---------------------------------------------------------------

    async def load_all(self) -> None:
        # Ensembles after the models their steps name, so that each step finds its model serving.
        for name in self.load_order(self._store.model_names()):
            await self.load_model(name)

    def load_order(self, names: list[str]) -> list[str]:
        """`names` with each ensemble after the models its steps name (the start-up load and the poller)."""
        return ensemble.load_order(names, {n: needs for n in names if (needs := self._ensemble_needs(n)) is not None})

    async def _load_composing(self, name: str, override: mcfg.ModelConfig | None) -> None:
        """As Triton: loading an ensemble first loads the models its steps name that are not serving yet
        (with --model-control-mode explicit, `--load-model pipeline` alone serves the pipeline). A model
        that cannot load is logged; the ensemble's own load then fails naming the step."""
        needs = self._ensemble_needs(name, override)
        if not needs:
            return
        self._pulling.add(name)  # ensembles whose models are loading: a cycle of them stops here
        try:
            for model in sorted(needs - self._pulling):
                entry = self._entries.get(model)
                if (entry is not None and entry.serving) or self._store.model(model) is None:
                    continue
                await self.load_model(model)
        finally:
            self._pulling.discard(name)

    def _ensemble_needs(self, name: str, override: mcfg.ModelConfig | None = None) -> set[str] | None:
        """The models an ensemble's steps name; None for a model that is no ensemble (or has no readable config)."""
        model_dir = self._store.model(name)
        try:
            declared = override or (mcfg.read_config_file(model_dir.path) if model_dir is not None else None)
        except ModelLoadError:
            return None
        if declared is None or not mcfg.is_ensemble(declared):
            return None
        return {step.model_name for step in declared.ensemble_scheduling.step}

    async def load_model(self, name: str) -> None:
        """Load at start-up: a failure is recorded for the index, never raised."""
        try:
            await self.load(name)
        except RuntimeServingError as exc:
            log.error("model %r cannot load: %s", name, exc.message)

    def _entry(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = ModelEntry(name)
        return entry

    async def load(
        self,
        name: str,
        override: mcfg.ModelConfig | None = None,
        files: dict[str, bytes] | None = None,
        allowed_versions: set[int] | None = None,
    ) -> list[int]:
        """Load (or reload) a model per its version policy and swap it in; returns the serving versions.

        Raises ModelLoadError (and changes nothing that serves) if any selected version fails.
        """
        check_model_name(name)
        await self._load_composing(name, override)
        entry = self._entry(name)
        async with entry.lock:
            # Uploaded files are loaded from a staging directory and enter the repository (as new
            # version directories) only once every selected version loaded and warmed up.
            upload = await _stage(self._store.root, name, files) if files else None
            try:
                model_dir = upload.model_dir if upload is not None else self._store.model(name)
                if model_dir is None:
                    if not entry.serving:
                        self._entries.pop(name, None)
                    raise ModelNotFound(f"no model named {name!r} in the repository {self._store.root}")
                try:
                    declared = override if override is not None else mcfg.read_config_file(model_dir.path)
                    versions = loader.select_versions(model_dir, declared, allowed_versions)
                except ModelLoadError as exc:
                    entry.error = exc.message
                    raise
                if upload is not None:
                    upload.check_selected(versions)
                entry.error = ""
                new_records = await self._load_versions(entry, model_dir, declared, versions)
                if upload is not None:
                    try:
                        upload.commit()  # renames only: quick, and on the loop so no cancellation splits it
                    except BaseException:
                        for version, record in new_records.items():
                            if entry.serving.get(version) is not record and record.served is not None:
                                await record.served.close()  # never served: nothing to drain
                        raise
                self._swap(entry, new_records, override)
            finally:
                if upload is not None and upload.committed:
                    upload.discard()  # an empty directory at most; no await, so nothing cancels the retire below
                elif upload is not None:
                    await _finish_in_thread(upload.discard)
        await self._retire(entry, new_records)
        return sorted(new_records)

    async def _load_versions(
        self, entry: ModelEntry, model_dir: ModelDir, declared: mcfg.ModelConfig, versions: list[int]
    ) -> dict[int, VersionRecord]:
        records: dict[int, VersionRecord] = {}
        fresh: list[ServedModel] = []
        try:
            to_load = []
            for version in versions:
                stamp = loader.fingerprint(model_dir, version, declared)
                current = entry.serving.get(version)
                if current is not None and current.fingerprint == stamp:
                    records[version] = current  # unchanged: keep serving it as it is
                else:
                    to_load.append((version, stamp))
            try:
                self._check_budget(entry, model_dir, declared, [v for v, _ in to_load])
            except MemoryBudgetExceeded as exc:
                # Shown in the index and in "not ready" answers, like any other failed version.
                for version, _ in to_load:
                    entry.failed[version] = VersionRecord(entry.name, version, ModelState.UNAVAILABLE, exc.message)
                log.error("%s", exc.message)
                raise
            for version, stamp in to_load:
                started = time.monotonic()
                try:
                    served = await asyncio.to_thread(
                        loader.load_version, model_dir, version, declared, self._settings, self.observer
                    )
                except ModelLoadError as exc:
                    entry.failed[version] = VersionRecord(entry.name, version, ModelState.UNAVAILABLE, exc.message)
                    log.error("model %r version %d failed to load: %s", entry.name, version, exc.message)
                    raise
                fresh.append(served)
                if served.sequencer is not None:
                    served.sequencer.directory = entry.sequences
                if isinstance(served.backend, ensemble.EnsembleBackend):
                    self._check_ensemble(entry, served, served.backend.graph)
                records[version] = VersionRecord(
                    entry.name,
                    version,
                    ModelState.READY,
                    served=served,
                    load_seconds=time.monotonic() - started,
                    estimated_bytes=loader.estimate_bytes(model_dir, version, declared),
                    fingerprint=stamp,
                )
                entry.failed.pop(version, None)
                log.info(
                    "model %r version %d ready on %s (%.2fs)",
                    entry.name, version, ",".join(served.backend.providers), time.monotonic() - started,
                )
        except BaseException:
            for served in fresh:  # never served: nothing to drain
                await served.close()
            raise
        return records

    def _check_ensemble(self, entry: ModelEntry, served: ServedModel, graph: ensemble.Graph) -> None:
        """The ensemble's steps against the versions serving now; a misfit fails the version's load."""
        try:
            ensemble.check(served.config, graph, self._composing)
        except ModelLoadError as exc:
            entry.failed[served.version] = VersionRecord(entry.name, served.version, ModelState.UNAVAILABLE, exc.message)
            log.error("model %r version %d failed to load: %s", entry.name, served.version, exc.message)
            raise

    def _composing(self, name: str, version: int) -> ensemble.Composing:
        """What serves for an ensemble step naming `name` (version <= 0: the latest serving version)."""
        entry = self._entries.get(name)
        serving = {v: r.served for v, r in entry.serving.items() if r.served is not None} if entry else {}
        if not serving:
            raise ModelNotFound(f"model {quoted(name)} is not loaded")
        served = serving.get(version) if version > 0 else serving[max(serving)]
        if served is None:
            raise ModelNotFound(f"model {quoted(name)} has no version {version} serving (serving: {sorted(serving)})")
        return ensemble.Composing(
            served.label, served.max_batch_size, served.inputs, served.outputs, served.optional_inputs, served.config.ensemble_steps
        )

    def _check_budget(self, entry: ModelEntry, model_dir: ModelDir, declared: mcfg.ModelConfig, versions: list[int]) -> None:
        budget = self._settings.model_memory_budget_bytes
        if not budget or not versions:
            return
        needed = sum(loader.estimate_bytes(model_dir, v, declared) for v in versions)
        # During a swap old and new versions are both in memory.
        in_use = sum(r.estimated_bytes for e in self._entries.values() for r in e.serving.values())
        if in_use + needed > budget:
            raise MemoryBudgetExceeded(
                f"model {entry.name!r}: loading versions {versions} needs about {needed} bytes; "
                f"{in_use} of the {budget}-byte memory budget are in use"
            )

    def _swap(self, entry: ModelEntry, new_records: dict[int, VersionRecord], override: mcfg.ModelConfig | None) -> None:
        if entry.serving:
            entry.history.append(entry.snapshot())
            del entry.history[:-MAX_HISTORY]
        old = entry.serving
        entry.serving = dict(new_records)  # the switch: one assignment
        entry.override = override
        entry.labels = {label: v for label, v in entry.labels.items() if v in entry.serving}
        entry.refresh_default()
        for version, record in old.items():
            if entry.serving.get(version) is not record:
                record.state = ModelState.UNLOADING
                entry.unloaded[version] = record
                entry.retiring.append(record)
        for version in entry.serving:
            entry.unloaded.pop(version, None)
        self._changed()

    async def _retire(self, entry: ModelEntry, keep: dict[int, VersionRecord]) -> None:
        """Drain and free the versions that stopped serving in a swap or unload.

        Each retired version is closed exactly once (its threads joined, its sessions released) and
        then dropped, so reference counting frees it here, not a later garbage collection.
        """
        kept = {id(r) for r in keep.values()}
        retiring = [r for r in entry.retiring if id(r) not in kept]
        entry.retiring = [r for r in entry.retiring if id(r) in kept]  # taken: a concurrent call skips them
        for record in retiring:
            if record.served is None:
                continue
            sequencer = record.served.sequencer
            if sequencer is not None and sequencer.live:
                # Its live sequences finish on it (sequence batching): the load or unload returns now and
                # the version is freed once the last one has ended or been released as idle.
                task = asyncio.get_running_loop().create_task(self._close_record(record), name=f"retire:{entry.name}")
                self._sequence_drains.add(task)
                task.add_done_callback(self._sequence_drains.discard)
                task.add_done_callback(_log_drain_failure)
                continue
            await self._close_record(record)

    @staticmethod
    async def _close_record(record: VersionRecord) -> None:
        assert record.served is not None
        try:
            await record.served.close()
        finally:
            record.served = None
            record.state = ModelState.UNAVAILABLE
            record.reason = "unloaded"

    async def unload(self, name: str, *, dependents: bool = False) -> None:
        """Stop serving every version of `name`, then drain and free them. With `dependents` (Triton's
        unload_dependents), an ensemble's composing models go too, through nested ensembles, except those
        an ensemble that still serves needs."""
        check_model_name(name)
        entry = self._entries.get(name)
        if entry is None or not entry.serving:
            raise ModelNotFound(f"model {name!r} is not loaded")
        composing = self._ensemble_needs(name, entry.override) if dependents else None
        async with entry.lock:
            entry.history.append(entry.snapshot())
            for version, record in entry.serving.items():
                record.state = ModelState.UNLOADING
                entry.unloaded[version] = record
                entry.retiring.append(record)
            entry.serving = {}
            entry.refresh_default()
            self._changed()
        await self._retire(entry, {})
        if composing:
            await self._unload_composing(composing)

    async def _unload_composing(self, models: set[str]) -> None:
        needed: set[str] = set()  # by the ensembles that still serve
        for other in self._entries.values():
            if other.serving:
                needed |= self._ensemble_needs(other.name, other.override) or set()
        for model in sorted(models - needed):
            entry = self._entries.get(model)
            if entry is not None and entry.serving:
                await self.unload(model, dependents=True)

    async def rollback(self, name: str) -> list[int]:
        """Serve again what the model served before its last load or unload."""
        check_model_name(name)
        entry = self._entries.get(name)
        if entry is None or not entry.history:
            raise InvalidInput(f"model {name!r} has no earlier state to roll back to")
        previous = entry.history[-1]
        versions = await self.load(name, previous.override, allowed_versions=set(previous.versions))
        async with entry.lock:
            # The load pushed the state we left; both it and the one we restored are used up.
            del entry.history[-2:]
            entry.weights = {v: w for v, w in previous.weights.items() if v in entry.serving}
            entry.labels = {label: v for label, v in previous.labels.items() if v in entry.serving}
            entry.refresh_default()
            self._changed()
        return versions

    def set_traffic(self, name: str, weights: dict[int, float]) -> None:
        entry = self._serving_entry(name)
        for version, weight in weights.items():
            if version not in entry.serving:
                raise InvalidInput(f"model {name!r}: version {version} is not serving (serving: {sorted(entry.serving)})")
            if weight < 0:
                raise InvalidInput(f"model {name!r}: weight for version {version} must be >= 0, got {weight}")
        if weights and not any(w > 0 for w in weights.values()):
            raise InvalidInput(f"model {name!r}: at least one weight must be positive")
        entry.weights = dict(weights)
        entry.refresh_default()
        self._changed()

    def set_labels(self, name: str, labels: dict[str, int]) -> None:
        entry = self._serving_entry(name)
        for label, version in labels.items():
            if not label or label.isdigit():
                raise InvalidInput(f"model {name!r}: label {quoted(label)} must be a non-numeric name")
            if version not in entry.serving:
                raise InvalidInput(f"model {name!r}: label {quoted(label)} names version {version}, which is not serving")
        entry.labels = dict(labels)
        self._changed()

    def _serving_entry(self, name: str) -> ModelEntry:
        check_model_name(name)
        entry = self._entries.get(name)
        if entry is None or not entry.serving:
            raise ModelNotFound(f"model {name!r} is not loaded")
        return entry

    # ---- lookup (hot path) ------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ServedModel:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {quoted(name)}")
        if not version:
            served = entry.route()
            if served is None:
                raise Unavailable(f"model {name!r} is not ready: {self._why_not_ready(entry)}")
            return served
        return self._version_record(entry, version).served or self._not_ready(entry, version)

    def _not_ready(self, entry: ModelEntry, version: str) -> ServedModel:
        raise Unavailable(f"model {entry.name!r} version {version} is not ready: {self._why_not_ready(entry, version)}")

    def _why_not_ready(self, entry: ModelEntry, version: str = "") -> str:
        if entry.error:
            return entry.error
        records = [entry.failed.get(int(version))] if version.isdigit() else list(entry.failed.values())
        reasons = [r.reason for r in records if r is not None]
        if reasons:
            return reasons[-1]
        return "it is not loaded" if not entry.lock.locked() else "it is loading"

    def _version_record(self, entry: ModelEntry, version: str) -> VersionRecord:
        number = entry.labels.get(version) if not version.isdigit() else int(version)
        if number is None:
            raise ModelNotFound(
                f"model {entry.name!r} has no version or label {quoted(version)}"
                + (f" (labels: {', '.join(sorted(entry.labels))})" if entry.labels else "")
            )
        record = entry.serving.get(number) or entry.failed.get(number) or entry.unloaded.get(number)
        if record is None:
            known = sorted(entry.serving)
            raise ModelNotFound(
                f"model {entry.name!r} has no version {number} (available: {', '.join(map(str, known)) or 'none'})"
            )
        return record

    def record(self, name: str, version: str = "") -> VersionRecord:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {quoted(name)}")
        if not version:
            if entry.serving:
                return entry.serving[max(entry.serving)]
            records = [*entry.failed.values(), *entry.unloaded.values()]
            if records:
                return max(records, key=lambda r: r.version)
            return VersionRecord(name, 0, ModelState.UNAVAILABLE, entry.error or "not loaded")
        return self._version_record(entry, version)

    def unready_step(self, served: ServedModel, seen: frozenset[str] = frozenset()) -> str | None:
        """Why an ensemble cannot serve now (a step's model is not serving, itself or through its own
        steps), or None: ready, as is every model that is no ensemble."""
        for step in served.config.ensemble_steps:
            where = f"step model {quoted(step.model_name)}"
            try:
                record = self.record(step.model_name, str(step.model_version) if step.model_version > 0 else "")
            except Exception:
                return f"{where} is not loaded"
            if record.state is not ModelState.READY or record.served is None:
                return f"{where} is not ready ({record.reason or record.state.value})"
            if step.model_name not in seen:
                reason = self.unready_step(record.served, seen | {served.name})
                if reason is not None:
                    return f"{where}: {reason}"
        return None

    def ready_versions(self, name: str) -> list[int]:
        entry = self._entries.get(name)
        return sorted(entry.serving) if entry else []

    def records(self) -> list[VersionRecord]:
        """Every version the registry knows: serving, failed, unloaded (one record per version)."""
        result: list[VersionRecord] = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            merged = {**entry.unloaded, **entry.failed, **entry.serving}
            result.extend(record for _, record in sorted(merged.items()))
        return result

    def entry(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def entries(self) -> list[ModelEntry]:
        return [self._entries[name] for name in sorted(self._entries)]

    def model_errors(self) -> dict[str, str]:
        return {name: e.error for name, e in self._entries.items() if e.error}

    def served_models(self) -> list[ServedModel]:
        return [r.served for e in self._entries.values() for r in e.serving.values() if r.served is not None]

    async def close(self) -> None:
        """Drain and unload every model version."""
        for entry in list(self._entries.values()):
            for record in [*entry.serving.values(), *entry.unloaded.values()]:
                if record.served is not None and record.served.sequencer is not None:
                    record.served.sequencer.release_all("the server is shutting down")  # none can continue now
            for version, record in entry.serving.items():
                record.state = ModelState.UNLOADING
                entry.unloaded[version] = record
                entry.retiring.append(record)
            entry.serving = {}
            entry.refresh_default()
        await asyncio.gather(*(self._retire(entry, {}) for entry in self._entries.values()), *self._sequence_drains)


def _log_drain_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("retiring a sequence model version failed", exc_info=task.exception())


async def _finish_in_thread(work: Callable[[], T]) -> T:
    """Run blocking disk work in a thread and, if the caller is cancelled, still wait for it to end,
    so that the cleanup after it never runs beside it."""
    future = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        raise


async def _stage(root: Path, name: str, files: dict[str, bytes]) -> StagedUpload:
    future = asyncio.ensure_future(asyncio.to_thread(stage_upload, root, name, files))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        if not future.cancelled() and future.exception() is None:
            future.result().discard()  # staged for a caller that is gone
        raise


def decode_file_parameter(model: str, key: str, value: object, binary: bool) -> tuple[str, bytes]:
    """Triton's `file:<path>` load parameter: base64 text over HTTP (`binary` False), bytes over gRPC."""
    path = key[len("file:"):]
    where = f"model {model!r}: load parameter {quoted(key)}"
    if binary:
        if not isinstance(value, bytes):
            raise InvalidInput(f"{where} must carry the file's contents as bytes_param, got {_kind(value)}")
        return path, value
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string of base64-encoded file contents, got {_kind(value)}")
    try:
        return path, base64.b64decode(value, validate=True)
    except ValueError:
        raise InvalidInput(f"{where} must be base64-encoded file contents") from None


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__

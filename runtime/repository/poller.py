"""--model-control-mode poll: rescan the repository and load, reload or unload what changed.

A version still being written is not loaded: a version directory counts only once its model
file exists, its files' sizes and modification times are the same in two consecutive scans, and
none of its files changed (mtime or ctime, so copies that preserve mtimes count from when they
landed) for `quiet_s`. A writer that pauses longer than that mid-file can still be seen; renaming
a finished directory into place is the one way that is always safe.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

from runtime.errors import RuntimeServingError
from runtime.repository import loader
from runtime.repository import model_config as mcfg
from runtime.repository.registry import ModelRegistry
from runtime.repository.store import ModelDir

log = logging.getLogger(__name__)

# (config.pbtxt stat, {version: files fingerprint})
ModelScan = tuple[tuple[int, int] | None, dict[int, tuple[tuple[str, int, int], ...]]]


@dataclass
class RepositoryPoller:
    registry: ModelRegistry
    interval_s: float
    quiet_s: float = 0.0

    def __post_init__(self) -> None:
        self._previous: dict[str, ModelScan] = {}
        self._applied: dict[str, ModelScan] = {}

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed; trying again in %.0fs", self.interval_s)

    def prime(self) -> None:
        """Record the start-up state as already applied (the models were just loaded from it)."""
        scans = self._scan_all()
        self._previous = dict(scans)
        self._applied = dict(scans)

    async def poll_once(self) -> None:
        scans = await asyncio.to_thread(self._scan_all)
        for name in sorted(set(self._applied) - set(scans)):
            if self.registry.ready_versions(name):
                log.info("poll: model %r left the repository; unloading", name)
                await self._quietly(self.registry.unload(name))
            self._applied.pop(name, None)
        for name in self.registry.load_order(list(scans)):  # ensembles after the models they use
            scan = scans[name]
            previous = self._previous.get(name)
            stable = _stable_part(scan, previous)
            if stable == self._applied.get(name) or not stable[1]:
                continue
            log.info("poll: model %r changed; loading versions %s", name, sorted(stable[1]))
            self._applied[name] = stable
            await self._quietly(self.registry.load(name, allowed_versions=set(stable[1])))
        self._previous = scans

    async def _quietly(self, operation: object) -> None:
        try:
            await operation  # type: ignore[misc]
        except RuntimeServingError as exc:
            log.error("poll: %s", exc.message)

    def _scan_all(self) -> dict[str, ModelScan]:
        scans = {}
        for name in self.registry.store.model_names():
            model_dir = self.registry.store.model(name)
            if model_dir is not None:
                scans[name] = _scan(model_dir, self.quiet_s)
        return scans


def _last_change_ns(version_dir: str) -> int:
    newest = 0
    for root, _, names in os.walk(version_dir):
        for name in names:
            try:
                stat = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            newest = max(newest, stat.st_mtime_ns, stat.st_ctime_ns)
    return newest


def _scan(model_dir: ModelDir, quiet_s: float = 0.0) -> ModelScan:
    config_path = model_dir.path / "config.pbtxt"
    try:
        stat = config_path.stat()
        config_stamp: tuple[int, int] | None = (stat.st_size, stat.st_mtime_ns)
    except FileNotFoundError:
        config_stamp = None
    try:
        declared = mcfg.read_config_file(model_dir.path)
    except RuntimeServingError:
        declared = mcfg.ModelConfig()
    versions = {}
    settled_before_ns = time.time_ns() - int(quiet_s * 1e9)
    for version in model_dir.versions():
        if not mcfg.is_ensemble(declared) and not loader.model_path(model_dir, version, declared).is_file():
            continue  # an ensemble's version directory is empty
        if quiet_s > 0 and _last_change_ns(str(model_dir.version_path(version))) > settled_before_ns:
            continue  # still being written, or just finished: look again next scan
        versions[version] = loader.fingerprint(model_dir, version, declared).files
    return config_stamp, versions


def _stable_part(scan: ModelScan, previous: ModelScan | None) -> ModelScan:
    """The versions unchanged since the previous scan (a version still being written is left out)."""
    if previous is None or scan[0] != previous[0]:
        return (scan[0], {}) if previous is None else (scan[0], {})
    return scan[0], {v: files for v, files in scan[1].items() if previous[1].get(v) == files}

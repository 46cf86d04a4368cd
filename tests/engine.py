"""The in-process engine: a registry over a repository folder, loaded, with an Engine on top.

Tests that drive the core without a transport open one through the `open_engine` fixture
(tests/conftest.py), which closes every registry it opened when the test ends; code that is not a
test (or wants its own scope) uses `in_process_engine` as an async context manager.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runtime.config import Settings
from runtime.engine import Engine
from runtime.monitoring.observer import Observer
from runtime.repository.registry import ModelRegistry
from runtime.repository.store import RepositoryStore


@dataclass(frozen=True)
class InProcess:
    registry: ModelRegistry
    engine: Engine
    settings: Settings


@contextlib.asynccontextmanager
async def in_process_engine(
    repo: Path, *, observer: Observer | None = None, load: bool = True, **settings: Any
) -> AsyncIterator[InProcess]:
    """Load every model under repo (unless load=False) and yield the registry and an Engine over it.

    `settings` are Settings fields on top of `model_repository=repo`; the registry is closed on exit.
    """
    resolved = Settings(model_repository=repo, **settings)
    registry = ModelRegistry(RepositoryStore(repo), resolved, observer=observer)
    try:
        if load:
            await registry.load_all()
        yield InProcess(registry, Engine(registry, observer), resolved)
    finally:
        await registry.close()


class OpenEngine(Protocol):
    async def __call__(
        self, repo: Path, *, observer: Observer | None = None, load: bool = True, **settings: Any
    ) -> InProcess: ...

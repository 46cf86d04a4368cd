"""Fixtures for the whole suite.

tests/ is a package (tests/__init__.py): pytest puts the repository root on sys.path, and shared
helpers are imported by their full name (tests.serving, tests.models, tests.monitoring.scrape), so no
helper module shadows a top-level name such as the monitoring/ folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine import InProcess, OpenEngine, in_process_engine


@pytest.fixture
async def open_engine() -> AsyncIterator[OpenEngine]:
    """`await open_engine(repo, **settings)` -> InProcess(registry, engine, settings), closed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_(repo: Path, **options: Any) -> InProcess:
            return await stack.enter_async_context(in_process_engine(repo, **options))

        yield open_


@pytest.fixture(scope="session")
def perf_analyzer() -> Path:
    """The installed perf_analyzer, or a skip that says why it cannot be used (tests/test_perf_analyzer.py)."""
    from tests.test_perf_analyzer import perf_analyzer_or_skip

    return perf_analyzer_or_skip()

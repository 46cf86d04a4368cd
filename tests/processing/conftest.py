"""Fixtures giving each kernel implementation: the numpy twin (_py) and the Cython build (_processing)."""
from __future__ import annotations

from types import ModuleType

import pytest

from runtime.processing import _py

_processing: ModuleType | None
try:
    from runtime.processing import _processing
except ImportError:  # not built: only the twin is tested
    _processing = None

NOT_BUILT = "runtime.processing._processing is not built (run `python setup.py build_ext --inplace`)"


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("python", id="python"),
        pytest.param("cython", id="cython", marks=pytest.mark.skipif(_processing is None, reason=NOT_BUILT)),
    ],
)
def kernels(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation in turn; every unit test runs against both."""
    implementation = _py if request.param == "python" else _processing
    assert implementation is not None
    return implementation


@pytest.fixture(scope="session")
def pure() -> ModuleType:
    return _py


@pytest.fixture(scope="session")
def fast() -> ModuleType:
    """The Cython build, for the fast == pure property tests."""
    if _processing is None:
        pytest.skip(NOT_BUILT)
    assert _processing is not None
    return _processing

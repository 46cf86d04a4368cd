"""Fixtures giving each codec implementation: the numpy reference (_py) and the Cython build (_codec)."""
from __future__ import annotations

from types import ModuleType

import pytest

from runtime.codec import _py

_codec: ModuleType | None
try:
    from runtime.codec import _codec as _built
except ImportError:  # not built: only the reference is tested
    _codec = None
else:
    _codec = _built

NOT_BUILT = "runtime.codec._codec is not built (run `python setup.py build_ext --inplace`)"


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("python", id="python"),
        pytest.param("cython", id="cython", marks=pytest.mark.skipif(_codec is None, reason=NOT_BUILT)),
    ],
)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation in turn; every unit test runs against both."""
    if request.param == "python":
        return _py
    assert _codec is not None
    return _codec


@pytest.fixture(scope="session")
def pure() -> ModuleType:
    return _py


@pytest.fixture(scope="session")
def fast() -> ModuleType:
    """The Cython build, for the fast == pure property tests."""
    if _codec is None:
        pytest.skip(NOT_BUILT)
    return _codec

"""The one switch between a Cython extension and its pure-Python/numpy twin."""
from __future__ import annotations

import importlib
import os
from types import ModuleType


def compiled(module: str) -> ModuleType | None:
    """The built extension, or None when it is missing or RUNTIME_NO_EXTENSIONS=1 forces the twins."""
    if os.environ.get("RUNTIME_NO_EXTENSIONS") == "1":
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None

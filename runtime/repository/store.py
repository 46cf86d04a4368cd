"""Finds models and their versions in a Triton-layout repository on disk. Sync; no asyncio."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import InvalidInput

MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class ModelDir:
    name: str
    path: Path

    def versions(self) -> list[int]:
        """Numeric version directories, ascending."""
        found = []
        for child in self.path.iterdir():
            if child.is_dir() and child.name.isdigit() and not child.name.startswith("0"):
                found.append(int(child.name))
        return sorted(found)

    def version_path(self, version: int) -> Path:
        return self.path / str(version)


def check_model_name(name: str) -> str:
    """Reject names that could leave the repository (`..`, slashes) or are not plain identifiers."""
    if not MODEL_NAME.match(name) or name in (".", ".."):
        raise InvalidInput(
            f"invalid model name {name!r}: use letters, digits, '_', '-', '.' (no path separators, not '..')"
        )
    return name


class RepositoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            child.name
            for child in self.root.iterdir()
            if child.is_dir() and not child.name.startswith(".") and MODEL_NAME.match(child.name)
        )

    def model(self, name: str) -> ModelDir | None:
        check_model_name(name)
        path = self.root / name
        return ModelDir(name, path) if path.is_dir() else None

"""A byte-for-byte picture of a model repository, to show that a failed admin call changed nothing."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree(root: Path) -> dict[str, str]:
    """Relative path -> what is there: 'dir', 'link -> target' or the file's sha256. Hidden entries count."""
    picture: dict[str, str] = {}
    for base, dirs, files in os.walk(root):
        for name in dirs:
            path = Path(base) / name
            picture[str(path.relative_to(root))] = f"link -> {os.readlink(path)}" if path.is_symlink() else "dir"
        for name in files:
            path = Path(base) / name
            if path.is_symlink():
                picture[str(path.relative_to(root))] = f"link -> {os.readlink(path)}"
            else:
                picture[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return picture

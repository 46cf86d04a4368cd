"""The one rule for every file a model's config names: it resolves inside the model's directory.

A config can come from an admin load override, so a name in it is client text. Whatever it names
(default_model_filename, an output's label_filename, a warm-up input_data_file, a processing step's
vocabulary or labels, an ONNX initializer's external data) must be a relative path without `..`
that, after every symlink is followed, still lies inside the model's directory. Refusals read the
same whether the target exists, is unreadable or is missing, and say nothing about it: a caller
learns nothing about the server's files from them.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from runtime.errors import ModelLoadError, quoted

__all__ = ["inside"]


def inside(root: Path, relative: str, what: str, place: str = "model directory") -> Path:
    """`root / relative`, resolved, if it stays inside `root`; else ModelLoadError naming `what`.

    `what` names the model and the field ("model 'mlp': output 'probs': label_filename"); `place`
    names `root` for the message. The file need not exist: callers report a missing file
    themselves, by its relative name, once it is known to be inside.
    """
    refusal = ModelLoadError(
        f"{what}: {quoted(relative)} must be a file name inside the {place} "
        "(relative, without '..', and no symlink on the way may lead outside)"
    )
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise refusal
    parts = PurePosixPath(relative)
    if parts.is_absolute() or ".." in parts.parts:
        raise refusal
    try:
        base = Path(os.path.realpath(root))
        # strict=False: a missing file resolves as far as it exists, so "missing" and "outside"
        # are told apart only for names that stay inside.
        target = Path(os.path.realpath(base / parts))
    except (OSError, ValueError):
        raise refusal from None
    if target != base and base not in target.parents:
        raise refusal
    return target

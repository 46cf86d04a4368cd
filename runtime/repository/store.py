"""Finds models and their versions in a Triton-layout repository on disk, and stages uploads. Sync; no asyncio.

Uploaded files (the admin API's `file:<version>/<path>` load parameters) never touch a version
directory in place: they are written into a hidden staging directory on the repository's own
filesystem, loaded from there, and renamed into place as a whole new version only once the load
succeeded. An existing version's files are never modified.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import Code, InvalidInput, RuntimeServingError, quoted

log = logging.getLogger(__name__)

# \Z, not $: "$" also matches before a trailing newline ("scale\n" would pass).
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\Z")
VERSION = re.compile(r"^[1-9][0-9]{0,18}\Z")
MAX_VERSION = 2**63 - 1  # Triton's versions are int64
# Staging directories start with a dot: the store lists neither them as models nor them as versions.
STAGING_PREFIX = ".upload-"
MAX_UPLOAD_FILES = 1024
MAX_UPLOAD_PATH_BYTES = 1024
MAX_NAME_BYTES = 255  # NAME_MAX on Linux and macOS
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class VersionExists(RuntimeServingError):
    """An upload names a version (or a model path) that is already in the repository."""

    code = Code.FAILED_PRECONDITION


class StorageFull(RuntimeServingError):
    code = Code.RESOURCE_EXHAUSTED


@dataclass(frozen=True, slots=True)
class ModelDir:
    name: str
    path: Path
    # Versions being uploaded: (version, staging directory). They are loaded from there, while the
    # model's own files (config.pbtxt, processing.json, labels, warm-up data) still come from `path`.
    staged: tuple[tuple[int, Path], ...] = ()

    def versions(self) -> list[int]:
        """Numeric version directories (and staged versions), ascending."""
        found = {version for version, _ in self.staged}
        if self.path.is_dir():
            for child in self.path.iterdir():
                if child.is_dir() and child.name.isdigit() and not child.name.startswith("0"):
                    found.add(int(child.name))
        return sorted(found)

    def version_path(self, version: int) -> Path:
        for staged_version, path in self.staged:
            if staged_version == version:
                return path
        return self.path / str(version)


def check_model_name(name: str) -> str:
    """Reject names that could leave the repository (`..`, slashes) or are not plain identifiers."""
    if not MODEL_NAME.match(name) or name in (".", ".."):
        raise InvalidInput(
            f"invalid model name {quoted(name)}: use 1-128 letters, digits, '_', '-', '.' "
            "(no path separators, not '..', not starting with '.')"
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


# ---- uploads ------------------------------------------------------------------------------------


def upload_layout(model: str, files: Mapping[str, bytes]) -> dict[int, dict[tuple[str, ...], bytes]]:
    """Check every uploaded file's path and group the contents by version: {version: {parts: bytes}}.

    A path is `<version>/<name>[/<name>...]`, written exactly so: no leading '/', no empty, '.' or
    '..' segment, no backslash or control character, names of at most 255 bytes. Paths that mean
    the same file in two spellings (`1//a`, `./1/a`) are refused rather than normalised.
    """
    if len(files) > MAX_UPLOAD_FILES:
        raise InvalidInput(f"model {model!r}: {len(files)} uploaded files; at most {MAX_UPLOAD_FILES} per load")
    layout: dict[int, dict[tuple[str, ...], bytes]] = {}
    for raw, content in files.items():
        where = f"model {model!r}: file path {quoted(raw)}"
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput(f"{where} is not valid UTF-8") from None
        if size > MAX_UPLOAD_PATH_BYTES:
            raise InvalidInput(f"{where} is {size} bytes long; at most {MAX_UPLOAD_PATH_BYTES}")
        if _CONTROL.search(raw):
            raise InvalidInput(f"{where} contains a NUL or control character")
        if "\\" in raw:
            raise InvalidInput(f"{where} contains a backslash; separate directories with '/'")
        if raw.startswith("/"):
            raise InvalidInput(f"{where} must be relative to the model directory, not absolute")
        parts = tuple(raw.split("/"))
        if any(part in ("", ".", "..") for part in parts):
            raise InvalidInput(f"{where} has an empty, '.' or '..' segment; write it as '<version>/<file>'")
        if len(parts) < 2 or not VERSION.match(parts[0]) or int(parts[0]) > MAX_VERSION:
            raise InvalidInput(
                f"{where} must start with a version directory (1 to {MAX_VERSION}, no leading zeros), e.g. '3/model.onnx'"
            )
        too_long = [part for part in parts if len(part.encode("utf-8")) > MAX_NAME_BYTES]
        if too_long:
            raise InvalidInput(f"{where} has a name longer than {MAX_NAME_BYTES} bytes")
        layout.setdefault(int(parts[0]), {})[parts[1:]] = content
    for version, contents in layout.items():
        for parts in contents:
            for depth in range(1, len(parts)):
                if parts[:depth] in contents:
                    raise InvalidInput(
                        f"model {model!r}: uploaded path {quoted('/'.join((str(version), *parts[:depth])))} "
                        "is both a file and a directory"
                    )
    return layout


@dataclass(slots=True)
class StagedUpload:
    """Uploaded versions written to a staging directory; `model_dir` loads them from there."""

    model_dir: ModelDir
    staging: Path
    creates_model: bool  # the model is not in the repository yet: the staging directory becomes it
    versions: tuple[int, ...]
    committed: bool = field(default=False)

    def check_selected(self, selected: list[int]) -> None:
        left_out = sorted(set(self.versions) - set(selected))
        if left_out:
            raise InvalidInput(
                f"model {self.model_dir.name!r}: uploaded versions {left_out} are not selected by the model's "
                f"version_policy (it selects {sorted(selected)}); set the policy in the 'config' parameter"
            )

    def commit(self) -> None:
        """Rename the staged versions into the repository: the model at once, or each new version at once."""
        name = self.model_dir.name
        if self.creates_model:
            try:
                _rename_new(self.staging, self.model_dir.path)
            except FileExistsError:
                raise VersionExists(f"model {name!r} appeared in the repository while its upload was loading") from None
            except OSError as exc:
                raise _disk_error(name, "move the uploaded model into the repository", exc) from None
            self.committed = True
            return
        moved: list[int] = []
        try:
            for version in self.versions:
                target = self.model_dir.path / str(version)
                try:
                    _rename_new(self.staging / str(version), target)
                except FileExistsError:
                    raise VersionExists(
                        f"model {name!r} version {version} appeared in the repository while its upload was loading"
                    ) from None
                except OSError as exc:
                    raise _disk_error(name, f"move uploaded version {version} into the repository", exc) from None
                moved.append(version)
        except BaseException:
            for version in reversed(moved):  # all or nothing: a half-committed upload would be served on restart
                try:
                    os.rename(self.model_dir.path / str(version), self.staging / str(version))
                except OSError as exc:
                    log.error("model %r: could not take back uploaded version %d: %s", name, version, exc)
            raise
        self.committed = True

    def discard(self) -> None:
        """Remove the staging directory and whatever is left in it (everything, unless committed)."""
        if os.path.lexists(self.staging):
            remove_tree(self.staging)


def stage_upload(root: Path, name: str, files: Mapping[str, bytes]) -> StagedUpload:
    """Write uploaded files into a hidden staging directory; the repository's versions are not touched.

    Raises InvalidInput for a bad path, VersionExists (409) when a version is already in the repository.
    """
    check_model_name(name)
    layout = upload_layout(name, files)
    model_path = root / name
    creates_model = not os.path.lexists(model_path)
    if not creates_model:
        if not model_path.is_dir():
            raise VersionExists(f"model {name!r}: the repository holds a file of that name, not a model directory")
        existing = sorted(v for v in layout if os.path.lexists(model_path / str(v)))
        if existing:
            raise VersionExists(
                f"model {name!r} version {existing[0]} is already in the repository; its files are never replaced: "
                "upload a new version number (the load's 'config' can choose which versions serve)"
            )
    parent = root if creates_model else model_path
    staging = _make_staging_dir(parent, f"{STAGING_PREFIX}{name}-" if creates_model else STAGING_PREFIX, name)
    try:
        for version, contents in layout.items():
            for parts, content in contents.items():
                path = staging.joinpath(str(version), *parts)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "xb") as handle:
                    handle.write(content)
    except BaseException as exc:
        remove_tree(staging)
        if isinstance(exc, OSError):
            raise _disk_error(name, "write the uploaded files", exc) from None
        raise
    versions = tuple(sorted(layout))
    staged = tuple((version, staging / str(version)) for version in versions)
    return StagedUpload(ModelDir(name, model_path, staged), staging, creates_model, versions)


def remove_tree(path: Path) -> None:
    """Delete a directory we made (symlinks in it are removed, never followed); log what cannot go."""
    try:
        shutil.rmtree(path)
    except OSError as exc:
        log.error("could not remove the staging directory %s: %s", path, exc)


def _make_staging_dir(parent: Path, prefix: str, name: str) -> Path:
    # os.mkdir rather than mkdtemp: the directory gets the umask's mode, which a new model keeps.
    for _ in range(16):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise _disk_error(name, "make a staging directory for the upload", exc) from None
    raise RuntimeServingError(f"model {name!r}: could not find a free staging directory name in {parent}")


def _rename_new(source: Path, target: Path) -> None:
    """Rename `source` to `target`, which must not exist (os.rename would replace an empty directory)."""
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "exists", str(target))
    os.rename(source, target)


def _disk_error(name: str, doing: str, exc: OSError) -> RuntimeServingError:
    message = f"model {name!r}: could not {doing}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(message)
    return RuntimeServingError(message)

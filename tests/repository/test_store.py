"""runtime/repository/store.py directly: what counts as a model and a version, and staged uploads."""
from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import InvalidInput
from runtime.repository.store import (
    STAGING_PREFIX,
    ModelDir,
    RepositoryStore,
    VersionExists,
    check_model_name,
    stage_upload,
    upload_layout,
)


def make(root: Path, *paths: str) -> None:
    for relative in paths:
        path = root / relative
        if relative.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")


def test_models_are_plain_directories_and_versions_positive_numbers(tmp_path: Path) -> None:
    make(tmp_path, "b/1/", "b/10/", "b/02/", "b/x/", "b/3", "a/", ".hidden/1/", f"{STAGING_PREFIX}c-1/1/", "file")
    store = RepositoryStore(tmp_path)
    assert store.model_names() == ["a", "b"]
    b = store.model("b")
    assert b is not None and b.versions() == [1, 10]  # not 02 (leading zero), x, or the file 3
    assert b.version_path(10) == tmp_path / "b" / "10"
    assert store.model("missing") is None
    assert RepositoryStore(tmp_path / "nowhere").model_names() == []


def test_staged_versions_count_and_load_from_the_staging_directory(tmp_path: Path) -> None:
    staged = ModelDir("m", tmp_path / "m", staged=((4, tmp_path / ".upload-x" / "4"),))
    make(tmp_path, "m/1/")
    assert staged.versions() == [1, 4]
    assert staged.version_path(4) == tmp_path / ".upload-x" / "4"
    assert staged.version_path(1) == tmp_path / "m" / "1"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", ".hidden", "x" * 129, "new\n"])
def test_names_that_could_leave_the_repository_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid model name"):
        check_model_name(name)


def test_upload_layout_groups_files_by_version() -> None:
    layout = upload_layout("m", {"1/model.onnx": b"a", "1/sub/labels.txt": b"b", "2/model.onnx": b"c"})
    assert layout == {1: {("model.onnx",): b"a", ("sub", "labels.txt"): b"b"}, 2: {("model.onnx",): b"c"}}


@pytest.mark.parametrize("path", ["model.onnx", "/1/a", "1//a", "./1/a", "1/../a", "01/a", "1\\a", "1/a\x00"])
def test_upload_paths_in_any_other_spelling_are_refused(path: str) -> None:
    with pytest.raises(InvalidInput, match="file path"):
        upload_layout("m", {path: b""})


def test_a_new_model_is_staged_hidden_and_committed_by_one_rename(tmp_path: Path) -> None:
    upload = stage_upload(tmp_path, "fresh", {"1/model.onnx": b"onnx"})
    assert upload.creates_model and upload.versions == (1,)
    assert RepositoryStore(tmp_path).model_names() == []  # the staging directory is hidden
    assert upload.model_dir.version_path(1).joinpath("model.onnx").read_bytes() == b"onnx"
    upload.commit()
    upload.discard()
    assert (tmp_path / "fresh" / "1" / "model.onnx").read_bytes() == b"onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh"]


def test_a_new_version_of_an_existing_model_leaves_the_old_ones_alone(tmp_path: Path) -> None:
    make(tmp_path, "m/1/model.onnx")
    upload = stage_upload(tmp_path, "m", {"2/model.onnx": b"two"})
    assert not upload.creates_model and upload.model_dir.versions() == [1, 2]
    upload.commit()
    upload.discard()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"x"


def test_an_upload_naming_an_existing_version_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    make(tmp_path, "m/1/model.onnx")
    with pytest.raises(VersionExists, match="version 1 is already in the repository"):
        stage_upload(tmp_path, "m", {"1/model.onnx": b"new"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_a_discarded_upload_leaves_nothing(tmp_path: Path) -> None:
    upload = stage_upload(tmp_path, "gone", {"1/model.onnx": b"x"})
    upload.discard()
    assert list(tmp_path.iterdir()) == []


def test_selected_versions_must_cover_the_upload(tmp_path: Path) -> None:
    upload = stage_upload(tmp_path, "m", {"3/model.onnx": b"x"})
    try:
        upload.check_selected([3])
        with pytest.raises(InvalidInput, match=r"uploaded versions \[3\] are not selected"):
            upload.check_selected([1])
    finally:
        upload.discard()

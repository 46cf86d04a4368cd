"""One real server for the protocol tests, over a repository that exercises every datatype."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from runtime.examples import save_model, write_example_repository
from tests.models import build_identity
from tests.serving import RunningServer, running_server

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def identity_name(datatype: str) -> str:
    return f"identity_{datatype.lower()}"


def build_test_repository(root: Path) -> Path:
    write_example_repository(root)
    for datatype in DATATYPES:
        save_model(build_identity(datatype), root, identity_name(datatype))
    # Two versions of one model: version 2 is served by default, version 1 by number.
    policy = 'version_policy { all { } }\n'
    save_model(build_identity("FP32"), root, "versioned", 1, config_pbtxt=policy)
    save_model(build_identity("FP32"), root, "versioned", 2, config_pbtxt=policy)
    corrupt = root / "corrupt" / "1"
    corrupt.mkdir(parents=True)
    (corrupt / "model.onnx").write_bytes(b"this is not an onnx model")
    save_model(build_identity("INT32"), root, "bad_config", config_pbtxt='name: "bad_config"\nsequence_batching { }\n')
    return root


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(
        repository,
        tmp_path_factory.mktemp("server"),
        extra_args=["--max-request-bytes", str(MAX_REQUEST_BYTES)],
    ) as running:
        yield running

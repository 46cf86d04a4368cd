"""Poll mode and writers that pause: a version still being written is never tried."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from runtime.examples import save_model
from tests.repository.models import build_scale, scale_bytes
from tests.server.test_repository import _wait_for, infer_http, make_repo
from tests.serving import running_server


def test_a_writer_pausing_mid_file_is_not_loaded(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    args = ["--model-control-mode", "poll", "--repository-poll-secs", "0.3", "--repository-poll-quiet-secs", "3"]
    with running_server(repo, tmp_path / "srv", args) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert infer_http(client, "scale") == ("2", 2.0)
        whole = scale_bytes(3.0)
        partial = repo / "scale" / "3" / "model.onnx"
        partial.parent.mkdir()
        partial.write_bytes(whole[: len(whole) // 2])
        # The writer pauses for more than four scans, as a slow copy over the network might.
        paused_until = time.monotonic() + 1.5
        while time.monotonic() < paused_until:
            rows = [r for r in client.get_model_repository_index() if r["name"] == "scale" and r.get("version") == "3"]
            assert not rows, f"the half-written version was tried: {rows}"
            assert infer_http(client, "scale") == ("2", 2.0)
            time.sleep(0.1)
        with open(partial, "ab") as handle:
            handle.write(whole[len(whole) // 2 :])
        _wait_for(lambda: infer_http(client, "scale") == ("3", 3.0))
        rows = [r for r in client.get_model_repository_index() if r["name"] == "scale" and r.get("version") == "3"]
        assert rows and rows[0]["state"] == "READY"


def test_a_replaced_label_file_is_served_after_the_next_poll(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    save_model(
        build_scale(1.0), repo, "scale", 1,
        config_pbtxt='max_batch_size: 8\noutput [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] label_filename: "labels.txt" }]\n',
    )
    (repo / "scale" / "labels.txt").write_text("a\nb\nc\nd\n")
    args = ["--model-control-mode", "poll", "--repository-poll-secs", "0.3", "--repository-poll-quiet-secs", "0"]

    def top_label(client: httpclient.InferenceServerClient) -> str:
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([[0.0, 0.0, 5.0, 0.0]], np.float32))
        result = client.infer("scale", [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT0", class_count=1)])
        return result.as_numpy("OUTPUT0")[0, 0].decode().split(":")[-1]

    with running_server(repo, tmp_path / "srv", args) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert top_label(client) == "c"
        (repo / "scale" / "labels.txt").write_text("w\nx\nchanged\nz\n")
        _wait_for(lambda: top_label(client) == "changed")

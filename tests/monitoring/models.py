"""A repository whose models exercise every monitoring feature, and known data to send them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.examples import save_model
from tests.models import FAILING_INSTANCE_GROUP, FIXED_WINDOW, build_failing, build_identity

LABELS = ["cat", "dog", "bird"]
DRIFT_WINDOW = 200
EDGES = [0.0, 0.25, 0.5, 0.75, 1.0]
SCORE_BUCKETS = [0.25, 0.5, 0.75, 1.0]
INPUT_BUCKETS = [0.5, 1.5]

# clf: an FP32 identity over [batch, 3] with a label file, so the predicted class is the argmax of
# what we send; no dynamic batching, so each request is one batch of its own rows.
CLF_CONFIG = """\
name: "clf"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 3 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" }]
"""
# score: [batch, 1] scores (a value histogram), versions 1 and 2, one reference for both.
SCORE_CONFIG = """\
name: "score"
max_batch_size: 16
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]
version_policy { all { } }
"""
# slow: a request waits in the queue for 1.5 s (its batch never fills), and only one may wait.
SLOW_DELAY_S = 1.5
SLOW_CONFIG = """\
name: "slow"
max_batch_size: 4
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] }]
dynamic_batching {
  max_queue_delay_microseconds: 1500000
  default_queue_policy { max_queue_size: 1 }
}
""" + FIXED_WINDOW


def build_monitoring_repository(root: Path) -> Path:
    save_model(build_identity("FP32"), root, "clf", config_pbtxt=CLF_CONFIG)
    (root / "clf" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (root / "clf" / "monitoring.json").write_text(
        json.dumps({"inputs": {"INPUT0": {"buckets": INPUT_BUCKETS, "features": [0, 2]}}})
    )
    for version in (1, 2):
        save_model(build_identity("FP32"), root, "score", version, config_pbtxt=SCORE_CONFIG)
    uniform = [0.25, 0.25, 0.25, 0.25]
    (root / "score" / "reference.json").write_text(
        json.dumps(
            {
                "outputs": {"OUTPUT0": {"edges": EDGES, "frequencies": uniform}},
                "inputs": {"INPUT0": {"edges": EDGES, "frequencies": uniform}},
            }
        )
    )
    (root / "score" / "monitoring.json").write_text(
        json.dumps({"outputs": {"OUTPUT0": {"kind": "value", "buckets": SCORE_BUCKETS}}})
    )
    save_model(build_identity("FP32"), root, "slow", config_pbtxt=SLOW_CONFIG)
    save_model(build_failing(), root, "failing", config_pbtxt=FAILING_INSTANCE_GROUP)
    return root


def reference_scores(rows: int, seed: int) -> np.ndarray:
    """Scores drawn like the reference (uniform over [0, 1))."""
    return np.random.default_rng(seed).random((rows, 1)).astype(np.float32)


def shifted_scores(rows: int, seed: int) -> np.ndarray:
    """Scores squeezed into [0.5, 1): half the reference's bins never occur."""
    return (0.5 + 0.5 * np.random.default_rng(seed).random((rows, 1))).astype(np.float32)

"""model-runtime: a KServe V2 / Open Inference Protocol server for ONNX models."""
from __future__ import annotations

__version__ = "0.1.0"
SERVER_NAME = "model-runtime"

"""Helpers shared by the shared-memory tests."""
from __future__ import annotations

import asyncio
from runtime.engine import Engine
from runtime.types import InferRequest, InferResponse, RequestedOutput, SharedInput, SharedMemoryRef


async def infer_mlp_from_regions(engine: Engine, count: int) -> list[InferResponse]:
    """`count` concurrent requests to the example mlp, request i reading its input from region "in{i}"
    (FP32 [1, 16], 64 bytes) and writing PROBABILITIES into region "out{i}" (16 bytes)."""
    return await asyncio.gather(
        *(
            engine.infer(
                InferRequest(
                    "mlp", "", {},
                    requested_outputs=[RequestedOutput("PROBABILITIES", shared_memory=SharedMemoryRef(f"out{index}", 16))],
                    shared_inputs={"INPUT": SharedInput("FP32", (1, 16), SharedMemoryRef(f"in{index}", 64))},
                )
            )
            for index in range(count)
        )
    )  # fmt: skip

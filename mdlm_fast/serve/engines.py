"""Choosing the server's engine: the packed engine (continuous batching), or the sequential baseline."""

from __future__ import annotations

from typing import Any

from mdlm_fast.sampling.engine import Engine
from mdlm_fast.serve.baseline import SequentialEngine

ENGINE_KINDS = ("packed", "sequential")


def build_engine(
    kind: str, models: Any, *, device: Any = None, dtype: Any = None, max_rows: int | None = None, max_queue: int = 1024
):
    """The engine named ``kind``: "packed" (continuous batching, mdlm_fast.sampling.engine) or "sequential"
    (one sample() per request in arrival order, the comparison baseline)."""
    if kind == "packed":
        return Engine(models, device=device, dtype=dtype, max_rows=max_rows, max_queue=max_queue)
    if kind == "sequential":
        return SequentialEngine(models, device=device, dtype=dtype, max_rows=max_rows, max_queue=max_queue)
    raise ValueError(f"engine must be one of {ENGINE_KINDS}, got {kind!r}")


def default_engine_kind() -> str:
    return "packed"

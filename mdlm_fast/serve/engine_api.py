"""The engine interface the server drives: ``Request``, ``Completion``, ``EngineError``, ``QueueFull``.

The packed engine (``mdlm_fast.sampling.engine``) defines these types. A build without it gets the
same shapes from here, so the sequential baseline (serve/baseline.py) and the server run unchanged
on both; ``PackedEngine`` is None there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

try:
    from mdlm_fast.sampling.engine import Completion, EngineError, QueueFull, Request
    from mdlm_fast.sampling.engine import Engine as PackedEngine
except ModuleNotFoundError as exc:
    if exc.name != "mdlm_fast.sampling.engine":
        raise
    PackedEngine = None

    class EngineError(RuntimeError):
        """A request the engine cannot run (an unsupported option) or a failed run; the message names it."""

    class QueueFull(EngineError):
        """submit() found the waiting queue at its limit (max_queue); retry later."""

    @dataclass(frozen=True)
    class Request:
        """What sample() takes for one batch of ``n`` sequences."""

        n: int = 1
        length: int | None = None       # None: the model's config.model_length
        steps: int = 128
        schedule: Any = None            # ModelSchedule | spec str | list | None (all heavy)
        seed: int = 0
        prefix: Any = None              # [P] or [n, P] token ids
        given: Any = None               # [L] or [n, L], mask id where generated (infilling)
        temperature: float = 1.0
        noise_removal: str = "greedy"

    @dataclass
    class Completion:
        """A finished (tokens) or failed (error) request and what it cost."""

        handle: int
        tokens: Any                     # torch.Tensor [n, L] int64 on CPU; None if failed or cancelled
        error: str | None
        stats: dict = field(default_factory=dict)  # latency_s, queue_wait_s, forwards, rows, steps


ENGINE_KINDS = ("packed", "sequential")


def build_engine(kind: str, models: Any, *, device: Any = None, dtype: Any = None, max_rows: int | None = None,
                 max_queue: int = 1024):
    """The engine named ``kind``: "packed" (continuous batching, mdlm_fast.sampling.engine) or "sequential"
    (one sample() per request in arrival order, the comparison baseline)."""
    if kind == "packed":
        if PackedEngine is None:
            raise ValueError("engine 'packed' is not in this build (mdlm_fast.sampling.engine is missing); "
                             "use 'sequential'")
        return PackedEngine(models, device=device, dtype=dtype, max_rows=max_rows, max_queue=max_queue)
    if kind == "sequential":
        from mdlm_fast.serve.baseline import SequentialEngine

        return SequentialEngine(models, device=device, dtype=dtype, max_rows=max_rows, max_queue=max_queue)
    raise ValueError(f"engine must be one of {ENGINE_KINDS}, got {kind!r}")


def default_engine_kind() -> str:
    return "packed" if PackedEngine is not None else "sequential"

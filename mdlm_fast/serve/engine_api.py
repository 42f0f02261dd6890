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


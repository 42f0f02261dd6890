"""What the engine holds per request and per sequence: a token row and its reveal plan.

MDLM keeps no cache between steps, so a sequence's whole state is its token row and the steps at
which its positions are revealed -- a plan fixed before any model runs by one uniform per position
(fast.py). A request's rows keep their own row ids 0..n-1, so their Philox keys (seed, step, row,
position) are those of ``sample()`` called alone with the request's arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mdlm_fast.ops.compiled import PURPOSE_NOISE_REMOVAL, PURPOSE_TOKEN
from mdlm_fast.schedules.model_schedule import ModelSchedule
from mdlm_fast.schedules.noise import LogLinearNoise


@dataclass
class RowState:
    """One sequence: its reveal steps (ascending; T = noise removal) and the positions of each."""

    request: RequestState
    row: int  # the row id within its request: its key row, as in sample()
    steps: list[int]
    positions: list[torch.Tensor]  # CPU int64, ascending, one tensor per entry of `steps`
    cursor: int = 0  # index into `steps` of the next reveal
    ready_since: int = 0  # the engine's forward count when this row last became ready

    @property
    def done(self) -> bool:
        return self.cursor >= len(self.steps)

    @property
    def next_step(self) -> int:
        return self.steps[self.cursor]

    @property
    def next_positions(self) -> torch.Tensor:
        return self.positions[self.cursor]

    def steps_done(self) -> int:
        """Steps this row has passed (T once only noise removal is left or it is finished)."""
        return self.request.steps if self.done else min(self.next_step, self.request.steps)


@dataclass
class RequestState:
    """One submitted request: validated arguments, its token rows [n, L] and its sequences."""

    handle: int
    n: int
    length: int
    steps: int
    schedule: ModelSchedule
    seed: int
    temperature: float
    noise_removal: str
    x: torch.Tensor  # int64 [n, L] on the engine's device: the tokens so far
    rows: list[RowState] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.perf_counter)
    admitted_at: float | None = None
    forwards: int = 0  # packed forwards that ran some of its rows
    row_forwards: int = 0  # its rows pushed through a trunk, summed over forwards
    drawn: int = 0  # positions whose token was drawn
    error: str | None = None
    cancelled: bool = False

    @property
    def rows_left(self) -> int:
        return sum(not r.done for r in self.rows)

    def model_at(self, step: int) -> int:
        return self.schedule[step] if step < self.steps else self.schedule[-1]

    def sigma_at(self, step: int, noise: LogLinearNoise) -> float:
        return float(noise.sigma(self.timesteps[step]))  # ts[T] is the noise-removal time, as in fast.py

    def draw_at(self, step: int) -> tuple[int, float]:
        """(Philox purpose, temperature) of the draws at ``step``: noise removal is greedy (argmax)
        or ancestral after the last step, exactly as in fast.generate."""
        if step < self.steps:
            return PURPOSE_TOKEN, self.temperature
        return PURPOSE_NOISE_REMOVAL, 0.0 if self.noise_removal == "greedy" else self.temperature

    def stats(self, now: float) -> dict[str, Any]:
        admitted = self.admitted_at if self.admitted_at is not None else now
        return {
            "latency_s": now - self.submitted_at,
            "queue_wait_s": admitted - self.submitted_at,
            "forwards": self.forwards,
            "rows": self.row_forwards,
            "steps": self.steps,
            "tokens": self.drawn,
        }


def row_states(request: RequestState, reveal: torch.Tensor) -> list[RowState]:
    """The sequences of ``request`` from its reveal plan ``reveal`` (int64 [n, L] on the CPU: the
    step revealing each position, -1 for given tokens); positions of one step in ascending order,
    as fast.build_plan orders them."""
    n, length = reveal.shape
    out = []
    for r in range(n):
        steps_of = reveal[r]
        order = torch.argsort(steps_of * length + torch.arange(length))  # by (step, position); given first
        order = order[steps_of[order] >= 0]
        if request.noise_removal == "none":  # positions left for noise removal stay masked, as in fast.py
            order = order[steps_of[order] < request.steps]
        steps, counts = torch.unique_consecutive(steps_of[order], return_counts=True)
        out.append(RowState(request, r, steps.tolist(), list(torch.split(order, counts.tolist()))))
    return out

"""Philox keys of the samplers' draws: int64 rows of (step, row, position) (design §7).

A draw's noise is a function of its key alone, never of which other rows or positions are in
the same call, so batch compaction and tiling cannot change a token.
"""

from __future__ import annotations

import torch


def position_grid(batch: int, length: int, device: torch.device, step: int = 0) -> torch.Tensor:
    """int64 [B * L, 3]: (step, row, position) for every position, row-major."""
    rows = torch.arange(batch, device=device).repeat_interleave(length)
    positions = torch.arange(length, device=device).repeat(batch)
    return torch.stack([torch.full_like(rows, step), rows, positions], dim=1)


def step_keys(step: int, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """int64 [N, 3]: (step, rows[i], positions[i])."""
    return torch.stack([torch.full_like(rows, step), rows, positions], dim=1)

"""Many samples through the engine: ``samples`` sequences as batches of ``batch_size`` with seeds
``seed, seed + 1, ...`` (the last batch smaller), all in flight at once so that every forward is
full. Batch k's tokens are those of ``sample(batch_size=size_k, seed=seed + k)``: the batch size
keeps its meaning (the sequences one seed draws), the row budget only sets how many rows a
forward packs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from mdlm_fast.sampling.engine import Engine, Request
from mdlm_fast.sampling.run import NonFiniteForwardError, SampleStats
from mdlm_fast.schedules.flops import schedule_flops
from mdlm_fast.schedules.time_schedule import resolve_schedule
from mdlm_fast.util.validate import positive_int


def batch_seeds(samples: int, batch_size: int, seed: int) -> list[tuple[int, int]]:
    """``(seed, size)`` of each batch: ``samples`` split into batches of ``batch_size`` (the last
    one smaller) with seeds ``seed, seed + 1, ...``."""
    for name, value in (("samples", samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return [(seed + k, min(batch_size, samples - start)) for k, start in enumerate(range(0, samples, batch_size))]


@dataclass
class ManyResult:
    tokens: torch.Tensor  # int64 [samples, L], batch after batch
    batches: list[torch.Tensor]  # per batch, in seed order
    stats: SampleStats  # the whole run, as sample() reports one call
    engine: dict  # Engine.stats(): fill, rows per forward, queue waits


def sample_many(
    models: Any,
    *,
    samples: int,
    batch_size: int,
    steps: int,
    length: int | None = None,
    schedule: Any = None,
    seed: int = 0,
    prefix: Any = None,
    given: Any = None,
    temperature: float = 1.0,
    noise_removal: str = "greedy",
    device: Any = None,
    dtype: Any = None,
    max_rows: int | None = None,
    batches: list[tuple[int, int]] | None = None,
) -> ManyResult:
    """``samples`` sequences in batches of ``batch_size`` (seeds ``seed + k``) through one Engine;
    ``batches`` gives the (seed, size) list explicitly instead (a shard of a larger run).
    Raises NonFiniteForwardError if any batch's forward was not finite."""
    positive_int("steps", steps)
    batches = batches if batches is not None else batch_seeds(samples, batch_size, seed)
    engine = Engine(models, device=device, dtype=dtype, max_rows=max_rows, max_queue=max(len(batches), 1))
    start = time.perf_counter()
    handles = [
        engine.submit(
            Request(
                n=size,
                length=length,
                steps=steps,
                schedule=schedule,
                seed=batch_seed,
                prefix=prefix,
                given=given,
                temperature=temperature,
                noise_removal=noise_removal,
            )
        )
        for batch_seed, size in batches
    ]
    done = {c.handle: c for c in engine.run_until_done()}
    wall = time.perf_counter() - start
    failed = [done[h].error for h in handles if done[h].error is not None]
    if failed:
        raise NonFiniteForwardError(f"sampling stopped: {failed[0]}")
    out: list[torch.Tensor] = [done[h].tokens for h in handles]  # type: ignore[misc]  # none failed
    engine_stats = engine.stats()
    length = out[0].shape[1]
    resolved = resolve_schedule(schedule, steps).validate_for(len(engine.models))
    shapes = [m.shape for m in engine.models]
    known = all(s is not None for s in shapes)
    total = sum(size for _, size in batches)
    flops = engine_stats["executed_flops"]
    stats = SampleStats(
        sampler="fast",
        precision="fp64",
        steps=steps,
        batch_size=total,
        length=length,
        seed=batches[0][0],
        schedule=resolved.to_spec(),
        forwards=engine_stats["forwards"],
        rows=engine_stats["rows"],
        head_positions=flops["head_positions"] if flops else 0,
        wall_time_s=wall,
        host_syncs=0,
        predicted_saving=resolved.predicted_saving([s.n_blocks for s in shapes]) if known else None,
        analytic_flops=schedule_flops(resolved, shapes, total, length, noise_removal_model=resolved[-1])
        if known
        else None,
        executed_flops=flops,
        dtype=engine_stats["dtype"],
        dtype_reason=engine.dtype_choice.reason,
    )
    return ManyResult(torch.cat(out), out, stats, engine_stats)

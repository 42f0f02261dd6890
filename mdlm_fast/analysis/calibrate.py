"""Calibration (beyond the paper): a schedule for a FLOPs budget from the step-importance profile.

Step i of a T-step trajectory runs the model at ``t_i = ts[i]`` of the sampler's grid
``linspace(1, 1e-5, T + 1)``. The importance profile (eq. 6/7, measured on a grid of t) is
linearly interpolated at every ``t_i`` (held constant beyond the grid's ends), and a segment's
*divergence* is the mean over its steps. Replacing segment k by the light model saves
``|segment k| / T * (1 - n_light / n_heavy)`` of the block FLOPs (eq. 3), so the cheapest way -- in
summed divergence -- to reach a required saving is to take segments in order of increasing
divergence until the saving is reached. With equal-size segments this greedy choice is optimal
(every segment buys the same saving); with unequal sizes it is the usual greedy approximation.

The budget is a required predicted saving ``S`` (FLOPs at most ``1 - S`` of all-heavy) or, to
line up with the exhaustive search, a number of light segments.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from mdlm_fast.analysis.importance import ImportanceProfile
from mdlm_fast.schedules.model_schedule import ModelSchedule, segment_bounds
from mdlm_fast.schedules.noise import sampling_timesteps

__all__ = ["Calibration", "step_divergence", "segment_divergence", "calibrate", "compare_with_search"]


@dataclass
class Calibration:
    """The chosen schedule and why."""

    schedule: ModelSchedule
    light_segments: list[int]
    segment_divergence: list[float]
    predicted_saving: float
    metric: str
    n_segments: int
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "schedule": self.schedule.to_spec(),
            "light_segments": self.light_segments,
            "segment_divergence": self.segment_divergence,
            "predicted_saving": self.predicted_saving,
            "metric": self.metric,
            "n_segments": self.n_segments,
            **self.details,
        }


def step_divergence(profile: ImportanceProfile, steps: int, metric: str = "kl") -> list[float]:
    """The profile's ``metric`` at each sampling step's t (linear interpolation, flat at the ends)."""
    ts = np.asarray(profile.ts, dtype=np.float64)
    values = np.asarray(profile.values(metric), dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"the importance profile's {metric!r} has non-finite values")
    order = np.argsort(ts)
    step_t = sampling_timesteps(steps)[:-1].numpy()  # t at which step i runs its model
    return np.interp(step_t, ts[order], values[order]).tolist()


def segment_divergence(profile: ImportanceProfile, steps: int, n_segments: int = 10, metric: str = "kl") -> list[float]:
    """Mean step divergence over each of the ``n_segments`` segments, in step order (segment 0 is
    the first steps, near t = 1)."""
    per_step = step_divergence(profile, steps, metric)
    return [float(np.mean(per_step[a:b])) for a, b in segment_bounds(steps, n_segments)]


def calibrate(
    profile: ImportanceProfile,
    steps: int,
    *,
    block_counts: Sequence[int],
    saving: float | None = None,
    n_light: int | None = None,
    n_segments: int = 10,
    metric: str = "kl",
) -> Calibration:
    """Pick the light segments for a budget: exactly one of ``saving`` (required predicted block
    saving, eq. 3) or ``n_light`` (number of light segments). See the module doc."""
    if (saving is None) == (n_light is None):
        raise ValueError("give exactly one budget: saving (a predicted FLOPs saving) or n_light (segments)")
    heavy_blocks, light_blocks = int(block_counts[0]), int(block_counts[1])
    per_step_saving = 1 - light_blocks / heavy_blocks
    if per_step_saving <= 0:
        raise ValueError(
            f"the light model ({light_blocks} blocks) is not lighter than the heavy one "
            f"({heavy_blocks}): no schedule saves FLOPs"
        )
    divergence = segment_divergence(profile, steps, n_segments, metric)
    bounds = segment_bounds(steps, n_segments)
    order = sorted(range(n_segments), key=lambda k: (divergence[k], k))  # ties: earlier segment
    chosen: list[int] = []
    if saving is not None:
        if not 0 <= saving <= per_step_saving + 1e-12:
            raise ValueError(
                f"saving must be in [0, {per_step_saving:.4g}] (all steps light saves "
                f"1 - {light_blocks}/{heavy_blocks}), got {saving!r}"
            )
        reached = 0.0
        for k in order:
            if reached >= saving - 1e-12:
                break
            chosen.append(k)
            reached += (bounds[k][1] - bounds[k][0]) / steps * per_step_saving
    else:  # n_light, the other budget
        if isinstance(n_light, bool) or not isinstance(n_light, int) or not 0 <= n_light <= n_segments:
            raise ValueError(f"n_light must be an int in [0, {n_segments}], got {n_light!r}")
        chosen = order[:n_light]
    chosen = sorted(chosen)
    schedule = ModelSchedule.segments(steps, chosen, n_segments)
    return Calibration(
        schedule=schedule,
        light_segments=chosen,
        segment_divergence=divergence,
        predicted_saving=schedule.predicted_saving([heavy_blocks, light_blocks]),
        metric=metric,
        n_segments=n_segments,
        details={"budget": {"saving": saving} if saving is not None else {"n_light": n_light}},
    )


def compare_with_search(calibrated: dict, search_rows: Sequence[dict], metric: str = "gen_ppl") -> dict:
    """Where the calibrated schedule stands among searched schedules of the same predicted saving:
    the best searched schedule, and the calibrated schedule's rank (1 = best) when it was searched."""
    from mdlm_fast.analysis.search import ranked

    same = [
        r for r in search_rows if abs(r.get("predicted_saving", float("nan")) - calibrated["predicted_saving"]) < 1e-9
    ]
    order = ranked(same, metric)
    if not order:
        return {"searched_at_same_budget": 0}
    best = order[0]
    rank = next((i + 1 for i, r in enumerate(order) if r["schedule"] == calibrated["schedule"]), None)
    out = {
        "searched_at_same_budget": len(order),
        "best_searched": {
            "key": best["key"],
            "schedule": best["schedule"],
            metric: best[metric],
            f"{metric}_se": best.get(f"{metric}_se"),
        },
        "calibrated_rank": rank,
        "median_searched": float(np.median([r[metric] for r in order])),
    }
    if metric in calibrated:
        out[f"{metric}_minus_best"] = calibrated[metric] - best[metric]
    return out

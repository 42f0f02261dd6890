"""Step importance (eq. 5-7): where along the trajectory a light model can stand in.

For each ``t`` of a grid, the *same* corrupted inputs ``x_t`` (each token of a held-out window masked
with probability ``mc(t) = (1 - eps) t``, mask drawn from a seed that depends only on
``(seed, t index)``) go through the heavy model ``h`` and the light model ``l``. Over the set
``M_t`` of masked positions (SUBS log-probabilities, mask id excluded):

* eq. 5: ``CE_m(t) = mean_{(x0, i) in M_t} -log p_m(x0_i | x_t)``, for m in {h, l};
* eq. 6: ``dCE(t) = mean_{M_t} | log p_h(x0_i | x_t) - log p_l(x0_i | x_t) |``, the mean absolute
  per-token cross-entropy difference (the signed difference ``CE_l - CE_h`` is kept as well);
* eq. 7: ``KL(t) = mean_{M_t} sum_v p_h(v | x_t) (log p_h(v | x_t) - log p_l(v | x_t))``.

Normalization: the same two quantities between the heavy model and a second heavy model trained
with another seed (``heavy_twin``) measure how much two *equally good* models disagree; the
ratios ``KL / KL_ref`` and ``dCE / dCE_ref`` say how far the light model is beyond that noise floor.
Without a heavy twin the profile is unnormalized and says so (``normalized = False``).

All means are token-weighted over every masked position of every window at that ``t``.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from mdlm_fast.schedules.noise import LogLinearNoise
from mdlm_fast.text.data import derive_seed
from mdlm_fast.util.validate import integer

__all__ = ["ImportancePoint", "ImportanceProfile", "default_t_grid", "corrupt", "masked_log_probs", "step_importance"]


@dataclass
class ImportancePoint:
    """Eq. 5-7 at one ``t`` (token-weighted means over the ``masked_tokens`` masked positions)."""

    t: float
    masked_tokens: int
    ce_heavy: float  # eq. 5, heavy
    ce_light: float  # eq. 5, light
    ce_abs_diff: float  # eq. 6: mean |CE_light - CE_heavy| per token
    ce_diff: float  # signed mean CE_light - CE_heavy
    kl: float  # eq. 7: mean KL(p_heavy || p_light)
    ce_abs_diff_ref: float | None = None  # eq. 6 between heavy and its twin (the floor)
    kl_ref: float | None = None  # eq. 7 between heavy and its twin (the floor)

    @property
    def kl_normalized(self) -> float | None:
        return _ratio(self.kl, self.kl_ref)

    @property
    def ce_abs_diff_normalized(self) -> float | None:
        return _ratio(self.ce_abs_diff, self.ce_abs_diff_ref)

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "kl_normalized": self.kl_normalized,
            "ce_abs_diff_normalized": self.ce_abs_diff_normalized,
        }


def _ratio(a: float, b: float | None) -> float | None:
    if b is None:
        return None
    return a / b if b > 0 else (math.inf if a > 0 else float("nan"))


#: Profile columns a calibration may rank steps by.
METRICS = ("kl", "ce_abs_diff", "kl_normalized", "ce_abs_diff_normalized")


@dataclass
class ImportanceProfile:
    """Eq. 5-7 over a grid of t, and what produced it (``record``)."""

    points: list[ImportancePoint]
    record: dict = field(default_factory=dict)

    @property
    def normalized(self) -> bool:
        """Whether a heavy twin supplied the noise floor (eq. 6/7 normalization)."""
        return bool(self.points) and all(p.kl_ref is not None for p in self.points)

    @property
    def ts(self) -> list[float]:
        return [p.t for p in self.points]

    def values(self, metric: str) -> list[float]:
        """One column over the grid: a field of :class:`ImportancePoint` or a normalized ratio."""
        if metric not in METRICS and metric not in ImportancePoint.__dataclass_fields__:
            raise ValueError(f"unknown importance metric {metric!r}; expected one of {', '.join(METRICS)}")
        if metric.endswith("_normalized") and not self.normalized:
            raise ValueError(f"metric {metric!r} needs a profile measured with a heavy twin")
        return [getattr(p, metric) for p in self.points]

    def as_dict(self) -> dict:
        return {"normalized": self.normalized, "record": self.record, "points": [p.as_dict() for p in self.points]}

    @classmethod
    def from_dict(cls, d: dict) -> "ImportanceProfile":
        names = set(ImportancePoint.__dataclass_fields__)
        try:
            points = [ImportancePoint(**{k: v for k, v in p.items() if k in names}) for p in d["points"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"not an importance profile: {e}") from None
        if not points:
            raise ValueError("the importance profile has no points")
        return cls(points, d.get("record", {}))


def default_t_grid(n: int) -> list[float]:
    """``n`` midpoints ``(k + 1/2) / n`` of (0, 1): no point at t = 0, where nothing is masked."""
    integer("the t-grid's number of points", n, minimum=1)
    return [(k + 0.5) / n for k in range(n)]


def corrupt(
    x0: torch.Tensor, t: float, mask_index: int, generator: torch.Generator, noise: LogLinearNoise | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, masked)``: each token masked independently with probability ``mc(t)``."""
    noise = noise or LogLinearNoise()
    masked = torch.rand(x0.shape, generator=generator, dtype=torch.float64) < noise.move_chance(float(t))
    return torch.where(masked, torch.full_like(x0, mask_index), x0), masked


def masked_log_probs(
    model: Any, xt: torch.Tensor, masked: torch.Tensor, sigma: torch.Tensor, mask_index: int
) -> torch.Tensor:
    """SUBS log-probabilities ``[n_masked, V - 1]`` at the masked positions (row-major order),
    with the mask id's column removed (SUBS gives it probability 0; dropping it keeps the KL free
    of ``0 * inf``). Models with ``trunk`` + ``head_weight`` project only the masked positions."""
    rows, cols = masked.nonzero(as_tuple=True)
    if callable(getattr(model, "trunk", None)) and hasattr(model, "head_weight"):
        hidden = model.trunk(xt, sigma)[rows, cols]
        logits = F.linear(hidden, model.head_weight, getattr(model, "head_bias", None))
    else:
        logits = model(xt, sigma)[rows, cols]
    keep = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[mask_index] = False
    return torch.log_softmax(logits.float()[:, keep], dim=-1)


def _compare(logp_h: torch.Tensor, logp_o: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float, float]:
    """Sums over positions: (CE_h, CE_o, |CE_o - CE_h|, KL(h || o)), in float64."""
    ce_h = -logp_h.gather(1, target[:, None]).squeeze(1).double()
    ce_o = -logp_o.gather(1, target[:, None]).squeeze(1).double()
    kl = (logp_h.exp() * (logp_h - logp_o)).sum(-1).double()
    return float(ce_h.sum()), float(ce_o.sum()), float((ce_o - ce_h).abs().sum()), float(kl.sum())


@torch.no_grad()
def step_importance(
    heavy: Any,
    light: Any,
    windows: torch.Tensor,
    t_grid: Sequence[float],
    *,
    heavy_twin: Any = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    record: dict | None = None,
) -> ImportanceProfile:
    """Eq. 5-7 (module doc) of ``heavy`` vs ``light`` on held-out ``windows [N, L]`` at each t.

    ``heavy_twin``: a second heavy model (another training seed) for the normalizer. Models are
    DiTs or anything with ``config.mask_index`` and ``forward(x, sigma) -> logits``.
    """
    if windows.dim() != 2 or windows.dtype != torch.int64 or windows.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty int64 [N, L] tensor, got {windows.dtype} {tuple(windows.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    t_grid = [float(t) for t in t_grid]
    if not t_grid or not all(0 < t <= 1 for t in t_grid):
        raise ValueError(f"every t of the grid must lie in (0, 1], got {t_grid}")
    mask_index = heavy.config.mask_index
    for name, model in (("light", light), ("heavy_twin", heavy_twin)):
        if model is not None and model.config.mask_index != mask_index:
            raise ValueError(
                f"the {name} model's mask id {model.config.mask_index} differs from the heavy model's {mask_index}"
            )
    if (windows == mask_index).any():
        raise ValueError(f"the held-out windows contain the mask id {mask_index}")
    noise = LogLinearNoise()
    device = next(heavy.parameters()).device
    windows = windows.to(device)
    points = []
    from tqdm.auto import tqdm

    for k, t in enumerate(tqdm(t_grid, desc="importance (t grid)", disable=not progress, leave=False)):
        # One generator per grid point, seeded by (seed, k): the corruption at t never depends on
        # the batch size or on which other t values are on the grid.
        gen = torch.Generator().manual_seed(derive_seed(seed, "importance", k))
        xt_all, masked_all = corrupt(windows.cpu(), t, mask_index, gen, noise)
        sums = [0.0] * 6  # CE_h, CE_l, |dCE|, KL, |dCE|_ref, KL_ref
        count = 0
        for start in range(0, windows.shape[0], batch_size):
            xt = xt_all[start : start + batch_size].to(device)
            masked = masked_all[start : start + batch_size].to(device)
            if not masked.any():
                continue
            sigma = torch.full((xt.shape[0],), float(noise.sigma(t)), device=device)
            target = windows[start : start + batch_size][masked]
            target = target - (target > mask_index).long()  # the mask column was removed
            logp_h = masked_log_probs(heavy, xt, masked, sigma, mask_index)
            ce_h, ce_l, abs_diff, kl = _compare(logp_h, masked_log_probs(light, xt, masked, sigma, mask_index), target)
            sums[0] += ce_h
            sums[1] += ce_l
            sums[2] += abs_diff
            sums[3] += kl
            if heavy_twin is not None:
                _, _, abs_ref, kl_ref = _compare(
                    logp_h, masked_log_probs(heavy_twin, xt, masked, sigma, mask_index), target
                )
                sums[4] += abs_ref
                sums[5] += kl_ref
            count += int(masked.sum())
        if count == 0:
            raise ValueError(f"no position was masked at t={t:g}; use more or longer windows")
        m = [s / count for s in sums]
        points.append(
            ImportancePoint(
                t=t,
                masked_tokens=count,
                ce_heavy=m[0],
                ce_light=m[1],
                ce_abs_diff=m[2],
                ce_diff=m[1] - m[0],
                kl=m[3],
                ce_abs_diff_ref=m[4] if heavy_twin is not None else None,
                kl_ref=m[5] if heavy_twin is not None else None,
            )
        )
    full_record = {
        "windows": int(windows.shape[0]),
        "window_length": int(windows.shape[1]),
        "seed": seed,
        "t_grid": t_grid,
        **(record or {}),
    }
    return ImportanceProfile(points, full_record)

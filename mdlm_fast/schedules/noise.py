"""Noise schedules for masked diffusion (MDLM's log-linear schedule) and the sampler's time grid.

Conventions follow MDLM (Sahoo et al. 2024), see design §2:

* ``sigma(t) = -log1p(-(1 - eps) t)``: total noise at time ``t`` in [0, 1].
* ``move_chance(t) = 1 - exp(-sigma(t)) = (1 - eps) t``: probability that a token is masked at ``t``.
* ``dsigma(t) = (1 - eps) / (1 - (1 - eps) t)``: the rate d sigma / dt.
* ``loss_weight(t) = dsigma(t) / expm1(sigma(t))``: the weight of each masked token's cross-entropy in
  the training loss, exactly the expression MDLM's ``_forward_pass_diffusion`` uses. Algebraically it
  is ``move_chance'(t) / move_chance(t) = 1 / t`` for every ``eps``; we keep MDLM's form so training
  reproduces its floating-point numbers.

Every function accepts a Python number or a ``torch.Tensor`` and returns the same kind.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch

# A number in, a number out; a tensor in, a tensor out.
Time = TypeVar("Time", float, torch.Tensor)

#: Default ``eps`` of the training noise schedule (MDLM ``noise.eps``).
TRAIN_EPS = 1e-3
#: Default final time of the sampler's grid (the ``eps`` argument of MDLM's ``_sample``).
SAMPLING_EPS = 1e-5


class LogLinearNoise:
    """MDLM's log-linear noise schedule: the mask probability grows linearly, ``(1 - eps) t``.

    ``eps`` keeps ``sigma(1)`` finite (at ``t = 1`` a token stays unmasked with probability ``eps``).
    """

    def __init__(self, eps: float = TRAIN_EPS):
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"LogLinearNoise: eps must be in [0, 1), got {eps!r}")
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"LogLinearNoise(eps={self.eps!r})"

    def sigma(self, t: Time) -> Time:
        """Total noise ``-log1p(-(1 - eps) t)`` (log1p keeps precision for small ``t``)."""
        x = -(1.0 - self.eps) * t
        return -torch.log1p(x) if torch.is_tensor(x) else -math.log1p(x)

    def move_chance(self, t: Time) -> Time:
        """Mask probability ``1 - exp(-sigma(t))``, which for this schedule is exactly ``(1 - eps) t``."""
        return (1.0 - self.eps) * t

    def dsigma(self, t: Time) -> Time:
        """Rate ``d sigma / dt = (1 - eps) / (1 - (1 - eps) t)``."""
        return (1.0 - self.eps) / (1.0 - (1.0 - self.eps) * t)

    def loss_weight(self, t: Time) -> Time:
        """Per-masked-token loss weight ``dsigma(t) / expm1(sigma(t))`` (``= 1/t``), as in MDLM."""
        sigma = self.sigma(t)
        denom = torch.expm1(sigma) if torch.is_tensor(sigma) else math.expm1(sigma)
        return self.dsigma(t) / denom

    def __call__(self, t: Time) -> tuple[Time, Time]:
        """``(sigma(t), dsigma(t))``, the pair MDLM's noise modules return."""
        return self.sigma(t), self.dsigma(t)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"number of sampling steps must be a positive int, got {steps!r}")
    return steps


def sampling_timesteps(
    steps: int, eps: float = SAMPLING_EPS, dtype: torch.dtype = torch.float64, device=None
) -> torch.Tensor:
    """The mdlm sampler's (MDLM's) time grid ``linspace(1, eps, steps + 1)``.

    Step ``i`` goes from ``t = ts[i]`` to ``s = t - dt`` with :func:`sampling_dt`. float64 by default
    so the grid itself adds no error; MDLM builds it in the default dtype (float32), so pass
    ``dtype=torch.float32`` to reproduce its numbers bit for bit.
    """
    _check_steps(steps)
    return torch.linspace(1.0, eps, steps + 1, dtype=dtype, device=device)


def sampling_dt(steps: int, eps: float = SAMPLING_EPS) -> float:
    """Step size ``(1 - eps) / steps`` of the mdlm sampler (MDLM ``_sample``)."""
    return (1.0 - eps) / _check_steps(steps)


__all__ = ["LogLinearNoise", "sampling_timesteps", "sampling_dt", "TRAIN_EPS", "SAMPLING_EPS"]

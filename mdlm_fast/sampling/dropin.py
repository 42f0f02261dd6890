"""A one-line swap for MDLM's own sampler: ``Diffusion._sample`` run by this package's fast sampler.

:func:`fast_sample` has the signature and return of MDLM's ``Diffusion._sample(num_steps=None,
eps=1e-5)``: int64 tokens ``[config.loader.eval_batch_size, config.model.length]`` on the module's
device, noise removal as ``config.sampling.noise_removal`` says. It samples the module's current
weights through :func:`mdlm_fast.models.live.live_denoiser` (inside MDLM's
``restore_model_and_sample`` those are the EMA weights, copied in before ``_sample`` runs).

:func:`patch` puts it in place of the bound method (``mdlm_fast.patch(model)`` after the model is
built in MDLM's ``main.py``), and restores the original on ``restore()`` or at the end of a
``with`` block.

The output distribution is MDLM's (the fast sampler is exact in distribution, design §4); the
noise is this package's counter-based Philox, so the samples are not those of torch's global RNG
stream. ``seed=None`` (the default) draws each call's seed from torch's global generator, so
``torch.manual_seed`` / Lightning's ``seed_everything`` make a run reproducible and successive calls
give new samples; an int seed makes call k use a seed derived from (seed, k).
"""

from __future__ import annotations

from typing import Any

import torch

from mdlm_fast.models.denoiser import live_denoiser
from mdlm_fast.models.live import LiveModelError, config_value
from mdlm_fast.ops.compiled import check_seed

__all__ = ["Patched", "fast_sample", "patch"]

_SAME_DISTRIBUTION = ("ddpm_cache", "ddpm")  # MDLM's predictors whose distribution the fast sampler draws
_MASK64 = (1 << 64) - 1


def _check_module(diffusion: Any) -> None:
    """Refuse what the fast sampler would not sample as MDLM's ``_sample`` does."""
    config = getattr(diffusion, "config", None)
    if config is None or not hasattr(diffusion, "backbone"):
        raise LiveModelError(f"{type(diffusion).__name__} is not MDLM's Diffusion module (no config, no backbone)")
    missing = [
        p for p in ("loader.eval_batch_size", "model.length", "sampling.steps") if config_value(config, p) is None
    ]
    if missing:
        raise LiveModelError(f"the module's config has no {', '.join(missing)}, which MDLM's _sample reads")
    parameterization = getattr(diffusion, "parameterization", "subs")
    if parameterization != "subs":
        raise LiveModelError(
            f"parameterization {parameterization!r}: the fast sampler replaces MDLM's masked "
            f"diffusion sampler (parameterization 'subs') only"
        )
    predictor = config_value(config, "sampling.predictor") or "ddpm_cache"
    if predictor not in _SAME_DISTRIBUTION:
        raise LiveModelError(
            f"sampling.predictor={predictor!r}: the fast sampler draws the distribution of MDLM's "
            f"{' and '.join(_SAME_DISTRIBUTION)} predictors only"
        )
    noise_type = config_value(config, "noise.type")
    if noise_type not in (None, "loglinear"):
        raise LiveModelError(f"noise.type={noise_type!r}: MDLM's ddpm_cache sampler (and this one) need 'loglinear'")


def _derived_seed(seed: int, call: int) -> int:
    """A 64-bit seed for call ``call`` of a patch seeded ``seed`` (splitmix64's finalizer)."""
    z = (seed + (call + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _global_seed() -> int:
    """A seed from torch's global CPU generator (one draw, 63 bits)."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


def fast_sample(
    diffusion: Any,
    num_steps: int | None = None,
    eps: float = 1e-5,
    *,
    seed: int | None = None,
    sampler: str = "fast",
    dtype: Any = None,
    check: bool = True,
) -> torch.Tensor:
    """MDLM's ``Diffusion._sample(num_steps=None, eps=1e-5)`` by the fast sampler.

    ``num_steps`` defaults to ``config.sampling.steps``; the batch is ``config.loader.eval_batch_size``
    sequences of ``config.model.length`` tokens. seed: see the module doc (None: from torch's global
    generator). sampler: "fast" (default) or "mdlm" (this package's port of MDLM's loop, Philox noise).
    dtype: as in :func:`mdlm_fast.sample` (None: the module's own; a cast is a copy).
    """
    from mdlm_fast.sampling.api import sample

    _check_module(diffusion)
    config = diffusion.config
    steps = int(num_steps) if num_steps is not None else int(config_value(config, "sampling.steps"))
    noise_removal = config_value(config, "sampling.noise_removal")
    if seed is None:
        seed = _global_seed()
    denoiser = live_denoiser(diffusion, check=check)
    result = sample(
        denoiser,
        steps=steps,
        batch_size=int(config_value(config, "loader.eval_batch_size")),
        length=int(config_value(config, "model.length")),
        sampler=sampler,
        seed=check_seed(seed),
        noise_removal="greedy" if noise_removal is None or noise_removal else "none",
        dtype=dtype,
        _final_time=float(eps),
    )
    # A plain tensor (not an inference-mode one): MDLM's code may use it anywhere after.
    return result.tokens.clone()


class Patched:
    """``diffusion._sample`` replaced by the fast sampler until :meth:`restore` (or the end of a ``with``)."""

    def __init__(self, diffusion: Any, seed: int | None, options: dict):
        _check_module(diffusion)
        if seed is not None:
            check_seed(seed)
        self.diffusion = diffusion
        self.calls = 0
        self._had_own = "_sample" in vars(diffusion)
        self._previous = vars(diffusion).get("_sample")
        self._seed = seed
        self._options = options

        def _sample(num_steps=None, eps=1e-5):
            seed_now = None if self._seed is None else _derived_seed(self._seed, self.calls)
            self.calls += 1
            return fast_sample(diffusion, num_steps, eps, seed=seed_now, **self._options)

        _sample.__doc__ = "MDLM's _sample(num_steps=None, eps=1e-5), run by mdlm_fast's fast sampler."
        diffusion._sample = _sample
        self.active = True

    def restore(self) -> None:
        """Put the original ``_sample`` back (the class's method, or what the instance held before)."""
        if not self.active:
            return
        if self._had_own:
            self.diffusion._sample = self._previous
        else:
            del self.diffusion._sample
        self.active = False

    def __enter__(self) -> Any:
        return self.diffusion

    def __exit__(self, *exc) -> None:
        self.restore()


def patch(
    diffusion: Any, *, seed: int | None = None, sampler: str = "fast", dtype: Any = None, check: bool = True
) -> Patched:
    """Replace ``diffusion._sample`` (MDLM's Lightning module) by :func:`fast_sample` now; returns a
    handle whose ``restore()`` -- or the end of ``with mdlm_fast.patch(model):`` -- puts it back.
    Refuses (LiveModelError) a module whose sampler the fast sampler does not reproduce in
    distribution (another parameterization, predictor or noise schedule)."""
    return Patched(diffusion, seed, dict(sampler=sampler, dtype=dtype, check=check))

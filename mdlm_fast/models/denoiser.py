"""A uniform view of the denoisers the samplers accept.

Three kinds plug in:
  (a) mdlm_fast.DiT;
  (b) any nn.Module with ``trunk(x, sigma) -> hidden [B, L, d]`` and its output linear
      (``head_weight``/``head_bias`` attributes, or an nn.Linear at ``output_layer.linear``,
      ``lm_head`` or ``head``);
  (c) any callable ``f(x, sigma) -> logits [B, L, V]`` (wrap it in :class:`Denoiser` to give
      its vocabulary size and mask id).
(d) MDLM's own objects -- its DIT, its Lightning Diffusion module, the Hugging Face MDLM model --
    recognized by structure and run as (a) on their own weights (models/live.py).
(a), (b) and (d) get the fused head: the projection runs only at revealed positions. (c) runs its own
head over every position of the active rows; the fast sampler still skips rows and steps.
A trunk that takes ``positions=`` (int64 [B, Q]; DiT's does) returns the hidden states at those
positions only and may skip work elsewhere (DiT's last block runs its queries and MLP there only).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch

from mdlm_fast.models import live
from mdlm_fast.schedules.flops import ModelShape


def _takes_keyword(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return False


_HeadFn = Callable[[], tuple[torch.Tensor, torch.Tensor | None]]


def _linear_head(linear: torch.nn.Linear) -> _HeadFn:
    # read at each call: .to() may replace the Parameter objects
    return lambda: (linear.weight, linear.bias)


def _find_head(module: Any) -> _HeadFn | None:
    """A function returning (weight, bias) of a module's output linear, or None."""
    if hasattr(module, "head_weight"):
        return lambda: (module.head_weight, getattr(module, "head_bias", None))
    for path in ("output_layer.linear", "lm_head", "head"):
        obj = module
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if isinstance(obj, torch.nn.Linear):
            return _linear_head(obj)
    return None


class Denoiser:
    """Wraps a denoiser for the samplers (see the module doc for the kinds accepted).

    vocab_size, mask_index, time_conditioning and n_blocks default to the model's ``config``
    fields; pass them for callables and modules without one. n_blocks only feeds the FLOPs
    accounting (None: unknown, FLOPs are not reported). noise_eps: the eps of the log-linear
    noise schedule the model was trained with (None: MDLM's default).
    """

    # Set by live_denoiser only, on a Denoiser of one of MDLM's objects (absent on the others).
    weights: str  # "module" or "ema": which tensors it shares
    fast_path: bool
    fallback_reason: str | None
    source: Any  # the object

    def __init__(
        self,
        model: Any,
        *,
        vocab_size: int | None = None,
        mask_index: int | None = None,
        time_conditioning: bool | None = None,
        n_blocks: int | None = None,
        hidden_dim: int | None = None,
        noise_eps: float | None = None,
    ):
        if isinstance(model, Denoiser):
            raise TypeError("model is already a Denoiser")
        if not callable(model):
            raise TypeError(f"a denoiser must be callable as f(x, sigma) -> logits, got {type(model).__name__}")
        config = getattr(model, "config", None)

        def pick(given, name, default=None):
            return given if given is not None else getattr(config, name, default)

        self.model = model
        self.vocab_size = pick(vocab_size, "vocab_size")
        self.mask_index = pick(mask_index, "mask_index")
        self.time_conditioning = bool(pick(time_conditioning, "time_conditioning", True))
        self.n_blocks = pick(n_blocks, "n_blocks", getattr(model, "n_blocks", None))
        self.hidden_dim = pick(hidden_dim, "hidden_dim")
        if self.vocab_size is None or self.mask_index is None:
            raise ValueError(
                "the denoiser has no config with vocab_size and mask_index: wrap it as "
                "mdlm_fast.Denoiser(model, vocab_size=..., mask_index=...)"
            )
        if not 0 <= self.mask_index < self.vocab_size:
            raise ValueError(f"mask_index ({self.mask_index}) must lie in [0, vocab_size={self.vocab_size})")
        self._head = _find_head(model) if callable(getattr(model, "trunk", None)) else None
        # eps of the log-linear noise schedule the model was trained with, where the wrapped object
        # records it (a live MDLM module, models/live.py); None: MDLM's default.
        self.noise_eps: float | None = noise_eps
        self._trunk_takes_positions = self._head is not None and _takes_keyword(model.trunk, "positions")

    @property
    def fused(self) -> bool:
        """Whether the head can be fused with sampling (trunk + output linear available)."""
        return self._head is not None

    @property
    def device(self) -> torch.device | None:
        params = getattr(self.model, "parameters", None)
        if params is None:
            return None
        first = next(iter(params()), None)
        return None if first is None else first.device

    @property
    def shape(self) -> ModelShape | None:
        """Sizes for FLOPs accounting, or None when the depth or width is unknown."""
        if self.n_blocks is None or self.hidden_dim is None:
            return None
        return ModelShape(hidden_dim=self.hidden_dim, n_blocks=self.n_blocks, vocab_size=self.vocab_size)

    def logits(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(x, sigma)

    def hidden(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model.trunk(x, sigma)

    def hidden_at(
        self, x: torch.Tensor, sigma: torch.Tensor, positions: torch.Tensor, prune: bool = True
    ) -> tuple[torch.Tensor, bool]:
        """Hidden states ``[B, Q, d]`` at ``positions [B, Q]`` of each row, and whether the trunk
        computed its last block at those positions only (worth it while Q <= L / 2; never
        with ``prune=False``)."""
        if prune and self._trunk_takes_positions and 2 * positions.shape[1] <= x.shape[1]:
            return self.model.trunk(x, sigma, positions=positions), True
        hidden = self.model.trunk(x, sigma)
        return hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])), False

    def head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._head is None:
            raise TypeError(f"{self!r} has no fused head (no trunk and output linear); check .fused first")
        return self._head()

    def __repr__(self) -> str:
        kind = "fused head" if self.fused else "callable"
        return f"Denoiser({type(self.model).__name__}, {kind}, V={self.vocab_size}, mask={self.mask_index})"


def live_denoiser(
    obj: Any,
    *,
    ema: bool = False,
    mask_index: int | None = None,
    time_conditioning: bool | None = None,
    check: bool = True,
) -> Denoiser:
    """A Denoiser on one of MDLM's own objects -- its ``DIT``, its Lightning ``Diffusion`` module, the
    Hugging Face ``MDLM`` model -- running the fast path on the object's own tensors (models/live.py).

    ema: use the EMA weights where ``obj`` holds them (a Lightning module trained with EMA), as
        ``load_denoiser(ema=True)`` does; without EMA weights the module's own are used. Inside
        MDLM's ``restore_model_and_sample`` the EMA is already copied into the backbone, so the
        default (False: the weights the module's forward uses) samples the EMA there too.
    mask_index, time_conditioning: override what the object records (a bare DIT records no mask id:
        ``vocab_size - 1`` unless given, MDLM's rule for GPT-2's appended mask token).
    check: compare one small forward of the object's own with the fast path's before use; where
        they disagree, or the structure differs, sampling runs the object's own forward at every
        position and a one-line LiveModelWarning says why.

    The Denoiser's ``weights`` says which tensors it shares ("module" or "ema"), ``fast_path``
    whether the fused head runs, ``fallback_reason`` why not, ``source`` the object.
    """
    found = live.adapt(obj, ema=ema, mask_index=mask_index, time_conditioning=time_conditioning, check=check)
    denoiser = Denoiser(
        found.model,
        vocab_size=found.vocab_size,
        mask_index=found.mask_index,
        time_conditioning=found.time_conditioning,
        noise_eps=found.noise_eps,
    )
    denoiser.weights, denoiser.fast_path = found.weights, found.fast_path
    denoiser.fallback_reason, denoiser.source = found.fallback_reason, found.source
    return denoiser


def _wrap(model: Any) -> Denoiser:
    """A Denoiser for ``model``: MDLM's own objects get the fast path on their own weights."""
    return live_denoiser(model) if live.looks_like_mdlm(model) else Denoiser(model)


def as_denoisers(models: Any, names: Sequence[str] | None = None) -> list[Denoiser]:
    """One model or a sequence (index 0 = heavy) -> Denoisers that agree on vocabulary and mask id.

    The one check of that agreement: ``names`` (one per model, e.g. the CLI's flags and paths) name
    the models in its error instead of ``models[i]``.
    """
    if isinstance(models, (Denoiser, torch.nn.Module)) or (callable(models) and not isinstance(models, Sequence)):
        models = [models]
    if not isinstance(models, Sequence) or len(models) == 0:
        raise ValueError("models must be a denoiser or a non-empty sequence of denoisers (index 0 = heavy)")
    wrapped = [m if isinstance(m, Denoiser) else _wrap(m) for m in models]
    label = list(names) if names is not None else [f"models[{i}]" for i in range(len(wrapped))]
    first = wrapped[0]
    for i, m in enumerate(wrapped[1:], start=1):
        if m.vocab_size != first.vocab_size:
            raise ValueError(
                f"{label[i]} has vocab_size {m.vocab_size} but {label[0]} has {first.vocab_size}: "
                "scheduled models must share the vocabulary"
            )
        if m.mask_index != first.mask_index:
            raise ValueError(
                f"{label[i]} has mask_index {m.mask_index} but {label[0]} has {first.mask_index}: "
                "scheduled models must share the mask id"
            )
    return wrapped

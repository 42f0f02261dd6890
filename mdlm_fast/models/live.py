"""MDLM's own model objects as fast-path denoisers, sharing their weights (no copy, no file).

Three objects are recognized by structure -- parameter names, shapes and submodules, as the
checkpoint loader knows them -- never by importing MDLM's or transformers' code:

* MDLM's ``DIT`` backbone (``vocab_embed``, ``sigma_map``, ``rotary_emb``, ``blocks``,
  ``output_layer``); its Hydra ``config`` gives ``time_conditioning`` and ``model.length``;
* its Lightning ``Diffusion`` module: a ``backbone`` plus ``mask_index``, ``noise`` (checked to be
  log-linear, its eps read), ``time_conditioning``, ``parameterization`` (must be ``subs``) and
  the EMA (``ema.shadow_params``);
* the Hugging Face ``MDLM`` class of ``kuleshov-group/mdlm-owt`` (``backbone`` inside, a flat
  config with ``hidden_dim``, ``n_blocks``, ``model_length``, ``time_conditioning``).

:func:`adapt` gives (and :func:`mdlm_fast.live_denoiser` wraps as a Denoiser) this package's
:class:`DiT` whose parameters ARE the object's parameter tensors (or the EMA shadow tensors with
``ema=True``): the fused head at revealed positions and the pruned last block run on the caller's
weights. Before it is used, one
small forward of the object's own and of the fast path are compared; a module that looks like
MDLM's but differs (other names, extra layers, another activation, a forward that disagrees)
falls back to its own forward on every position, with a one-line :class:`LiveModelWarning`
saying why. What cannot be sampled correctly either way (another parameterization or noise
schedule, EMA weights that do not match) is refused with a :class:`LiveModelError`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from mdlm_fast.models.dit import DiT, DiTConfig, subs_log_probs

__all__ = ["LiveModel", "LiveModelError", "LiveModelWarning", "adapt", "config_value", "looks_like_mdlm"]

_DIT_PARTS = ("vocab_embed", "sigma_map", "rotary_emb", "blocks", "output_layer")
# Submodules without parameters that MDLM's classes hold and the math does not depend on.
_HARMLESS = (nn.Dropout, nn.Identity)
_CHECK_LENGTH = 16
_CHECK_SIGMAS = (0.3, 1.7)
# The largest total-variation distance between the object's own next-token distributions and the
# fast path's on the check input: fp32 on both sides differs by rounding only; a module that runs
# its blocks under bf16 autocast (MDLM's DIT on CUDA) differs by bf16 rounding.
CHECK_TOLERANCE = {"float32": 1e-4, "autocast": 5e-2}
_MAX_LISTED = 4


class LiveModelError(ValueError):
    """The object cannot be sampled as an MDLM denoiser, by the fast path or by its own forward."""


class LiveModelWarning(UserWarning):
    """The object looks like MDLM's but is not recognized: sampling runs its own forward instead."""


@dataclass
class _Found:
    """What recognition read from the object."""

    outer: Any  # what the caller passed
    kind: str  # "dit", "hf" or "lightning"
    dit: nn.Module | None  # the DIT-structured module inside, None if the backbone is another kind
    mask_index: int
    time_conditioning: bool
    model_length: int | None
    noise_eps: float | None
    own_forward: Callable  # (x, sigma) -> logits or log-probs, the object's own math


def looks_like_mdlm(obj: Any) -> bool:
    """Whether ``obj`` is (or claims to be) one of MDLM's objects: DIT's submodules, a Lightning-style
    module (``backbone``, ``mask_index``, ``noise``), or a model whose ``backbone`` has DIT's submodules.
    This package's DiT, and any module with its own ``trunk``, is not one (it is used as it is)."""
    if isinstance(obj, DiT) or not isinstance(obj, nn.Module) or callable(getattr(obj, "trunk", None)):
        return False  # a module with its own trunk is a fused denoiser already
    if _is_dit_like(obj):
        return True
    backbone = getattr(obj, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return False
    # MDLM's Lightning module (whatever its backbone), or a model holding MDLM's DIT (the HF class)
    return (hasattr(obj, "mask_index") and hasattr(obj, "noise")) or _is_dit_like(backbone)


@dataclass
class LiveModel:
    """What :func:`adapt` makes of an object: the denoiser's model and what a Denoiser needs to know."""

    model: Any  # this package's DiT on the object's tensors, or the object's own forward
    vocab_size: int
    mask_index: int
    time_conditioning: bool
    noise_eps: float | None
    weights: str  # "module" or "ema"
    fast_path: bool
    fallback_reason: str | None
    source: Any  # the object itself


def adapt(
    obj: Any,
    *,
    ema: bool = False,
    mask_index: int | None = None,
    time_conditioning: bool | None = None,
    check: bool = True,
) -> LiveModel:
    """The fast path on ``obj``'s own tensors, or its own forward with a warning (see the module doc;
    :func:`mdlm_fast.live_denoiser` documents the arguments)."""
    found = _recognize(obj, mask_index, time_conditioning)
    if found.dit is None:
        problem = f"its backbone is a {type(_backbone_of(obj)).__name__}, not MDLM's DiT"
    else:
        fast = _fast_path(found, found.dit, obj, ema=ema, check=check)
        if isinstance(fast, LiveModel):
            return fast
        problem = fast
    if ema and _holds_ema(obj):
        raise LiveModelError(
            f"ema=True: the EMA weights need the fast path, and {type(obj).__name__} is not "
            f"recognized as MDLM's model ({problem}); copy the EMA into the module (MDLM's "
            f"ema.copy_to) and pass ema=False"
        )
    warnings.warn(
        f"mdlm_fast: {type(obj).__name__} is not MDLM's DiT as this package knows it ({problem}); "
        f"sampling runs its own forward at every position (no fused head, no pruned last block)",
        LiveModelWarning,
        stacklevel=4,
    )
    return _fallback(found, problem)


def _fast_path(found: _Found, mdlm_dit: nn.Module, obj: Any, *, ema: bool, check: bool) -> LiveModel | str:
    """The fast path on ``mdlm_dit`` (the DIT-structured module of ``obj``), or why not."""
    problem = _structure_problem(mdlm_dit, found)
    if problem is not None:
        return problem
    shadow = _ema_tensors(found, mdlm_dit, obj) if ema else None
    dit = _shared_dit(found, mdlm_dit, None)
    if check:  # the math is checked on the module's own weights, the ones its forward uses
        problem = _compare_forwards(found, dit)
        if problem is not None:
            return problem
    dit = dit if shadow is None else _shared_dit(found, mdlm_dit, shadow)
    return LiveModel(
        dit,
        dit.config.vocab_size,
        found.mask_index,
        found.time_conditioning,
        found.noise_eps,
        "ema" if shadow is not None else "module",
        True,
        None,
        obj,
    )


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------


def _is_dit_like(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and all(isinstance(getattr(obj, p, None), nn.Module) for p in _DIT_PARTS)


def _backbone_of(obj: Any) -> Any:
    inner = getattr(obj, "backbone", None)
    return getattr(inner, "backbone", inner) if isinstance(getattr(inner, "backbone", None), nn.Module) else inner


def config_value(cfg: Any, path: str, default: Any = None) -> Any:
    """``cfg.a.b`` for attribute- or mapping-style configs (OmegaConf, dicts, namespaces); default if absent."""
    for key in path.split("."):
        if cfg is None:
            return default
        try:
            cfg = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
        except Exception:  # OmegaConf raises on missing keys and failed interpolations
            return default
    return default if cfg is None else cfg


def _recognize(obj: Any, mask_index: int | None, time_conditioning: bool | None) -> _Found:
    if not looks_like_mdlm(obj):
        raise LiveModelError(
            f"{type(obj).__name__} is not one of MDLM's objects (a DIT, its Lightning Diffusion "
            f"module or the Hugging Face MDLM model)"
        )
    if _is_dit_like(obj):
        return _found_dit(obj, mask_index, time_conditioning)
    backbone = obj.backbone
    if hasattr(obj, "mask_index") and hasattr(obj, "noise"):
        return _found_lightning(obj, backbone, mask_index, time_conditioning)
    return _found_hf(obj, backbone, mask_index, time_conditioning)


def _vocab_size(dit: nn.Module) -> int | None:
    embedding = getattr(getattr(dit, "vocab_embed", None), "embedding", None)
    return int(embedding.shape[0]) if isinstance(embedding, torch.Tensor) and embedding.dim() == 2 else None


def _default_mask(dit: nn.Module | None, given: int | None, what: str) -> int:
    if given is not None:
        return int(given)
    vocab = _vocab_size(dit) if dit is not None else None
    if vocab is None:
        raise LiveModelError(f"{what} records no mask id and its vocabulary size is unknown: pass mask_index=...")
    return vocab - 1


def _found_dit(dit: nn.Module, mask_index, time_conditioning) -> _Found:
    cfg = getattr(dit, "config", None)
    # MDLM's Diffusion zeroes sigma unless config.time_conditioning; the bare DIT's forward takes it as given.
    tc = time_conditioning if time_conditioning is not None else bool(config_value(cfg, "time_conditioning", True))

    def own_forward(x, sigma):
        return dit(x, sigma if tc else torch.zeros_like(sigma))

    return _Found(
        dit,
        "dit",
        dit,
        _default_mask(dit, mask_index, "a bare DIT"),
        tc,
        config_value(cfg, "model.length"),
        None,
        own_forward,
    )


def _found_hf(model: nn.Module, backbone: nn.Module, mask_index, time_conditioning) -> _Found:
    cfg = getattr(model, "config", None)
    dit = backbone if _is_dit_like(backbone) else None
    tc = time_conditioning if time_conditioning is not None else bool(config_value(cfg, "time_conditioning", False))
    mask = mask_index if mask_index is not None else config_value(cfg, "mask_index", config_value(cfg, "mask_token_id"))

    def own_forward(x, sigma):
        # positional: HF's forward(input_ids, timesteps, ...), and any wrapper's forward(x, sigma)
        return _logits_of(model(x, sigma if tc else torch.zeros_like(sigma)))

    return _Found(
        model,
        "hf",
        dit,
        _default_mask(dit, mask, "the Hugging Face model"),
        tc,
        config_value(cfg, "model_length"),
        None,
        own_forward,
    )


def _found_lightning(module: Any, backbone: nn.Module, mask_index, time_conditioning) -> _Found:
    # module: MDLM's Lightning Diffusion, read by plain attributes (mask_index, noise, ...) that
    # nn.Module's typing would describe as submodules or tensors.
    parameterization = getattr(module, "parameterization", "subs")
    if parameterization != "subs":
        raise LiveModelError(
            f"{type(module).__name__}.parameterization is {parameterization!r}: MDLM's samplers "
            f"(and this package's) need the SUBS parameterization ('subs')"
        )
    noise_eps = _log_linear_eps(module.noise)
    cfg = getattr(module, "config", None)
    tc = bool(getattr(module, "time_conditioning", config_value(cfg, "time_conditioning", False)))
    if time_conditioning is not None:
        tc = bool(time_conditioning)
    inner = backbone
    nested = getattr(backbone, "backbone", None)
    if not _is_dit_like(backbone) and isinstance(nested, nn.Module):
        inner = nested  # MDLM's backbone='hf_dit': the Hugging Face model inside
        # that model zeroes sigma itself unless its own config says time_conditioning
        tc = tc and bool(config_value(getattr(backbone, "config", None), "time_conditioning", tc))
    dit = inner if _is_dit_like(inner) else None
    mask = int(mask_index) if mask_index is not None else int(module.mask_index)

    def own_forward(x, sigma):
        return module(x, sigma)  # SUBS log-probabilities; the samplers' softmax of them is p_x0 itself

    return _Found(module, "lightning", dit, mask, tc, config_value(cfg, "model.length"), noise_eps, own_forward)


def _log_linear_eps(noise: Any) -> float:
    """The eps of a log-linear schedule, checked on its values: sigma(t) = -log1p(-(1 - eps) t)."""
    eps = getattr(noise, "eps", None)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not callable(noise):
        raise LiveModelError(
            f"the module's noise ({type(noise).__name__}) is not MDLM's log-linear schedule (no "
            f"eps); the samplers need noise.type=loglinear"
        )
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    try:
        with torch.no_grad():
            out = noise(t)
        sigma = (out[0] if isinstance(out, (tuple, list)) else out).double().cpu()
    except Exception as exc:
        raise LiveModelError(f"the module's noise ({type(noise).__name__}) could not be evaluated: {exc}") from exc
    expected = -torch.log1p(-(1 - float(eps)) * t)
    if sigma.shape != expected.shape or not torch.allclose(sigma, expected, rtol=1e-5, atol=1e-7):
        raise LiveModelError(
            f"the module's noise ({type(noise).__name__}) is not MDLM's log-linear schedule; the "
            f"samplers need noise.type=loglinear"
        )
    return float(eps)


def _logits_of(output: Any) -> torch.Tensor:
    """Logits from an HF-style output: a tensor, a tuple led by the logits, or an object with ``.logits``."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise LiveModelError(f"the model's forward returned a {type(output).__name__}, not logits")


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


def _blocks(dit: nn.Module) -> list[nn.Module]:
    """The blocks of a DIT-like module: MDLM's ModuleList (or a Sequential); none from another kind
    of module, which then fails the structure check instead of len() or indexing."""
    blocks = dit.blocks
    return list(blocks) if isinstance(blocks, (nn.ModuleList, nn.Sequential)) else []


def _n_heads(dit: nn.Module, found: _Found) -> int | None:
    blocks = _blocks(dit)
    heads = getattr(blocks[0], "n_heads", None) if blocks else None
    if isinstance(heads, int) and not isinstance(heads, bool):
        return heads
    cfg = getattr(found.outer, "config", None)
    for path in ("model.n_heads", "n_heads"):
        value = config_value(cfg, path)
        if isinstance(value, int):
            return value
    return None


def _config_for(dit: nn.Module, found: _Found) -> DiTConfig | str:
    """The DiTConfig of the module's shapes, or why there is none."""
    params = dict(dit.named_parameters())
    embedding, sigma_in = params.get("vocab_embed.embedding"), params.get("sigma_map.mlp.0.weight")
    if embedding is None or sigma_in is None or embedding.dim() != 2 or sigma_in.dim() != 2:
        return "no vocab_embed.embedding / sigma_map.mlp.0.weight of MDLM's shapes"
    heads = _n_heads(dit, found)
    if heads is None:
        return "its number of attention heads is unknown (no blocks[0].n_heads, no config n_heads)"
    try:
        return DiTConfig(
            hidden_dim=int(embedding.shape[1]),
            n_heads=heads,
            n_blocks=max(len(_blocks(dit)), 1),
            cond_dim=int(sigma_in.shape[0]),
            vocab_size=int(embedding.shape[0]),
            model_length=int(found.model_length or 1024),
            time_conditioning=found.time_conditioning,
            mask_index=found.mask_index,
        )
    except ValueError as exc:
        return str(exc)


def _listing(items: list[str]) -> str:
    extra = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f" and {extra} more" if extra > 0 else "")


def _structure_problem(dit: nn.Module, found: _Found) -> str | None:
    """None if ``dit`` has exactly the parameters, buffers and layers of MDLM's DiT, else why not."""
    config = _config_for(dit, found)
    if isinstance(config, str):
        return config
    with torch.device("meta"):
        reference = DiT(config)
    theirs = [(n, tuple(p.shape)) for n, p in dit.named_parameters()]
    ours = [(n, tuple(p.shape)) for n, p in reference.named_parameters()]
    if theirs != ours:
        names = dict(theirs)
        missing = [n for n, _ in ours if n not in names]
        extra = [n for n in names if n not in dict(ours)]
        shapes = [f"{n} {names[n]} (expected {s})" for n, s in ours if n in names and names[n] != s]
        what = (
            [f"missing {_listing(missing)}"] * bool(missing)
            + [f"extra {_listing(extra)}"] * bool(extra)
            + [f"shapes {_listing(shapes)}"] * bool(shapes)
        )
        return "parameters differ: " + ("; ".join(what) or "another order")
    known = dict(reference.named_modules())
    for name, module in dit.named_modules():
        if name in known:
            if not _same_layer(module, known[name]):
                return f"{name or 'the module'} is a {_describe(module)}, MDLM's is a {_describe(known[name])}"
        elif not isinstance(module, _HARMLESS):
            return f"extra layer {name} ({type(module).__name__})"
    buffers = dict(dit.named_buffers())
    if set(buffers) != {"rotary_emb.inv_freq"}:
        return f"buffers {_listing(sorted(buffers))}, MDLM's DiT has rotary_emb.inv_freq only"
    inv_freq = buffers["rotary_emb.inv_freq"]
    expected = reference.rotary_emb._inv_freq(torch.device("cpu"))
    if inv_freq.shape != expected.shape or not torch.allclose(inv_freq.detach().float().cpu(), expected, rtol=1e-5):
        return "its rotary frequencies are not MDLM's (base 10000 over the head dimension)"
    return None


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.GELU):
        return f"GELU(approximate={module.approximate!r})"
    return type(module).__name__


def _same_layer(theirs: nn.Module, ours: nn.Module) -> bool:
    """Same kind of layer: torch's layers by type and settings, MDLM's own classes by name."""
    if type(ours).__module__.startswith("torch."):
        if type(theirs) is not type(ours):
            return False
        return not isinstance(ours, nn.GELU) or theirs.approximate == ours.approximate
    if isinstance(ours, DiT):
        return True  # the container: its class is DIT, DITBackbone, ... by project
    return type(theirs).__name__ == type(ours).__name__


# --------------------------------------------------------------------------------------------
# Weight sharing
# --------------------------------------------------------------------------------------------


def _holds_ema(obj: Any) -> bool:
    return getattr(getattr(obj, "ema", None), "shadow_params", None) is not None


def _ema_tensors(found: _Found, mdlm_dit: nn.Module, obj: Any) -> dict[str, torch.Tensor] | None:
    """The EMA shadow tensor of each parameter name of ``mdlm_dit`` (the DIT-structured module), or
    None where the object has no EMA.

    MDLM's ExponentialMovingAverage keeps one shadow per trainable parameter of
    chain(backbone.parameters(), noise.parameters()), in that order."""
    if found.kind != "lightning" or not _holds_ema(obj):
        return None
    shadow = list(obj.ema.shadow_params)
    trainable = [p for p in obj.backbone.parameters() if p.requires_grad]
    noise = getattr(obj, "noise", None)
    noise_trainable = [p for p in noise.parameters() if p.requires_grad] if isinstance(noise, nn.Module) else []
    if len(shadow) != len(trainable) + len(noise_trainable):
        raise LiveModelError(
            f"ema.shadow_params has {len(shadow)} tensors but the backbone and noise have "
            f"{len(trainable) + len(noise_trainable)} trainable parameters: the EMA does not "
            f"belong to this module"
        )
    by_param = {id(p): s for p, s in zip(trainable, shadow)}
    out = {}
    for name, p in mdlm_dit.named_parameters():
        s = by_param.get(id(p))
        if s is None:
            continue  # frozen: MDLM's EMA neither tracks nor copies it
        if not isinstance(s, torch.Tensor) or s.shape != p.shape:
            raise LiveModelError(
                f"ema.shadow_params entry for {name} has shape "
                f"{tuple(getattr(s, 'shape', ()))}, the parameter {tuple(p.shape)}"
            )
        if s.device != p.device:
            raise LiveModelError(
                f"ema.shadow_params are on {s.device} but the module is on {p.device}: move them "
                f"(MDLM's ema.move_shadow_params_to_device)"
            )
        out[name] = s
    return out


def _shared_dit(found: _Found, mdlm_dit: nn.Module, shadow: dict[str, torch.Tensor] | None) -> DiT:
    """This package's DiT whose parameters are ``mdlm_dit``'s own Parameter objects (or the EMA
    tensors): nothing is copied, so later in-place updates of the module are seen."""
    config = _config_for(mdlm_dit, found)
    if isinstance(config, str):  # _fast_path checked the structure first, so this is not reached
        raise LiveModelError(config)
    with torch.device("meta"):
        dit = DiT(config)
    for name, param in mdlm_dit.named_parameters():
        owner, leaf = _owner(dit, name)
        source = (shadow or {}).get(name)
        owner._parameters[leaf] = param if source is None else nn.Parameter(source, requires_grad=False)
    embedding = dit.vocab_embed.embedding
    dit.rotary_emb._buffers["inv_freq"] = dit.rotary_emb._inv_freq(embedding.device)
    dit.refresh_constants()
    return dit.eval()


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


# --------------------------------------------------------------------------------------------
# The forward check and the fallback
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """Eval mode (no dropout) for the check, each submodule's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _check_input(found: _Found, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = min(int(found.model_length or _CHECK_LENGTH), _CHECK_LENGTH)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (len(_CHECK_SIGMAS), length), generator=gen)
    x[torch.rand(x.shape, generator=gen) < 0.5] = found.mask_index
    return x.to(device), torch.tensor(_CHECK_SIGMAS, device=device)


def _compare_forwards(found: _Found, dit: DiT) -> str | None:
    """None if the object's own forward and the fast path give the same next-token distributions
    (SUBS, at masked positions) on a small input, within CHECK_TOLERANCE; else why not."""
    device = dit.vocab_embed.embedding.device
    x, sigma = _check_input(found, dit.vocab_size, device)  # the module's vocabulary: dit shares its embedding
    masked = x == found.mask_index
    outer = found.outer
    try:
        with torch.no_grad(), _eval_mode(outer):
            theirs = found.own_forward(x, sigma)
            hidden = dit.trunk(x, sigma)
    except LiveModelError:
        raise
    except Exception as exc:
        raise LiveModelError(
            f"checking {type(outer).__name__} against the fast path failed in a forward: {exc} "
            f"(pass check=False to skip the check)"
        ) from exc
    with torch.no_grad():
        ours = torch.nn.functional.linear(hidden, dit.head_weight, dit.head_bias)
        p = subs_log_probs(ours.float(), x, found.mask_index).exp()[masked]
        q = subs_log_probs(theirs.float(), x, found.mask_index).exp()[masked]
    if theirs.shape != ours.shape:
        return f"its forward returns shape {tuple(theirs.shape)}, MDLM's DiT {tuple(ours.shape)}"
    distance = 0.5 * (p - q).abs().sum(-1).max().item() if p.numel() else 0.0
    tolerance = CHECK_TOLERANCE["autocast" if device.type == "cuda" else "float32"]
    if not distance <= tolerance:
        return (
            f"its forward and MDLM's DiT math disagree on a check input: total variation {distance:.3g} > {tolerance:g}"
        )
    return None


class _OwnForward:
    """The object's own forward as a plain callable ``f(x, sigma) -> logits`` (the unfused path)."""

    def __init__(self, found: _Found):
        self._found = found
        # sample() reads the default length here, as from a DiT's config
        self.config = SimpleNamespace(model_length=found.model_length)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with _eval_mode(self._found.outer):
            return self._found.own_forward(x, sigma)

    def parameters(self):
        return self._found.outer.parameters()


def _fallback(found: _Found, reason: str) -> LiveModel:
    vocab = (
        _vocab_size(found.dit)
        if found.dit is not None
        else config_value(getattr(found.outer, "config", None), "vocab_size")
    )
    if vocab is None:
        vocab = getattr(found.outer, "vocab_size", None)
    if vocab is None:
        raise LiveModelError(
            f"{type(found.outer).__name__} is not recognized ({reason}) and its vocabulary size is "
            f"unknown: wrap it as mdlm_fast.Denoiser(f, vocab_size=..., mask_index=...)"
        )
    return LiveModel(
        _OwnForward(found),
        int(vocab),
        found.mask_index,
        found.time_conditioning,
        found.noise_eps,
        "module",
        False,
        reason,
        found.outer,
    )

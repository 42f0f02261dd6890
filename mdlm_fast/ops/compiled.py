"""Typed wrappers of the compiled operators (torch.ops.mdlm_fast.*), their fake kernels, and the
constants and argument rules the operators share with everything that calls them.

The fake (meta) implementations let torch.compile and torch.library.opcheck trace the ops
without running them.
"""

from __future__ import annotations

import torch

from mdlm_fast._build import compiled_constants  # importing _build registers the operators
from mdlm_fast.ops.head_status import DeferredHeadErrors, head_status, raise_head_status

# Read from the extension, so Python and the kernels cannot disagree (tests/ops/test_compiled_constants.py
# checks them against the headers).
_CONSTANTS = compiled_constants()
# Philox stream purposes (design §7): distinct purposes never share a counter. The user purpose (0)
# is free for callers of philox_noise; the others belong to the samplers.
PURPOSES: dict[str, int] = dict(_CONSTANTS["purposes"])
PURPOSE_REVEAL = PURPOSES["reveal"]
PURPOSE_TOKEN = PURPOSES["token"]
PURPOSE_REFERENCE_GUMBEL = PURPOSES["reference_gumbel"]  # the mdlm sampler's (MDLM's ddpm_cache) Gumbel noise
PURPOSE_NOISE_REMOVAL = PURPOSES["noise_removal"]
# philox_noise's distributions.
NOISE_DISTS: tuple[str, ...] = tuple(_CONSTANTS["noise_dists"])
# Temperatures of fused_head_sample besides 0 (argmax); the upper bound is float32's largest value.
MIN_TEMPERATURE: float = _CONSTANTS["min_temperature"]
MAX_TEMPERATURE: float = _CONSTANTS["max_temperature"]
# Canonical vocabulary chunk of the two-level inverse-CDF draw (design §8): a constant of the
# algorithm (never a hardware tile), so every device draws the same token from the same uniforms.
VOCAB_CHUNK: int = _CONSTANTS["vocab_chunk"]


def check_seed(seed: int) -> int:
    """The seed rule of every op and of sample(): an int in [0, 2^64)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    return seed


def check_temperature(temperature: float) -> float:
    """fused_head_sample's temperature rule: 0 (argmax) or in [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    t = float(temperature)
    if not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
        raise ValueError(
            f"temperature must be 0 (argmax) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] "
            f"(float32), got {temperature!r}"
        )
    return t


def _op_seed(seed: int) -> int:
    """A seed in [0, 2^64) (the rule of sample() too) as the int64 the op schema carries: the same
    64 bits, so seeds from 2^63 on reach the kernels as their two's-complement pattern."""
    check_seed(seed)
    return seed - 2**64 if seed >= 2**63 else seed


def row_seeds(seeds, n: int, device) -> torch.Tensor | None:
    """Per-row seeds as the int64 [n] tensor the ops take (None stays None): a sequence of ints in
    [0, 2^64) (each checked as a seed) becomes their bit patterns; an int64 tensor is taken as
    bit patterns already."""
    if seeds is None:
        return None
    if isinstance(seeds, torch.Tensor):
        if seeds.dtype != torch.int64 or seeds.dim() != 1 or seeds.shape[0] != n:
            raise ValueError(
                f"seeds must be an int64 tensor [N={n}] (one seed per row), got {seeds.dtype} {tuple(seeds.shape)}"
            )
        return seeds
    seeds = [_op_seed(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"seeds must hold one seed per row (N={n}), got {len(seeds)}")
    return torch.tensor(seeds, dtype=torch.int64, device=device)


def _check_same_device(**tensors: torch.Tensor | None) -> None:
    """Every tensor argument on the first one's device, else one error naming the argument."""
    items = [(name, t) for name, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise RuntimeError(
                f"mdlm_fast: argument '{name}' must be on the device of '{first_name}' ({first.device}), got {t.device}"
            )


def philox_noise(keys: torch.Tensor, seed: int, purpose: int, n: int, dist: str = "uniform") -> torch.Tensor:
    """Counter-based noise: row i holds numbers 0..n-1 of the stream keyed by (seed, purpose, keys[i]).

    keys: int64 [N, 3] rows of (step, row, position). dist: "uniform" (float64 in (0, 1)),
    "gumbel" (float64 Gumbel(0, 1)) or "uniform24" (float32 in [0, 1), torch.rand's resolution).
    """
    return torch.ops.mdlm_fast.philox_noise(keys, _op_seed(seed), int(purpose), int(n), dist)


@torch.library.register_fake("mdlm_fast::philox_noise")
def _philox_noise_fake(keys, seed, purpose, n, dist):
    torch._check(keys.dim() == 2 and keys.shape[1] == 3, lambda: "keys must have shape [N, 3]")
    torch._check(dist in NOISE_DISTS, lambda: f"dist must be one of {NOISE_DISTS}")
    dtype = torch.float32 if dist == "uniform24" else torch.float64
    return keys.new_empty((keys.shape[0], n), dtype=dtype)


def fused_head_sample(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    keys: torch.Tensor,
    *,
    seed: int,
    purpose: int = 2,
    temperature: float = 1.0,
    banned: torch.Tensor | None = None,
    return_logprob: bool = False,
    seeds=None,
    deferred: DeferredHeadErrors | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Project hidden rows onto the vocabulary and draw one token per row, without [N, V] logits.

    hidden [N, d] (float32/bfloat16/float16), weight [V, d] and bias [V] in the same dtype,
    keys int64 [N, 3] of (step, row, position): row i's draw uses the Philox stream
    (seed, purpose, keys[i]), so it does not depend on which other rows are in the call.
    temperature 0 takes the argmax (lowest id on ties). banned: int64 ids never drawn.
    Returns (tokens int64 [N], logprob float32 [N] or None): the chosen ids' log-probabilities
    under softmax(logits / temperature) (temperature 1 when it is 0).

    seed: an int in [0, 2^64), as for sample(). seeds: optional per-row seeds (ints in [0, 2^64), or
    an int64 [N] tensor of their bit patterns) overriding seed: row i then draws exactly what a call
    with seed=seeds[i] draws, so rows of different requests share one call (one read of W).
    temperature: 0 or in [1e-6, float32 max].
    Non-finite logits follow one rule on every device (and in reference.py): a row with a NaN
    logit, or with every id banned or -inf, raises RuntimeError naming the row; a row with a +inf
    logit takes its lowest +inf id with log-probability 0. Banned ids outside [0, V) are refused.
    All tensors must be on one device.

    The value errors (NaN rows, rows with nothing to draw, out-of-range banned ids) are raised
    before returning on every device; on CUDA that costs one device->host wait per call, unless
    ``deferred`` collects them on the device for a later read (head_status.py; the samplers read
    it at the run's end, and such rows come back as ``deferred.fill_token``).
    """
    if banned is None:
        banned = torch.empty(0, dtype=torch.int64, device=hidden.device)
    seeds = row_seeds(seeds, hidden.shape[0], hidden.device)
    _check_same_device(hidden=hidden, weight=weight, bias=bias, keys=keys, banned=banned, seeds=seeds)
    tokens, logprob = torch.ops.mdlm_fast.fused_head_sample(
        hidden,
        weight,
        bias,
        keys,
        _op_seed(seed),
        int(purpose),
        float(temperature),
        banned,
        bool(return_logprob),
        seeds,
    )
    if tokens.device.type == "cuda":  # the CUDA op reports value errors in the tokens (head_status.py)
        tokens = finish_coded_call(tokens, banned, weight.shape[0], deferred)
    return tokens, (logprob if return_logprob else None)


def finish_coded_call(
    tokens: torch.Tensor, banned: torch.Tensor, vocab: int, deferred: DeferredHeadErrors | None
) -> torch.Tensor:
    """What follows a CUDA fused_head_sample call: raise its value errors now (one host read), or
    record them in ``deferred`` without one."""
    if deferred is None:
        raise_head_status(head_status(tokens, banned, vocab), vocab)
        return tokens
    return deferred.record(tokens, banned, vocab)


@torch.library.register_fake("mdlm_fast::fused_head_sample")
def _fused_head_sample_fake(hidden, weight, bias, keys, seed, purpose, temperature, banned, return_logprob, seeds=None):
    torch._check(hidden.dim() == 2, lambda: "hidden must be 2-D [N, d]")
    torch._check(weight.dim() == 2 and weight.shape[1] == hidden.shape[1], lambda: "weight must be [V, d]")
    # A meta tensor among real ones dispatches here: refuse rather than return uninitialized ids.
    _check_same_device(hidden=hidden, weight=weight, bias=bias, keys=keys, banned=banned, seeds=seeds)
    torch._check(
        seeds is None or (seeds.dim() == 1 and seeds.shape[0] == hidden.shape[0]),
        lambda: "seeds must be [N], one per hidden row",
    )
    n = hidden.shape[0]
    tokens = hidden.new_empty((n,), dtype=torch.int64)
    logprob = hidden.new_empty((n if return_logprob else 0,), dtype=torch.float32)
    return tokens, logprob

"""Pure-PyTorch reference of every mdlm_fast operator: the test oracle, never on a sampling path.

These functions are what the compiled kernels are tested against (same inputs, same noise, same
outputs) and a readable statement of what each kernel computes. They are slow by design: they
materialize what the kernels avoid ([N, V] logits, per-entry noise). The Philox stream is
recomputed here from its definition (design §7); the fused head's reference is the vocabulary
projection followed by the logits draw that samplers use for denoisers without a fused head
(``mdlm_fast.ops.draw``, design §8), fed with this module's stream. No compiled operator runs here;
the constants (the vocabulary chunk, the temperature bounds, the noise names) are the extension's.
"""

from __future__ import annotations

import torch

from mdlm_fast.ops import draw
from mdlm_fast.ops.compiled import NOISE_DISTS

__all__ = [
    "philox4x32_10",
    "philox_blocks",
    "uniform53",
    "philox_uniforms",
    "philox_noise",
    "head_logits",
    "fused_head_sample",
    "sample_from_logits",
]

_M32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # int64 products wrap modulo 2^64, so the low 64 bits -- all a 32x32 product has -- are exact.
    p = b * a
    return (p >> 32) & _M32, p & _M32


def philox4x32_10(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 on int64 counters [..., 4] holding 32-bit words; returns [..., 4] words."""
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key[0] & _M32, key[1] & _M32
    for _ in range(10):
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W0) & _M32, (k1 + _PHILOX_W1) & _M32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def _check_keys(keys: torch.Tensor) -> None:
    if keys.dim() != 2 or keys.shape[1] != 3 or keys.dtype != torch.int64:
        raise ValueError(
            f"keys must be an int64 tensor of shape [N, 3] (step, row, position), got {tuple(keys.shape)} {keys.dtype}"
        )


def philox_blocks(keys: torch.Tensor, seed: int, purpose: int, n_blocks: int) -> torch.Tensor:
    """Philox blocks 0..n_blocks-1 of each key: int64 [N, n_blocks, 4] of 32-bit words."""
    _check_keys(keys)
    keys = keys.to(torch.int64)
    n = keys.shape[0]
    step_purpose = (keys[:, 0] & 0xFFFFFF) | (purpose << 24)
    blocks = torch.arange(n_blocks, dtype=torch.int64, device=keys.device)
    counter = torch.stack(
        [
            blocks.expand(n, n_blocks),
            keys[:, 2:3].expand(n, n_blocks) & _M32,
            keys[:, 1:2].expand(n, n_blocks) & _M32,
            step_purpose[:, None].expand(n, n_blocks),
        ],
        dim=-1,
    )
    seed &= (1 << 64) - 1
    return philox4x32_10(counter, (seed & _M32, seed >> 32))


def uniform53(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two 32-bit words -> float64 uniform in (0, 1), as philox.h's uniform53."""
    x = ((a >> 5) << 26) | (b >> 6)
    u = x.to(torch.float64) * 2.0**-53
    return torch.where(x == 0, torch.full_like(u, 2.0**-54), u)


def philox_uniforms(keys: torch.Tensor, seed: int, purpose: int, n: int) -> torch.Tensor:
    """Numbers 0..n-1 of each key's float64 uniform stream: [N, n] (as uniform53_at in philox.h)."""
    words = philox_blocks(keys, seed, purpose, (n + 1) // 2)
    return torch.stack(
        [uniform53(words[..., 0], words[..., 1]), uniform53(words[..., 2], words[..., 3])], dim=-1
    ).flatten(1)[:, :n]


def philox_noise(keys: torch.Tensor, seed: int, purpose: int, n: int, dist: str) -> torch.Tensor:
    """Reference of torch.ops.mdlm_fast.philox_noise: [N, n] numbers of each key's stream."""
    if dist in ("uniform", "gumbel"):
        u = philox_uniforms(keys, seed, purpose, n)
        return -torch.log(-torch.log(u)) if dist == "gumbel" else u
    if dist == "uniform24":
        words = philox_blocks(keys, seed, purpose, (n + 3) // 4).flatten(1)[:, :n]
        return (words >> 8).to(torch.float32) * 2.0**-24
    raise ValueError(f"dist must be one of {NOISE_DISTS}, got {dist!r}")


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The vocabulary projection in float32: hidden [N, d] @ weight[V, d]^T (+ bias)."""
    logits = hidden.float() @ weight.float().T
    return logits if bias is None else logits + bias.float()


def fused_head_sample(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    keys: torch.Tensor,
    seed: int,
    purpose: int,
    temperature: float,
    banned: torch.Tensor,
    return_logprob: bool,
    seeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of torch.ops.mdlm_fast.fused_head_sample: head_logits, then sample_from_logits."""
    return sample_from_logits(
        head_logits(hidden, weight, bias), keys, seed, purpose, temperature, banned, return_logprob, seeds=seeds
    )


def sample_from_logits(
    logits: torch.Tensor,
    keys: torch.Tensor,
    seed: int,
    purpose: int,
    temperature: float,
    banned: torch.Tensor,
    return_logprob: bool,
    seeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mdlm_fast.ops.draw.sample_from_logits` on this module's Philox stream."""
    return draw.sample_from_logits(
        logits, keys, seed, purpose, temperature, banned, return_logprob, noise=philox_noise, seeds=seeds
    )

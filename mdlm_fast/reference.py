"""Pure-PyTorch reference of every mdlm_fast operator.

These functions are the oracle the compiled kernels are tested against (same inputs, same noise,
same outputs) and a readable statement of what each kernel computes. They are slow by design:
they materialize what the kernels avoid ([N, V] logits, per-entry noise).
"""
from __future__ import annotations

import torch

# Mirrors csrc/include/mdlm_fast/philox.h.
PURPOSE_USER = 0
PURPOSE_REVEAL = 1
PURPOSE_TOKEN = 2
PURPOSE_REFERENCE_GUMBEL = 3
PURPOSE_NOISE_REMOVAL = 4
MAX_STEP = (1 << 24) - 1

# Temperatures of fused_head_sample besides 0 (argmax): mirrors csrc/checks.h.
MIN_TEMPERATURE = 1e-6
MAX_TEMPERATURE = 3.4028234663852886e38  # float32's largest finite value

# Canonical vocabulary chunk of the two-level inverse-CDF draw: a constant of the algorithm
# (never a hardware tile), so every device draws the same token from the same uniforms.
VOCAB_CHUNK = 1024

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
        raise ValueError(f"keys must be an int64 tensor of shape [N, 3] (step, row, position), "
                         f"got {tuple(keys.shape)} {keys.dtype}")


def philox_blocks(keys: torch.Tensor, seed: int, purpose: int, n_blocks: int) -> torch.Tensor:
    """Philox blocks 0..n_blocks-1 of each key: int64 [N, n_blocks, 4] of 32-bit words."""
    _check_keys(keys)
    keys = keys.to(torch.int64)
    n = keys.shape[0]
    step_purpose = (keys[:, 0] & 0xFFFFFF) | (purpose << 24)
    blocks = torch.arange(n_blocks, dtype=torch.int64, device=keys.device)
    counter = torch.stack([
        blocks.expand(n, n_blocks),
        keys[:, 2:3].expand(n, n_blocks) & _M32,
        keys[:, 1:2].expand(n, n_blocks) & _M32,
        step_purpose[:, None].expand(n, n_blocks),
    ], dim=-1)
    seed &= (1 << 64) - 1
    return philox4x32_10(counter, (seed & _M32, seed >> 32))


def uniform53(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two 32-bit words -> float64 uniform in (0, 1), as philox.h's uniform53."""
    x = ((a >> 5) << 26) | (b >> 6)
    u = x.to(torch.float64) * 2.0 ** -53
    return torch.where(x == 0, torch.full_like(u, 2.0 ** -54), u)


def philox_uniforms(keys: torch.Tensor, seed: int, purpose: int, n: int) -> torch.Tensor:
    """Numbers 0..n-1 of each key's float64 uniform stream: [N, n] (as uniform53_at in philox.h)."""
    words = philox_blocks(keys, seed, purpose, (n + 1) // 2)
    return torch.stack([uniform53(words[..., 0], words[..., 1]),
                        uniform53(words[..., 2], words[..., 3])], dim=-1).flatten(1)[:, :n]


def philox_noise(keys: torch.Tensor, seed: int, purpose: int, n: int, dist: str) -> torch.Tensor:
    """Reference of torch.ops.mdlm_fast.philox_noise: [N, n] numbers of each key's stream."""
    if dist in ("uniform", "gumbel"):
        u = philox_uniforms(keys, seed, purpose, n)
        return -torch.log(-torch.log(u)) if dist == "gumbel" else u
    if dist == "uniform24":
        words = philox_blocks(keys, seed, purpose, (n + 3) // 4).flatten(1)[:, :n]
        return (words >> 8).to(torch.float32) * 2.0 ** -24
    raise ValueError(f"dist must be one of 'uniform', 'gumbel', 'uniform24', got {dist!r}")


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The vocabulary projection in float32: hidden [N, d] @ weight[V, d]^T (+ bias)."""
    logits = hidden.float() @ weight.float().T
    return logits if bias is None else logits + bias.float()


def _first_above(cumulative: torch.Tensor, target: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Index of the first cumulative sum above target, clamped to the last entry with mass.

    The clamp only matters when rounding leaves the target at or above the final sum.
    """
    index = (cumulative <= target[..., None]).sum(-1)
    positions = torch.arange(mass.shape[-1], device=mass.device)
    last_with_mass = torch.where(mass > 0, positions, torch.zeros_like(positions)).amax(-1)
    return torch.minimum(index, last_with_mass)


def check_seed(seed: int) -> int:
    """The seed rule of every op and of sample(): an int in [0, 2^64)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    return seed


def check_temperature(temperature: float) -> float:
    """fused_head_sample's temperature rule: 0 (argmax) or in [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    t = float(temperature)
    if not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
        raise ValueError(f"temperature must be 0 (argmax) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] "
                         f"(float32), got {temperature!r}")
    return t


def fused_head_sample(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      keys: torch.Tensor, seed: int, purpose: int, temperature: float,
                      banned: torch.Tensor, return_logprob: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of torch.ops.mdlm_fast.fused_head_sample: head_logits, then sample_from_logits."""
    return sample_from_logits(head_logits(hidden, weight, bias), keys, seed, purpose, temperature,
                              banned, return_logprob)


def sample_from_logits(logits: torch.Tensor, keys: torch.Tensor, seed: int, purpose: int,
                       temperature: float, banned: torch.Tensor,
                       return_logprob: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-level inverse-CDF draw of one id per row of logits [N, V].

    z = logits / temperature in float32, banned ids at -inf. The vocabulary is cut into
    VOCAB_CHUNK-id chunks; chunk c has max m_c, weights e = exp(z - m_c) (float32 exp) and mass
    s_c = sum e (float64). Inside every chunk a candidate id is drawn by inverse CDF: the first id
    whose float64 running sum of e exceeds v_c * s_c. Then u picks the chunk, with probability
    proportional to s_c exp(m_c - M), and its candidate is the token. Exact in distribution:
    P(id) = P(chunk) P(id | chunk). The uniforms are numbers 0 (u) and 1 + c (v_c) of the row's
    Philox stream, so a kernel reads the weight matrix once and never revisits a chunk.
    Temperature 0 takes the argmax (lowest id on ties) instead. The log-probability is that of
    the chosen id under softmax(z) (temperature 1 when it is 0).

    Non-finite logits, as in every kernel: a row with a NaN in z, or with every id banned or -inf,
    raises RuntimeError naming the row; a row with a +inf in z takes its lowest +inf id, with
    log-probability 0; -inf ids are never drawn. Banned ids outside [0, V) are refused.
    """
    check_seed(seed)
    temperature = check_temperature(temperature)
    n, vocab = logits.shape
    if banned.numel() > 0:
        bad = (banned < 0) | (banned >= vocab)
        if bad.any():
            raise RuntimeError(f"mdlm_fast: argument 'banned' ids must lie in [0, {vocab}), "
                               f"got {int(banned[bad][0])}")
    z = logits.float()
    if temperature > 0 and temperature != 1.0:
        # float32 division, as the kernels (the temperature itself is used as a float32)
        z = z / torch.tensor(temperature, dtype=torch.float32)
    else:
        z = z.clone()
    z[:, banned] = float("-inf")
    nan_rows = torch.isnan(z).any(-1)
    if nan_rows.any():
        raise RuntimeError(f"mdlm_fast: fused_head_sample: row {int(nan_rows.nonzero()[0, 0])} has a NaN logit "
                           f"(NaN or inf * 0 in 'hidden', 'weight' or 'bias'); nothing can be drawn")
    empty_rows = (z == float("-inf")).all(-1)
    if empty_rows.any():
        raise RuntimeError(f"mdlm_fast: fused_head_sample: every vocabulary id of row "
                           f"{int(empty_rows.nonzero()[0, 0])} is banned or -inf; nothing can be drawn")
    inf_rows = (z == float("inf")).any(-1)
    if inf_rows.any():
        # Rows with +inf: the lowest +inf id, log-probability 0; the other rows as usual.
        finite_rows = ~inf_rows
        tokens = (z == float("inf")).int().argmax(-1)
        logprob = torch.zeros(n, device=z.device)
        if finite_rows.any():
            t, lp = sample_from_logits(logits[finite_rows], keys[finite_rows], seed, purpose, temperature,
                                       banned, True)
            tokens[finite_rows] = t
            logprob[finite_rows] = lp
        return tokens, (logprob if return_logprob else torch.empty(0, device=z.device))

    n_chunks = (vocab + VOCAB_CHUNK - 1) // VOCAB_CHUNK
    padded = torch.full((n, n_chunks * VOCAB_CHUNK), float("-inf"), device=z.device)
    padded[:, :vocab] = z
    chunks = padded.view(n, n_chunks, VOCAB_CHUNK)
    chunk_max = chunks.amax(-1)
    finite_max = torch.where(torch.isfinite(chunk_max), chunk_max, torch.zeros_like(chunk_max))
    exps = torch.exp(chunks - finite_max[..., None])
    running = exps.double().cumsum(-1)
    chunk_mass = running[..., -1]
    row_max = chunk_max.amax(-1)
    weights = chunk_mass * torch.exp(finite_max.double() - row_max.double()[:, None])
    cumulative = weights.cumsum(-1)
    total = cumulative[:, -1]

    if temperature == 0:
        tokens = z.argmax(-1)  # torch returns the first maximal index
    else:
        u = philox_uniforms(keys, seed, purpose, 1 + n_chunks)
        candidates = _first_above(running, u[:, 1:] * chunk_mass, exps.double())
        chunk = _first_above(cumulative, u[:, 0] * total, weights)
        tokens = chunk * VOCAB_CHUNK + candidates.gather(1, chunk[:, None])[:, 0]

    if not return_logprob:
        return tokens, torch.empty(0, device=z.device)
    chosen = z.gather(1, tokens[:, None])[:, 0].double()
    logprob = (chosen - row_max.double() - torch.log(total)).float()
    return tokens, logprob

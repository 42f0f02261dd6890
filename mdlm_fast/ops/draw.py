"""The two-level inverse-CDF draw from materialized logits (design §8, eqs. (13)-(14)).

Samplers use it for denoisers that return logits instead of exposing a fused head; it draws the
same token from the same uniforms as the fused kernels, which is why ``reference.fused_head_sample``
is the vocabulary projection followed by this function.
"""

from __future__ import annotations

from typing import Callable

import torch

from mdlm_fast.ops.compiled import VOCAB_CHUNK, check_seed, check_temperature, philox_noise, row_seeds

#: ``noise(keys, seed, purpose, n, dist)``: the Philox stream the draw reads its uniforms from.
Noise = Callable[[torch.Tensor, int, int, int, str], torch.Tensor]


def _first_above(cumulative: torch.Tensor, target: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Index of the first cumulative sum above target, clamped to the last entry with mass.

    The clamp only matters when rounding leaves the target at or above the final sum.
    """
    index = (cumulative <= target[..., None]).sum(-1)
    positions = torch.arange(mass.shape[-1], device=mass.device)
    last_with_mass = torch.where(mass > 0, positions, torch.zeros_like(positions)).amax(-1)
    return torch.minimum(index, last_with_mass)


def _uniforms(
    keys: torch.Tensor, seed: int, seeds: torch.Tensor | None, purpose: int, n: int, noise: Noise
) -> torch.Tensor:
    """The first n uniforms of each row's stream: under its own seed where per-row seeds are given
    (one noise call per distinct seed; a row's noise depends on its key and seed alone)."""
    if seeds is None:
        return noise(keys, seed, purpose, n, "uniform")
    out = torch.empty(keys.shape[0], n, dtype=torch.float64, device=keys.device)
    for s in torch.unique(seeds).tolist():
        rows = seeds == s
        out[rows] = noise(keys[rows], s % 2**64, purpose, n, "uniform")
    return out


def sample_from_logits(
    logits: torch.Tensor,
    keys: torch.Tensor,
    seed: int,
    purpose: int,
    temperature: float,
    banned: torch.Tensor,
    return_logprob: bool,
    noise: Noise = philox_noise,
    seeds=None,
) -> tuple[torch.Tensor, torch.Tensor]:
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

    ``noise`` is the compiled ``philox_noise`` op; :mod:`mdlm_fast.ops.reference` passes its own
    pure-PyTorch stream, which gives the same numbers.
    seeds: optional per-row seeds overriding seed, as in the fused op.
    """
    check_seed(seed)
    seeds = row_seeds(seeds, logits.shape[0], logits.device)
    temperature = check_temperature(temperature)
    n, vocab = logits.shape
    if banned.numel() > 0:
        bad = (banned < 0) | (banned >= vocab)
        if bad.any():
            raise RuntimeError(f"mdlm_fast: argument 'banned' ids must lie in [0, {vocab}), got {int(banned[bad][0])}")
    z = logits.float()
    if temperature > 0 and temperature != 1.0:
        # float32 division, as the kernels (the temperature itself is used as a float32)
        z = z / torch.tensor(temperature, dtype=torch.float32)
    else:
        z = z.clone()
    z[:, banned] = float("-inf")
    nan_rows = torch.isnan(z).any(-1)
    if nan_rows.any():
        raise RuntimeError(
            f"mdlm_fast: fused_head_sample: row {int(nan_rows.nonzero()[0, 0])} has a NaN logit "
            f"(NaN or inf * 0 in 'hidden', 'weight' or 'bias'); nothing can be drawn"
        )
    empty_rows = (z == float("-inf")).all(-1)
    if empty_rows.any():
        raise RuntimeError(
            f"mdlm_fast: fused_head_sample: every vocabulary id of row "
            f"{int(empty_rows.nonzero()[0, 0])} is banned or -inf; nothing can be drawn"
        )
    inf_rows = (z == float("inf")).any(-1)
    if inf_rows.any():
        # Rows with +inf: the lowest +inf id, log-probability 0; the other rows as usual.
        finite_rows = ~inf_rows
        tokens = (z == float("inf")).int().argmax(-1)
        logprob = torch.zeros(n, device=z.device)
        if finite_rows.any():
            t, lp = sample_from_logits(
                logits[finite_rows],
                keys[finite_rows],
                seed,
                purpose,
                temperature,
                banned,
                True,
                noise,
                None if seeds is None else seeds[finite_rows],
            )
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
        u = _uniforms(keys, seed, seeds, purpose, 1 + n_chunks, noise)
        candidates = _first_above(running, u[:, 1:] * chunk_mass, exps.double())
        chunk = _first_above(cumulative, u[:, 0] * total, weights)
        tokens = chunk * VOCAB_CHUNK + candidates.gather(1, chunk[:, None])[:, 0]

    if not return_logprob:
        return tokens, torch.empty(0, device=z.device)
    chosen = z.gather(1, tokens[:, None])[:, 0].double()
    logprob = (chosen - row_max.double() - torch.log(total)).float()
    return tokens, logprob

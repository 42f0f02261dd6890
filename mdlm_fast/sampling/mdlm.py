"""The MDLM sampler (``sampler="mdlm"``, alias ``"reference"``): a faithful port of MDLM's
``_ddpm_caching_update`` loop (design §3).

At step i with t = ts[i], s = t - dt: p_x0 = exp(SUBS(model(x, sigma(t)))) (or the cache),
q_xs = p_x0 * (mc(t) - mc(s)), q_xs[mask] = mc(s), x' ~ Categorical(q_xs) by Gumbel-max, and
already-unmasked tokens are kept. The cache (p_x0) is reused while the whole batch is unchanged,
the model is not time-conditioned and the schedule stays on the same model. After the loop one
more forward at t = 1e-5 replaces the remaining masks by the argmax (noise removal).

Noise comes from the counter-based Philox streams keyed (seed, step, row, position, vocab id), so
runs are reproducible across devices. precision="fp64" compares log q + Gumbel in float64;
"fp32-mdlm" is MDLM's float32 ``q / (1e-10 - log(u + 1e-10))`` with 24-bit uniforms, whose
truncated tail lowers the effective temperature (kept to reproduce published numbers).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mdlm_fast.models.dit import subs_log_probs
from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops.compiled import PURPOSE_REFERENCE_GUMBEL
from mdlm_fast.sampling.keys import position_grid
from mdlm_fast.sampling.run import SamplingRun


def _gumbel_max_step(
    run: SamplingRun, p_x0: torch.Tensor, mc_t: float, mc_s: float, keys: torch.Tensor
) -> torch.Tensor:
    """One categorical draw per position from q_xs; returns int64 [B, L]."""
    batch, length, vocab = p_x0.shape
    mask = run.mask_index
    if run.precision == "fp32-mdlm":
        q = p_x0 * (mc_t - mc_s)
        q[..., mask] = mc_s
        u = ops.philox_noise(keys, run.seed, PURPOSE_REFERENCE_GUMBEL, vocab, "uniform24").view_as(q)
        return (q / (1e-10 - (u + 1e-10).log())).argmax(dim=-1)
    q = p_x0.double() * (mc_t - mc_s)
    q[..., mask] = mc_s
    gumbel = ops.philox_noise(keys, run.seed, PURPOSE_REFERENCE_GUMBEL, vocab, "gumbel").view_as(q)
    return (q.log_() + gumbel).argmax(dim=-1)


def generate(run: SamplingRun) -> torch.Tensor:
    x = run.x.clone()
    batch, length = x.shape
    ts = run.timesteps.tolist()
    dt = run.dt
    keys = position_grid(batch, length, x.device)  # the step column is set per step
    p_x0, cached_model = None, None
    for i in tqdm(range(run.schedule.steps), disable=not run.progress, desc="mdlm sampler", unit="step", leave=False):
        t = ts[i]
        s = t - dt
        index = run.schedule[i]
        model = run.models[index]
        if p_x0 is None or cached_model != index:
            logits = model.logits(x, run.sigma(t, batch))
            run.check_forward(i, index, logits, logits=True)
            p_x0 = subs_log_probs(logits, x, run.mask_index).exp()
            cached_model = index
            run.record_forward(index, batch, batch * length)
        keys[:, 0] = i
        proposal = _gumbel_max_step(run, p_x0, run.noise.move_chance(t), run.noise.move_chance(s), keys)
        x_next = torch.where(x != run.mask_index, x, proposal)
        run.host_syncs += 1  # the cache rule compares the whole batch on the host, as MDLM does;
        # the same transfer brings this step's non-finite flag, so a broken forward stops at once
        changed, bad = torch.stack([(x_next != x).any(), run.non_finite[i] != 0]).tolist()
        if bad:
            run.raise_if_non_finite(i)
        if model.time_conditioning or changed:
            p_x0 = None
        x = x_next

    last = run.schedule[-1]
    logits = run.models[last].logits(x, run.sigma(ts[-1], batch))
    run.check_forward(run.schedule.steps, last, logits, logits=True)
    run.record_forward(last, batch, batch * length)
    return subs_log_probs(logits, x, run.mask_index).argmax(dim=-1)

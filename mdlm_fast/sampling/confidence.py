"""Confidence decoding (LLaDA-style): at each step unmask the k most confident masked positions.

Not MDLM's ancestral sampler and not the same output distribution: every masked position gets a
proposed token and its probability, and only the k with the highest probability are kept. The
fused op supplies both per masked position (``return_logprob``) without materializing logits.
The number unmasked per step is fixed up front (M masked positions spread evenly over T steps),
so the loop needs no host synchronization: masked positions are found by a stable argsort whose
output size is known on the host.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops.compiled import PURPOSE_TOKEN
from mdlm_fast.ops.draw import sample_from_logits
from mdlm_fast.sampling.keys import step_keys
from mdlm_fast.sampling.run import SamplingRun


def unmask_counts(masked: int, steps: int) -> list[int]:
    """How many positions each step unmasks: M spread as evenly as possible over T steps."""
    return [(i + 1) * masked // steps - i * masked // steps for i in range(steps)]


def generate(run: SamplingRun) -> torch.Tensor:
    x = run.x.clone()
    batch, length = x.shape
    masked = int((run.x[0] == run.mask_index).sum())  # the prior: the same count in every row
    run.host_syncs += 1
    counts = unmask_counts(masked, run.schedule.steps)
    ts = run.timesteps.tolist()
    rows = torch.arange(batch, device=x.device)
    remaining = masked
    for i in tqdm(range(run.schedule.steps), disable=not run.progress, desc="confidence sampler", unit="step",
                  leave=False):
        k = counts[i]
        if k == 0:
            continue
        model_index = run.schedule[i]
        model = run.models[model_index]
        # masked positions first, in position order: the first `remaining` columns are the masked ones
        positions = torch.argsort((x != run.mask_index).to(torch.int8), dim=1, stable=True)[:, :remaining]
        flat_rows = rows.repeat_interleave(remaining)
        flat_pos = positions.reshape(-1)
        keys = step_keys(i, flat_rows, flat_pos)
        sigma = run.sigma(ts[i], batch)
        if model.fused:
            hidden = model.hidden(x, sigma)[flat_rows, flat_pos]
            run.check_forward(i, model_index, hidden, logits=False)
            weight, bias = model.head()
            with run.naming_non_finite():
                tokens, logprob = ops.fused_head_sample(hidden, weight, bias, keys, seed=run.seed,
                                                        purpose=PURPOSE_TOKEN, temperature=run.temperature,
                                                        banned=run.banned, return_logprob=True,
                                                        deferred=run.head_errors)
            head_positions = flat_rows.shape[0]
        else:
            logits = model.logits(x, sigma)[flat_rows, flat_pos]
            run.check_forward(i, model_index, logits, logits=True)
            with run.naming_non_finite():
                tokens, logprob = sample_from_logits(logits, keys, run.seed, PURPOSE_TOKEN, run.temperature,
                                                     run.banned, True)
            head_positions = batch * length
        best = logprob.view(batch, remaining).topk(k, dim=1).indices
        chosen_pos = positions.gather(1, best)
        chosen_tok = tokens.view(batch, remaining).gather(1, best)
        x.scatter_(1, chosen_pos, chosen_tok)
        run.record_forward(model_index, batch, head_positions)
        remaining -= k
    return x

"""Confidence decoding (LLaDA-style): at each step unmask the k most confident masked positions.

Not MDLM's ancestral sampler and not the same output distribution: every masked position gets a
proposed token and its probability, and only the k with the highest probability are kept. The
fused op supplies both per masked position (``return_logprob``) without materializing logits.
The number unmasked per step is fixed up front (each row's M masked positions spread evenly over
T steps), so the loop needs no host synchronization: masked positions are found by a stable argsort
whose output size is known on the host. Rows of an infilling batch may have different numbers of
masked positions; their given tokens are never picked.
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
    masked = (run.x == run.mask_index).sum(dim=1).tolist()  # rows differ where given tokens differ (infilling)
    run.host_syncs += 1
    per_row = [unmask_counts(m, run.schedule.steps) for m in masked]
    ts = run.timesteps.tolist()
    rows = torch.arange(batch, device=x.device)
    remaining = list(masked)
    for i in tqdm(
        range(run.schedule.steps), disable=not run.progress, desc="confidence sampler", unit="step", leave=False
    ):
        k = [counts[i] for counts in per_row]
        k_max, width = max(k, default=0), max(remaining, default=0)
        if k_max == 0:
            continue
        model_index = run.schedule[i]
        model = run.models[model_index]
        # masked positions first, in position order: a row's first remaining[r] columns are its masked ones
        positions = torch.argsort((x != run.mask_index).to(torch.int8), dim=1, stable=True)[:, :width]
        flat_rows = rows.repeat_interleave(width)
        flat_pos = positions.reshape(-1)
        keys = step_keys(i, flat_rows, flat_pos)
        sigma = run.sigma(ts[i], batch)
        if model.fused:
            hidden = model.hidden(x, sigma)[flat_rows, flat_pos]
            run.check_forward(i, model_index, hidden, logits=False)
            weight, bias = model.head()
            with run.naming_non_finite():
                tokens, logprob = ops.fused_head_sample(
                    hidden,
                    weight,
                    bias,
                    keys,
                    seed=run.seed,
                    purpose=PURPOSE_TOKEN,
                    temperature=run.temperature,
                    banned=run.banned,
                    return_logprob=True,
                    deferred=run.head_errors,
                )
            if logprob is None:  # the op returns it whenever return_logprob is set
                raise RuntimeError("fused_head_sample returned no log-probabilities with return_logprob=True")
            head_positions = flat_rows.shape[0]
        else:
            logits = model.logits(x, sigma)[flat_rows, flat_pos]
            run.check_forward(i, model_index, logits, logits=True)
            with run.naming_non_finite():
                tokens, logprob = sample_from_logits(
                    logits, keys, run.seed, PURPOSE_TOKEN, run.temperature, run.banned, True
                )
            head_positions = batch * length
        logprob, tokens = logprob.view(batch, width), tokens.view(batch, width)
        uneven = min(remaining) < width or min(k) < k_max
        if uneven:  # rows with fewer masked positions: their tail columns are given tokens, never chosen
            columns = torch.arange(width, device=x.device)
            logprob = logprob.masked_fill(columns >= torch.tensor(remaining, device=x.device)[:, None], float("-inf"))
        best = logprob.topk(k_max, dim=1).indices
        chosen_pos = positions.gather(1, best)
        chosen_tok = tokens.gather(1, best)
        if uneven:  # a row unmasking fewer than k_max this step writes its extra picks back unchanged
            keep = torch.arange(k_max, device=x.device) < torch.tensor(k, device=x.device)[:, None]
            chosen_tok = torch.where(keep, chosen_tok, x.gather(1, chosen_pos))
        x.scatter_(1, chosen_pos, chosen_tok)
        run.record_forward(model_index, batch, head_positions)
        remaining = [r - n for r, n in zip(remaining, k)]
    return x

"""The fast sampler: reveal-first, exact in distribution with the reference sampler.

Per masked position, one reference step is equivalent to: reveal with probability (t - s) / t,
and if revealed draw the token from p_x0 at that position. Chained over the grid the survival
probabilities telescope -- a position is still masked after step i with probability ts[i + 1] --
so ONE uniform u per position fixes its reveal step: the i with ts[i + 1] < u <= ts[i]
(u <= ts[T] = 1e-5: left for noise removal). The whole reveal plan is therefore known before any
model runs, which gives:
  * rows with nothing to reveal at a step skip the model (exact for any denoiser: their output
    would never be used), and steps where no row reveals anything run nothing at all;
  * the scheduled model's trunk runs on the active rows only, and a DiT's last block only at the
    positions the step reveals (keys and values still cover the whole row);
  * the fused head projects and samples only the revealed positions ([N, V] logits never exist);
  * the loop never waits on the device: the plan is moved to the host once, up front.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mdlm_fast import ops, reference
from mdlm_fast.reference import PURPOSE_NOISE_REMOVAL, PURPOSE_REVEAL, PURPOSE_TOKEN
from mdlm_fast.sampler import SamplingRun


@dataclass
class StepPlan:
    """Positions one step reveals, as index tensors on the sampling device."""

    step: int
    rows: torch.Tensor             # active batch rows, ascending [R]
    local_rows: torch.Tensor       # for each revealed position: its index into `rows` [N]
    keys: torch.Tensor             # (step, batch row, position) of each revealed position [N, 3]
    query_positions: torch.Tensor  # revealed positions per active row, padded by repetition [R, Q]
    query_index: torch.Tensor      # for each revealed position: its index into query_positions.flatten() [N]

    @property
    def n_rows(self) -> int:
        return self.rows.shape[0]

    @property
    def n_positions(self) -> int:
        return self.keys.shape[0]


def reveal_steps(run: SamplingRun) -> torch.Tensor:
    """int64 [B, L]: the step at which each masked position is revealed (T = noise removal),
    -1 for given tokens."""
    batch, length = run.x.shape
    steps = run.schedule.steps
    rows = torch.arange(batch, device=run.x.device).repeat_interleave(length)
    positions = torch.arange(length, device=run.x.device).repeat(batch)
    keys = torch.stack([torch.zeros_like(rows), rows, positions], dim=1)
    u = ops.philox_noise(keys, run.seed, PURPOSE_REVEAL, 1, "uniform")[:, 0]
    survival = run.timesteps[1:].flip(0).to(u.device)  # ts[T], ..., ts[1], ascending
    step = steps - torch.searchsorted(survival, u)  # T - #{j >= 1 : ts[j] < u}
    step = step.view(batch, length)
    return torch.where(run.x == run.mask_index, step, torch.full_like(step, -1))


def build_plan(reveal: torch.Tensor, steps: int, device: torch.device) -> tuple[list[StepPlan], StepPlan | None]:
    """Per-step plans (steps that reveal nothing are left out) and the noise-removal plan."""
    batch, length = reveal.shape
    flat = reveal.flatten()
    order = torch.argsort(flat * (batch * length) + torch.arange(flat.numel()), stable=True)
    order = order[flat[order] >= 0]
    step_of = flat[order]
    row_of = order // length
    pos_of = order % length
    counts = torch.bincount(step_of, minlength=steps + 1).tolist()
    plans, start = [], 0
    for step, count in enumerate(counts):
        if count == 0:
            continue
        rows, positions = row_of[start:start + count], pos_of[start:start + count]
        # entries are ordered by (row, position): consecutive per row
        active, local, per_row = torch.unique_consecutive(rows, return_inverse=True, return_counts=True)
        first = torch.cumsum(per_row, 0) - per_row
        width = int(per_row.max())
        take = first[:, None] + torch.minimum(torch.arange(width), per_row[:, None] - 1)
        query_index = local * width + torch.arange(count) - first[local]
        keys = torch.stack([torch.full_like(rows, step), rows, positions], dim=1)
        plans.append(StepPlan(step, active.to(device), local.to(device), keys.to(device),
                              positions[take].to(device), query_index.to(device)))
        start += count
    noise_removal = plans.pop() if plans and plans[-1].step == steps else None
    return plans, noise_removal


def _reveal(run: SamplingRun, x: torch.Tensor, plan: StepPlan, model_index: int, t: float,
            temperature: float, purpose: int) -> None:
    """Run the model on the plan's rows and write the drawn tokens at its positions."""
    model = run.models[model_index]
    x_rows = x.index_select(0, plan.rows)
    sigma = run.sigma(t, plan.n_rows)
    positions = plan.keys[:, 2]
    banned = run.banned
    last_block_queries = None
    if model.fused:
        hidden, pruned = model.hidden_at(x_rows, sigma, plan.query_positions)
        hidden = hidden.flatten(0, 1)[plan.query_index]
        run.check_forward(plan.step, model_index, hidden, logits=False)
        weight, bias = model.head()
        tokens, _ = ops.fused_head_sample(hidden, weight, bias, plan.keys, seed=run.seed, purpose=purpose,
                                          temperature=temperature, banned=banned)
        head_positions = plan.n_positions
        last_block_queries = plan.query_positions.numel() if pruned else None
    else:
        logits = model.logits(x_rows, sigma)[plan.local_rows, positions]
        run.check_forward(plan.step, model_index, logits, logits=True)
        tokens, _ = reference.sample_from_logits(logits, plan.keys, run.seed, purpose, temperature, banned, False)
        head_positions = plan.n_rows * x.shape[1]
    x.index_put_((plan.keys[:, 1], positions), tokens)
    run.record_forward(model_index, plan.n_rows, head_positions, last_block_queries)


def run(run: SamplingRun) -> torch.Tensor:
    x = run.x.clone()
    steps = run.schedule.steps
    reveal = reveal_steps(run).cpu()
    run.host_syncs += 1  # the plan: the only device->host transfer of the run
    plans, removal = build_plan(reveal, steps, x.device)
    ts = run.timesteps.tolist()
    with tqdm(total=steps, disable=not run.progress, desc="fast sampler", unit="step", leave=False) as bar:
        for plan in plans:
            _reveal(run, x, plan, run.schedule[plan.step], ts[plan.step], run.temperature, PURPOSE_TOKEN)
            bar.update(plan.step + 1 - bar.n)  # steps that reveal nothing were skipped: count them too
        bar.update(steps - bar.n)
    if removal is not None:
        greedy = run.noise_removal == "greedy"
        _reveal(run, x, removal, run.schedule[-1], ts[-1], 0.0 if greedy else run.temperature, PURPOSE_NOISE_REMOVAL)
    return x

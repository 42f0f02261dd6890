"""The fast sampler: reveal-first, exact in distribution with MDLM's sampler (design §4).

Per masked position, one step of MDLM's sampler is equivalent to: reveal with probability (t - s) / t,
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
  * the loop never waits on the device: the plan is moved to the host once, up front, and the
    fused head's value errors are read at the run's end (SamplingRun.head_errors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops.compiled import PURPOSE_NOISE_REMOVAL, PURPOSE_REVEAL, PURPOSE_TOKEN
from mdlm_fast.ops.draw import sample_from_logits
from mdlm_fast.sampling.keys import position_grid, step_keys
from mdlm_fast.sampling.run import SamplingRun


@dataclass(frozen=True)
class FastOptions:
    """The fast sampler's mechanisms, each switchable for ablation benchmarks (all on by default).

    A mechanism switched off computes what it would have skipped and discards it, so the draws
    stay those of the full fast sampler (up to the rounding of differently shaped products):
    skip_noop_steps off runs steps that reveal nothing; skip_rows off runs every batch row;
    fused_head off projects every position of the rows run and draws from those logits;
    pruned_last_block off runs the last block at every position."""

    skip_noop_steps: bool = True
    skip_rows: bool = True
    fused_head: bool = True
    pruned_last_block: bool = True


ALL_ON = FastOptions()


@dataclass
class StepPlan:
    """Positions one step reveals, as index tensors on the sampling device."""

    step: int
    rows: torch.Tensor  # active batch rows, ascending [R]
    local_rows: torch.Tensor  # for each revealed position: its index into `rows` [N]
    keys: torch.Tensor  # (step, batch row, position) of each revealed position [N, 3]
    query_positions: torch.Tensor  # revealed positions per active row, padded by repetition [R, Q]
    query_index: torch.Tensor  # for each revealed position: its index into query_positions.flatten() [N]

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
    keys = position_grid(batch, length, run.x.device)
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
        rows, positions = row_of[start : start + count], pos_of[start : start + count]
        # entries are ordered by (row, position): consecutive per row
        active, local, per_row = torch.unique_consecutive(rows, return_inverse=True, return_counts=True)
        first = torch.cumsum(per_row, 0) - per_row
        width = int(per_row.max())
        take = first[:, None] + torch.minimum(torch.arange(width), per_row[:, None] - 1)
        query_index = local * width + torch.arange(count) - first[local]
        keys = step_keys(step, rows, positions)
        plans.append(
            StepPlan(
                step,
                active.to(device),
                local.to(device),
                keys.to(device),
                positions[take].to(device),
                query_index.to(device),
            )
        )
        start += count
    noise_removal = plans.pop() if plans and plans[-1].step == steps else None
    return plans, noise_removal


def _every_step(plans: list[StepPlan], steps: int, device: torch.device) -> list[StepPlan]:
    """The plans with an empty plan at each step that reveals nothing (skip_noop_steps off)."""
    by_step = {p.step: p for p in plans}
    none = torch.empty(0, dtype=torch.int64, device=device)
    return [
        by_step.get(step) or StepPlan(step, none, none, none.view(0, 3), none.view(0, 1), none) for step in range(steps)
    ]


def _all_rows(plan: StepPlan, batch: int) -> StepPlan:
    """The same reveals with every batch row run (skip_rows off); rows that reveal nothing query
    position 0, whose result is discarded."""
    device = plan.keys.device
    width = max(plan.query_positions.shape[1], 1)
    query_positions = torch.zeros(batch, width, dtype=torch.int64, device=device)
    query_positions[plan.rows] = plan.query_positions
    rows_of_reveals = plan.keys[:, 1]
    within_row = plan.query_index - plan.local_rows * plan.query_positions.shape[1]
    return StepPlan(
        plan.step,
        torch.arange(batch, device=device),
        rows_of_reveals,
        plan.keys,
        query_positions,
        rows_of_reveals * width + within_row,
    )


def _reveal(
    run: SamplingRun, x: torch.Tensor, plan: StepPlan, model_index: int, t: float, temperature: float, purpose: int
) -> None:
    """Run the model on the plan's rows and write the drawn tokens at its positions."""
    model = run.models[model_index]
    options = run.fast_options or ALL_ON
    x_rows = x.index_select(0, plan.rows)
    sigma = run.sigma(t, plan.n_rows)
    positions = plan.keys[:, 2]
    banned = run.banned
    last_block_queries = None
    if model.fused and options.fused_head:
        hidden, pruned = model.hidden_at(x_rows, sigma, plan.query_positions, prune=options.pruned_last_block)
        hidden = hidden.flatten(0, 1)[plan.query_index]
        run.check_forward(plan.step, model_index, hidden, logits=False)
        weight, bias = model.head()
        with run.naming_non_finite():
            tokens, _ = ops.fused_head_sample(
                hidden,
                weight,
                bias,
                plan.keys,
                seed=run.seed,
                purpose=purpose,
                temperature=temperature,
                banned=banned,
                deferred=run.head_errors,
            )
        head_positions = plan.n_positions
        last_block_queries = plan.query_positions.numel() if pruned else None
    else:
        logits = model.logits(x_rows, sigma)[plan.local_rows, positions]
        run.check_forward(plan.step, model_index, logits, logits=True)
        with run.naming_non_finite():
            tokens, _ = sample_from_logits(logits, plan.keys, run.seed, purpose, temperature, banned, False)
        head_positions = plan.n_rows * x.shape[1]
    x.index_put_((plan.keys[:, 1], positions), tokens)
    run.record_forward(model_index, plan.n_rows, head_positions, last_block_queries)


def generate(run: SamplingRun) -> torch.Tensor:
    x = run.x.clone()
    steps = run.schedule.steps
    reveal = reveal_steps(run).cpu()
    run.host_syncs += 1  # the plan: the only device->host transfer of the run
    plans, removal = build_plan(reveal, steps, x.device)
    options = run.fast_options or ALL_ON
    if not options.skip_noop_steps:
        plans = _every_step(plans, steps, x.device)
    if not options.skip_rows:
        plans = [_all_rows(p, x.shape[0]) for p in plans]
        removal = None if removal is None else _all_rows(removal, x.shape[0])
    ts = run.timesteps.tolist()
    with tqdm(total=steps, disable=not run.progress, desc="fast sampler", unit="step", leave=False) as bar:
        for plan in plans:
            if plan.n_rows:  # a no-op step kept by the ablation has no rows once rows are skipped
                _reveal(run, x, plan, run.schedule[plan.step], ts[plan.step], run.temperature, PURPOSE_TOKEN)
            bar.update(plan.step + 1 - bar.n)  # steps that reveal nothing were skipped: count them too
        bar.update(steps - bar.n)
    if removal is not None and run.noise_removal != "none":
        greedy = run.noise_removal == "greedy"
        _reveal(run, x, removal, run.schedule[-1], ts[-1], 0.0 if greedy else run.temperature, PURPOSE_NOISE_REMOVAL)
    return x

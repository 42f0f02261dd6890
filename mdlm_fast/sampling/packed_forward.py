"""One packed forward of the engine: a trunk over rows of many requests, each at its own step.

The trunk runs once over all rows, each row with its own sigma (the time of its own step), its
last block at that row's revealed positions only. The draws then go through the fused head once
per (purpose, temperature) among the rows (token draws at the request's temperature, noise
removal): every position carries its request's seed (the op's per-row seeds) and its own key
(step, row, position), so a token is the one ``sample()`` draws alone. A row whose forward is not
finite fails its request and no other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mdlm_fast.models.denoiser import Denoiser
from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops.draw import sample_from_logits
from mdlm_fast.sampling.engine_state import RequestState
from mdlm_fast.sampling.packing import Pack
from mdlm_fast.schedules.noise import LogLinearNoise


@dataclass
class ForwardResult:
    """What a forward drew: per request, the (rows, positions, tokens) to write, and the failures."""

    writes: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    head_positions: int = 0
    last_block_queries: int | None = None


def model_name(index: int, n_models: int) -> str:
    return {0: "heavy", 1: "light"}.get(index, f"model {index}") if n_models > 1 else "the model"


def non_finite_message(request: RequestState, step: int, model_index: int, n_models: int, what: str) -> str:
    where = (
        f"step {step} of {request.steps}"
        if step < request.steps
        else f"the noise-removal forward after step {request.steps}"
    )
    return (
        f"non-finite {what} at {where} in model {model_index} ({model_name(model_index, n_models)}): "
        f"the forward produced NaN or inf; the model's weights or the given tokens are not usable"
    )


@dataclass
class _Layout:
    """Where a pack's revealed positions sit: row by row, positions ascending within a row."""

    keys: torch.Tensor  # (step, row in its request, position) per revealed position [N, 3], CPU
    local: torch.Tensor  # the pack row of each revealed position [N], CPU
    counts: list[int]  # revealed positions per pack row
    starts: list[int]  # offset of each pack row's first position in keys (and one past the end)
    query_positions: torch.Tensor  # [R, Q] per pack row, padded by repeating its last position
    query_index: torch.Tensor  # each revealed position's index into query_positions.flatten() [N]

    def positions_of(self, members: list[int]) -> torch.Tensor:
        return torch.cat([torch.arange(self.starts[i], self.starts[i + 1]) for i in members])


def _layout(rows: list) -> _Layout:
    counts = [int(r.next_positions.numel()) for r in rows]
    width = max(counts)
    padded, keys = [], []
    for r, count in zip(rows, counts):
        positions = r.next_positions
        padded.append(torch.cat([positions, positions[-1:].expand(width - count)]))
        keys.append(
            torch.stack([torch.full_like(positions, r.next_step), torch.full_like(positions, r.row), positions], 1)
        )
    local = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(counts))
    within = torch.cat([torch.arange(c) for c in counts])
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    return _Layout(torch.cat(keys), local, counts, starts, torch.stack(padded), local * width + within)


def run_pack(
    pack: Pack, model: Denoiser, n_models: int, head_ok: bool, banned: torch.Tensor, noise: LogLinearNoise
) -> ForwardResult:
    device = banned.device
    rows = pack.rows
    layout = _layout(rows)
    x_rows = torch.stack([r.request.x[r.row] for r in rows])
    sigma = torch.tensor([r.request.sigma_at(r.next_step, noise) for r in rows], dtype=torch.float32).to(device)

    result = ForwardResult()
    if model.fused:
        hidden, pruned = model.hidden_at(x_rows, sigma, layout.query_positions.to(device))
        out = hidden.flatten(0, 1)[layout.query_index.to(device)]
        finite = torch.isfinite(out).all(-1)
        result.head_positions = layout.keys.shape[0]
        result.last_block_queries = layout.query_positions.numel() if pruned else None
        what = "hidden states"
    else:
        logits = model.logits(x_rows, sigma)
        out = logits[layout.local.to(device), layout.keys[:, 2].to(device)]
        finite = torch.isfinite(out.amax(-1))
        result.head_positions = len(rows) * pack.length
        what = "logits"
    bad_rows = set(layout.local[~finite.cpu()].tolist()) if head_ok else set(range(len(rows)))
    for i in sorted(bad_rows):
        request = rows[i].request
        result.errors.setdefault(
            request.handle,
            non_finite_message(
                request, rows[i].next_step, pack.model_index, n_models, what if head_ok else "output-layer weights"
            ),
        )

    drawn = _draw(pack, model, n_models, layout, out, banned, result.errors)
    by_request: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.request.handle not in result.errors:
            by_request.setdefault(r.request.handle, []).append(i)
    for handle, members in by_request.items():
        index = layout.positions_of(members)
        result.writes[handle] = (
            layout.keys[index, 1].to(device),
            layout.keys[index, 2].to(device),
            drawn[index.to(device)],
        )
    return result


def _draw(
    pack: Pack,
    model: Denoiser,
    n_models: int,
    layout: _Layout,
    out: torch.Tensor,
    banned: torch.Tensor,
    errors: dict[int, str],
) -> torch.Tensor:
    """The tokens at every revealed position of rows whose requests have not failed, one head call per
    (purpose, temperature) with per-row seeds; a call the op refuses is redone per request so that
    only the request it cannot draw for fails (added to ``errors``)."""
    device = banned.device
    rows = pack.rows
    drawn = torch.empty(layout.keys.shape[0], dtype=torch.int64, device=device)
    keys = layout.keys.to(device)

    def draw(members: list[int], purpose: int, temperature: float) -> None:
        index = layout.positions_of(members).to(device)
        seeds = ops.row_seeds(
            [rows[i].request.seed for i in members for _ in range(layout.counts[i])], len(index), device
        )
        if model.fused:
            weight, bias = model.head()
            tokens, _ = ops.fused_head_sample(
                out[index],
                weight,
                bias,
                keys[index],
                seed=0,
                purpose=purpose,
                temperature=temperature,
                banned=banned,
                seeds=seeds,
            )
        else:
            tokens, _ = sample_from_logits(out[index], keys[index], 0, purpose, temperature, banned, False, seeds=seeds)
        drawn[index] = tokens

    groups: dict[tuple[int, float], list[int]] = {}
    for i, r in enumerate(rows):
        if r.request.handle not in errors:
            groups.setdefault(r.request.draw_at(r.next_step), []).append(i)
    for (purpose, temperature), members in groups.items():
        try:
            draw(members, purpose, temperature)
        except RuntimeError:
            by_request: dict[int, list[int]] = {}
            for i in members:
                by_request.setdefault(rows[i].request.handle, []).append(i)
            for own in by_request.values():
                try:
                    draw(own, purpose, temperature)
                except RuntimeError as exc:
                    request = rows[own[0]].request
                    errors[request.handle] = non_finite_message(
                        request, rows[own[0]].next_step, pack.model_index, n_models, f"draw ({exc})"
                    )
    return drawn

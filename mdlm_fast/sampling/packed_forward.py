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
    where = (f"step {step} of {request.steps}" if step < request.steps
             else f"the noise-removal forward after step {request.steps}")
    return (f"non-finite {what} at {where} in model {model_index} ({model_name(model_index, n_models)}): "
            f"the forward produced NaN or inf; the model's weights or the given tokens are not usable")


def run_pack(pack: Pack, model: Denoiser, n_models: int, head_ok: bool, banned: torch.Tensor,
             noise: LogLinearNoise) -> ForwardResult:
    device = banned.device
    rows = pack.rows
    counts = [int(r.next_positions.numel()) for r in rows]
    width = max(counts)
    padded, keys, local, groups = [], [], [], {}
    for i, (r, count) in enumerate(zip(rows, counts)):
        positions = r.next_positions
        padded.append(torch.cat([positions, positions[-1:].expand(width - count)]))
        step = r.next_step
        keys.append(torch.stack([torch.full_like(positions, step), torch.full_like(positions, r.row), positions], 1))
        local.append(torch.full((count,), i, dtype=torch.int64))
        groups.setdefault(r.request.draw_at(step), []).append(i)
    keys = torch.cat(keys)
    local = torch.cat(local)
    query_index = local * width + torch.cat([torch.arange(c) for c in counts])
    starts = torch.tensor([0] + counts).cumsum(0)
    x_rows = torch.stack([r.request.x[r.row] for r in rows])
    sigma = torch.tensor([r.request.sigma_at(r.next_step, noise) for r in rows], dtype=torch.float32)

    result = ForwardResult()
    if model.fused:
        hidden, pruned = model.hidden_at(x_rows, sigma.to(device), torch.stack(padded).to(device))
        out = hidden.flatten(0, 1)[query_index.to(device)]
        finite = torch.isfinite(out).all(-1)
        result.head_positions = keys.shape[0]
        result.last_block_queries = len(rows) * width if pruned else None
        what = "hidden states"
    else:
        logits = model.logits(x_rows, sigma.to(device))
        out = logits[local.to(device), keys[:, 2].to(device)]
        finite = torch.isfinite(out.amax(-1))
        result.head_positions = len(rows) * pack.length
        what = "logits"
    bad_rows = set(local[~finite.cpu()].tolist())
    if not head_ok:
        bad_rows, what = set(range(len(rows))), "output-layer weights"
    for i in sorted(bad_rows):
        request = rows[i].request
        result.errors.setdefault(request.handle, non_finite_message(request, rows[i].next_step, pack.model_index,
                                                                    n_models, what))

    drawn = torch.empty(keys.shape[0], dtype=torch.int64, device=device)
    keys_on_device = keys.to(device)

    def draw(members: list[int], purpose: int, temperature: float) -> None:
        index = torch.cat([torch.arange(int(starts[i]), int(starts[i + 1])) for i in members]).to(device)
        seeds = ops.row_seeds([rows[i].request.seed for i in members for _ in range(counts[i])], len(index), device)
        if model.fused:
            weight, bias = model.head()
            tokens, _ = ops.fused_head_sample(out[index], weight, bias, keys_on_device[index], seed=0, purpose=purpose,
                                              temperature=temperature, banned=banned, seeds=seeds)
        else:
            tokens, _ = sample_from_logits(out[index], keys_on_device[index], 0, purpose, temperature, banned, False,
                                           seeds=seeds)
        drawn[index] = tokens

    for (purpose, temperature), members in groups.items():
        members = [i for i in members if rows[i].request.handle not in result.errors]
        if not members:
            continue
        try:
            draw(members, purpose, temperature)
        except RuntimeError:  # the op refuses a row it cannot draw from: find its requests, fail those only
            by_handle: dict[int, list[int]] = {}
            for i in members:
                by_handle.setdefault(rows[i].request.handle, []).append(i)
            for own in by_handle.values():
                try:
                    draw(own, purpose, temperature)
                except RuntimeError as exc:
                    request = rows[own[0]].request
                    result.errors[request.handle] = non_finite_message(
                        request, rows[own[0]].next_step, pack.model_index, n_models, f"draw ({exc})")

    by_request: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.request.handle not in result.errors:
            by_request.setdefault(r.request.handle, []).append(i)
    for handle, members in by_request.items():
        index = torch.cat([torch.arange(int(starts[i]), int(starts[i + 1])) for i in members])
        result.writes[handle] = (keys[index, 1].to(device), keys[index, 2].to(device), drawn[index.to(device)])
    return result

"""Exact output laws of the samplers on tiny models, by dynamic programming over every state, and
the models whose predictions are spread enough for a chi-square test to see a wrong law.

At step i (t = ts[i], s = t - dt) every masked position independently stays masked with
probability mc(s) / mc(t), or becomes token v with probability p(v) (1 - mc(s) / mc(t)), where p
is the model's p_x0 at the state the step starts from, tempered (p^(1 / T), renormalized; T = 0:
the argmax). After the loop the remaining masks are filled by the argmax (greedy noise removal)
or a tempered draw (ancestral). The knobs that build a nearby wrong law for a negative control:
``sigma_shift`` conditions step i on ts[i + shift]; ``dt_steps`` takes MDLM's step size of another grid.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

import mdlm_fast as mf
from mdlm_fast.models.dit import subs_log_probs
from mdlm_fast.schedules.noise import LogLinearNoise, sampling_dt, sampling_timesteps


def tempered(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) renormalized along the last axis; T = 0: one-hot at the argmax."""
    if temperature == 0:
        return torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).double()
    logp = p.double().log() / temperature
    return torch.softmax(logp, -1)


@dataclass
class ExactLaw:
    probs: dict  # outcome tuple -> probability
    top: float  # the model's largest probability of any token at any masked position, any step
    drawn_top: float  # the same of the tempered law the steps draw from

    def vector(self, outcomes) -> torch.Tensor:
        return torch.tensor([self.probs.get(o, 0.0) for o in outcomes], dtype=torch.float64)


def advance(states: dict, keys: list, p: torch.Tensor, stay: float, vocab: int, mask: int) -> dict:
    """One step of MDLM's sampler over every state: each masked position independently stays masked
    with probability ``stay`` or becomes token v with probability p[state, pos, v] (1 - stay)."""
    nxt: dict = {}
    for k, state in enumerate(keys):
        options = [
            [(tok, 1.0)]
            if tok != mask
            else [(mask, stay)] + [(v, p[k, pos, v].item() * (1 - stay)) for v in range(vocab) if v != mask]
            for pos, tok in enumerate(state)
        ]
        for combo in itertools.product(*options):
            key = tuple(tok for tok, _ in combo)
            nxt[key] = nxt.get(key, 0.0) + states[state] * math.prod(w for _, w in combo)
    return nxt


def exact_law(
    models,
    schedule,
    steps: int,
    length: int,
    vocab: int,
    mask: int,
    *,
    temperature: float = 1.0,
    noise_removal: str = "greedy",
    sigma_shift: int = 0,
    dt_steps: int | None = None,
) -> ExactLaw:
    """The output law of ``steps`` steps from all-masked; models are callables (x, sigma) -> logits."""
    noise = LogLinearNoise()
    ts = sampling_timesteps(steps).tolist()
    dt = sampling_dt(dt_steps or steps)
    states = {tuple([mask] * length): 1.0}
    top = drawn_top = 0.0

    def p_x0(model, keys, t):
        x = torch.tensor(keys)
        with torch.no_grad():
            logits = model(x, torch.full((len(keys),), float(noise.sigma(t))))
        p = subs_log_probs(logits, x, mask).double().exp()
        return p, x == mask

    def highest(p, masked):
        return p[masked].max().item() if masked.any() else 0.0

    with torch.no_grad():
        for i in range(steps):
            t, s = ts[i], max(ts[i] - dt, 0.0)
            stay = noise.move_chance(s) / noise.move_chance(t)
            keys = list(states)
            p, masked = p_x0(models[schedule[i]], keys, ts[min(i + sigma_shift, steps)])
            drawn = tempered(p, temperature)
            top, drawn_top = max(top, highest(p, masked)), max(drawn_top, highest(drawn, masked))
            p = drawn
            states = advance(states, keys, p, stay, vocab, mask)
        keys = list(states)
        p, masked = p_x0(models[schedule[-1]], keys, ts[-1])
        top = max(top, highest(p, masked))
        p = tempered(p, 0.0 if noise_removal == "greedy" else temperature)
        final: dict = {}
        for k, state in enumerate(keys):
            options = [
                [(tok, 1.0)] if tok != mask else [(v, p[k, pos, v].item()) for v in range(vocab) if v != mask]
                for pos, tok in enumerate(state)
            ]
            for combo in itertools.product(*options):
                key = tuple(tok for tok, _ in combo)
                final[key] = final.get(key, 0.0) + states[state] * math.prod(w for _, w in combo)
    return ExactLaw(final, top, drawn_top)


def outcome_counts(tokens: torch.Tensor, vocab: int, mask: int):
    """Every outcome (a tuple of real tokens) and how often each row of ``tokens`` is it."""
    real = [v for v in range(vocab) if v != mask]
    outcomes = list(itertools.product(real, repeat=tokens.shape[1]))
    index = {o: i for i, o in enumerate(outcomes)}
    counts = torch.zeros(len(outcomes), dtype=torch.int64)
    for row in tokens.tolist():
        counts[index[tuple(row)]] += 1
    return outcomes, counts


def spread_dit(
    n_blocks: int, seed: int, vocab: int = 4, length: int = 2, time_conditioning: bool = False, scale: float = 0.2
):
    """A tiny DiT at a weight scale where its predictions are spread (top probability near 0.5)."""
    config = mf.DiTConfig(
        hidden_dim=16,
        n_heads=2,
        n_blocks=n_blocks,
        cond_dim=8,
        vocab_size=vocab,
        model_length=length,
        time_conditioning=time_conditioning,
    )
    model = mf.DiT(config)
    model.init_random_(seed, std=scale)
    return model.eval()


class TimeTable(torch.nn.Module):
    """A strongly time-conditioned denoiser with a fused head: the hidden state at a position is a
    table entry of (position, token at the next position) plus mc(sigma) times a per-position time
    direction, so p_x0 moves visibly from one grid point to the next (a DiT this small barely
    reacts to sigma). Logits stay within a few units: spread predictions."""

    def __init__(self, seed: int, vocab: int = 4, length: int = 3, d: int = 6, time_weight: float = 2.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(length, vocab, d, generator=g) * 0.5)
        self.time = torch.nn.Parameter(torch.randn(length, d, generator=g) * time_weight)
        self.head = torch.nn.Linear(d, vocab)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(vocab, d, generator=g) * 0.5)
            self.head.bias.zero_()

    def trunk(self, x, sigma):
        length = x.shape[1]
        nxt = x.roll(-1, dims=1)
        h = self.table[torch.arange(length), nxt]
        mc = -torch.expm1(-sigma.float())
        return h + mc[:, None, None] * self.time[:length]

    def forward(self, x, sigma):
        return self.head(self.trunk(x, sigma))

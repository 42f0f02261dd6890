"""MDLM's sampler's exact output distribution on tiny models, by dynamic programming over all states."""

import torch

from mdlm_fast.models.dit import subs_log_probs
from mdlm_fast.schedules.noise import LogLinearNoise, sampling_dt, sampling_timesteps
from tests.helpers.exact_law import advance


def exact_conditional(model, start, steps, vocab, mask):
    """Output distribution of MDLM's sampler (one model) started from the state ``start``: each
    masked position stays masked with probability mc(s)/mc(t) or becomes v with probability
    p_x0[v] (1 - mc(s)/mc(t)); noise removal takes the SUBS argmax."""
    noise = LogLinearNoise()
    ts, dt = sampling_timesteps(steps).tolist(), sampling_dt(steps)
    states = {tuple(start): 1.0}
    with torch.no_grad():
        for i in range(steps):
            t, s = ts[i], ts[i] - dt
            stay = noise.move_chance(s) / noise.move_chance(t)
            keys = list(states)
            x = torch.tensor(keys)
            p = subs_log_probs(model(x, torch.full((len(keys),), noise.sigma(t))), x, mask).double().exp()
            states = advance(states, keys, p, stay, vocab, mask)
        final = {}
        for state, prob in states.items():
            x = torch.tensor([state])
            out = subs_log_probs(model(x, torch.full((1,), noise.sigma(ts[-1]))), x, mask).argmax(-1)[0]
            final[tuple(out.tolist())] = final.get(tuple(out.tolist()), 0.0) + prob
    return final

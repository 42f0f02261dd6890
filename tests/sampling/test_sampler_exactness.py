"""The samplers' output laws, exactly, on tiny models whose predictions are spread (no token above
0.9 at any step, asserted), each beside nearby wrong laws the same counts must reject: fewer steps,
MDLM's step size of another grid, the sigma of the next grid point, another temperature."""

import pytest

import mdlm_fast as mf
from tests.helpers.exact_law import TimeTable, exact_law, outcome_counts, spread_dit
from tests.helpers.stats_helpers import chi_square_p_value

VOCAB, MASK, STEPS, DRAWS = 4, 3, 4, 6000
ACCEPT, REJECT = 1e-4, 1e-6  # the right law must not be rejected at ACCEPT; a wrong one must be at REJECT


def _case(name):
    """(modules for the exact law, what sample() is given, schedule, length)."""
    if name.startswith("dit"):
        tc, scale = name == "dit-time", 0.15 if name == "dit-sharper" else 0.1
        models = [
            spread_dit(2, 0, time_conditioning=tc, scale=scale),
            spread_dit(1, 1, time_conditioning=tc, scale=scale),
        ]
        return models, models, mf.ModelSchedule([1, 0, 0, 1]), 2
    table = TimeTable(0, time_weight=1.0)
    given = (
        mf.Denoiser(table, vocab_size=VOCAB, mask_index=MASK, time_conditioning=True)
        if name == "table"
        else mf.Denoiser(lambda x, s: table(x, s), vocab_size=VOCAB, mask_index=MASK, time_conditioning=True)
    )
    assert given.fused == (name == "table")
    return [table], given, mf.ModelSchedule.all_heavy(STEPS), 3


def _law(models, schedule, length, **kwargs):
    law = exact_law(models, schedule, len(schedule), length, VOCAB, MASK, **kwargs)
    assert law.top < 0.9, f"the model is near-certain (top probability {law.top:.3f}): a chi-square sees little"
    assert abs(sum(law.probs.values()) - 1) < 1e-6
    return law


def _p(counts, outcomes, law):
    return chi_square_p_value(counts, law.vector(outcomes))


@pytest.mark.parametrize("case", ["table", "table-callable"])  # the DiT pairs: test_sampler.py
@pytest.mark.parametrize("sampler", ["mdlm", "fast"])
def test_output_law_is_exact_and_nearby_laws_are_rejected(sampler, case):
    models, given, schedule, length = _case(case)
    law = _law(models, schedule, length)
    tokens = mf.sample(
        given, steps=STEPS, batch_size=DRAWS, length=length, schedule=schedule, sampler=sampler, seed=7
    ).tokens
    outcomes, counts = outcome_counts(tokens, VOCAB, MASK)
    assert _p(counts, outcomes, law) > ACCEPT
    # a DiT's law moves with the schedule and the grid; the time table's mostly with the grid's times
    fewer = mf.ModelSchedule(list(schedule)[: STEPS - 1] if case.startswith("dit") else list(schedule)[: STEPS // 2])
    controls = {
        "fewer steps": _law(models, fewer, length),
        "dt of a finer grid": _law(models, schedule, length, dt_steps=STEPS + 1),
    }
    if case.startswith("table"):  # a DiT this small barely reacts to sigma
        controls["sigma of the next grid point"] = _law(models, schedule, length, sigma_shift=1)
    for name, wrong in controls.items():
        assert _p(counts, outcomes, wrong) < REJECT, f"the control '{name}' is not rejected"


@pytest.mark.parametrize("case", ["dit-sharper", "table"])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_tempered_law_is_exact(temperature, case):
    """Each reveal draws from p_x0^(1/T), renormalized; the law at T = 1 is rejected."""
    models, given, schedule, length = _case(case)
    law = _law(models, schedule, length, temperature=temperature)
    assert law.drawn_top < 0.9
    tokens = mf.sample(
        given, steps=STEPS, batch_size=DRAWS, length=length, schedule=schedule, seed=11, temperature=temperature
    ).tokens
    outcomes, counts = outcome_counts(tokens, VOCAB, MASK)
    assert _p(counts, outcomes, law) > ACCEPT
    assert _p(counts, outcomes, _law(models, schedule, length)) < REJECT


@pytest.mark.parametrize("case", ["dit", "table-callable"])
def test_temperature_zero_reveals_the_argmax(case):
    """At T = 0 every reveal is the argmax at the state its step starts from: only the reveal order
    is random, so the law is that of one-hot predictions, and the law at T = 1 is rejected."""
    models, given, schedule, length = _case(case)
    law = _law(models, schedule, length, temperature=0.0)
    tokens = mf.sample(
        given, steps=STEPS, batch_size=DRAWS // 3, length=length, schedule=schedule, seed=5, temperature=0.0
    ).tokens
    outcomes, counts = outcome_counts(tokens, VOCAB, MASK)
    support = law.vector(outcomes) > 0
    assert counts[~support].sum() == 0 and support.sum() < len(outcomes)
    assert _p(counts, outcomes, law) > ACCEPT
    assert _p(counts, outcomes, _law(models, schedule, length)) < REJECT

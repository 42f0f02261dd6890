"""Infilling: sample(given=...) conditions on tokens at any positions, for every sampler.

The fast and mdlm samplers must draw the exact conditional distribution of MDLM's sampler started
from the given state (computed here by dynamic programming over all states), and never touch a
given position; a wrong conditioning (other given tokens) is the control the test must reject.
"""

import itertools

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.models.dit import subs_log_probs
from mdlm_fast.sampling.api import _as_given
from tests.helpers.exact_mdlm import exact_conditional
from tests.helpers.stats_helpers import chi_square_p_value

VOCAB, MASK, LENGTH = 4, 3, 4


def tiny_dit(seed=0, n_blocks=2, scale=0.6, length=LENGTH, vocab=VOCAB):
    config = mf.DiTConfig(
        hidden_dim=16, n_heads=2, n_blocks=n_blocks, cond_dim=8, vocab_size=vocab, model_length=length
    )
    return mf.DiT(config).init_random_(seed, std=scale).eval()


def counts_at(tokens, positions):
    real = [v for v in range(VOCAB) if v != MASK]
    outcomes = list(itertools.product(real, repeat=len(positions)))
    index = {o: i for i, o in enumerate(outcomes)}
    counts = torch.zeros(len(outcomes), dtype=torch.int64)
    for row in tokens[:, positions].tolist():
        counts[index[tuple(row)]] += 1
    return outcomes, counts


def marginal(distribution, positions, outcomes):
    out = dict.fromkeys(outcomes, 0.0)
    for state, prob in distribution.items():
        out[tuple(state[p] for p in positions)] += prob
    return torch.tensor([out[o] for o in outcomes], dtype=torch.float64)


@pytest.mark.parametrize("sampler", ["fast", "mdlm"])
def test_infilling_draws_the_exact_conditional_distribution(sampler):
    model = tiny_dit(3, scale=0.3)  # a seed whose predictions are spread and depend on the given tokens
    given = [MASK, 1, MASK, 0]  # generate positions 0 and 2 around given tokens: not a prefix
    free = [0, 2]
    with torch.no_grad():  # spread predictions, or a chi-square test could not tell distributions apart
        x = torch.tensor([given])
        top = subs_log_probs(model(x, torch.zeros(1)), x, MASK).exp()[0, free].max()
    assert top < 0.9
    steps = 4
    exact = exact_conditional(model, given, steps, VOCAB, MASK)
    control = exact_conditional(
        model, [MASK, 0, MASK, 1], steps, VOCAB, MASK
    )  # other given tokens: another distribution
    result = mf.sample(model, steps=steps, batch_size=6000, sampler=sampler, seed=3, given=torch.tensor(given))
    assert (result.tokens[:, [1, 3]] == torch.tensor([1, 0])).all()
    outcomes, counts = counts_at(result.tokens, free)
    probs = marginal(exact, free, outcomes)
    assert abs(probs.sum().item() - 1) < 1e-6  # float32 model probabilities
    assert chi_square_p_value(counts, probs) > 1e-4
    assert chi_square_p_value(counts, marginal(control, free, outcomes)) < 1e-6


@pytest.mark.parametrize("sampler", ["fast", "mdlm", "confidence"])
def test_given_tokens_are_kept_in_every_row_with_uneven_mask_counts(sampler):
    model = tiny_dit(1, vocab=30, length=12)
    m = 29
    given = torch.tensor(
        [
            [m, 5, m, m, 7, m, m, m, 9, m, m, m],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, m],  # one position to fill
            [m] * 12,  # nothing given
            list(range(12)),
        ]
    )  # nothing to fill
    out = mf.sample(model, steps=5, batch_size=4, sampler=sampler, seed=1, given=given).tokens
    known = given != m
    assert torch.equal(out[known], given[known])
    assert (out != m).all()  # every masked position was filled (noise removal / the last step)


@pytest.mark.parametrize("sampler", ["fast", "mdlm", "confidence"])
def test_prefix_is_the_special_case_of_given(sampler):
    model = tiny_dit(2, vocab=30, length=10)
    prefix = torch.tensor([4, 8, 15])
    given = torch.cat([prefix, torch.full((7,), 29)])
    kwargs = dict(steps=6, batch_size=3, sampler=sampler, seed=11)
    a = mf.sample(model, prefix=prefix, **kwargs).tokens
    b = mf.sample(model, given=given, **kwargs).tokens
    assert torch.equal(a, b)


def test_confidence_rows_with_the_same_given_tokens_match_an_even_batch():
    """The uneven path (rows with different masked counts) leaves the even rows' draws as they were."""
    model = tiny_dit(3, vocab=30, length=8)
    row = torch.tensor([29, 3, 29, 29, 4, 29, 29, 29])
    even = mf.sample(model, steps=4, batch_size=2, sampler="confidence", seed=5, given=row).tokens
    mixed = torch.stack([row, torch.tensor([1, 2, 3, 4, 5, 6, 7, 29])])
    uneven = mf.sample(model, steps=4, batch_size=2, sampler="confidence", seed=5, given=mixed).tokens
    assert torch.equal(uneven[0], even[0])


def test_fast_sampler_reveals_only_the_positions_to_fill():
    model = tiny_dit(4, vocab=30, length=16)
    given = torch.full((16,), 29)
    given[::2] = torch.arange(8)
    result = mf.sample(model, steps=16, batch_size=3, seed=2, given=given)
    assert result.stats.head_positions == 3 * 8  # the fused head ran at the 8 masked positions of each row only


def test_length_defaults_to_the_given_length():
    model = tiny_dit(5, vocab=30, length=16)
    out = mf.sample(model, steps=3, batch_size=2, given=[29, 1, 29, 2, 29]).tokens
    assert out.shape == (2, 5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(given=[1, 29], prefix=[1]), "not both"),
        (dict(given=[1, 29, 29]), "given has 3 positions but the sequence length is 8"),
        (dict(given=[[1] * 8] * 3), r"\[L\] or \[batch_size=2, L\]"),
        (dict(given=[1, 2, 3, 4, 5, 6, 7, 30]), "outside"),
        (dict(given=[1.0] * 8), "integer token ids"),
        (dict(given=[[[1] * 8]] * 2), r"\[L\] or \[batch_size=2, L\]"),
    ],
)
def test_bad_given(kwargs, match):
    model = tiny_dit(6, vocab=30, length=8)
    with pytest.raises(ValueError, match=match):
        mf.sample(model, steps=2, batch_size=2, length=8, **kwargs)


def test_as_given_returns_tokens_and_the_known_mask():
    tokens, known = _as_given([7, 29, 8], None, 2, 3, 30, 29, torch.device("cpu"))
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 3)
    assert known.tolist() == [[True, False, True]] * 2
    tokens, known = _as_given(None, [[1], [2]], 2, 3, 30, 29, torch.device("cpu"))
    assert tokens.tolist() == [[1, 29, 29], [2, 29, 29]] and known.sum() == 2
    assert _as_given(None, None, 2, 3, 30, 29, torch.device("cpu")) is None

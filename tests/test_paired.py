"""Paired statistics on constructed inputs with known answers, and that the pairing is real."""
import math

import numpy as np
import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.paired import (gen_ppl_ratio, paired_mean_difference, paired_ratio_difference,
                              unpaired_se)


def test_mean_difference_of_shifted_copies_is_the_shift_with_zero_se():
    a = np.random.default_rng(0).normal(5.0, 2.0, size=50)
    d = paired_mean_difference(a, a - 0.3)
    assert d.estimate == pytest.approx(0.3)
    assert d.se == pytest.approx(0.0, abs=1e-12)
    assert d.ci_low == pytest.approx(0.3) and d.ci_high == pytest.approx(0.3)
    assert d.decides()


def test_mean_difference_se_matches_the_textbook_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 40), rng.normal(0, 1, 40)
    d = paired_mean_difference(a, b)
    diff = a - b
    assert d.estimate == pytest.approx(diff.mean())
    assert d.se == pytest.approx(diff.std(ddof=1) / math.sqrt(40))
    assert d.normal_ci_low == pytest.approx(d.estimate - 1.959964 * d.se, rel=1e-6)
    # The bootstrap percentile interval of a mean is close to the normal one at k = 40.
    assert d.ci_low == pytest.approx(d.normal_ci_low, abs=0.35 * d.se * 1.96)
    assert d.ci_high == pytest.approx(d.normal_ci_high, abs=0.35 * d.se * 1.96)


def test_ratio_difference_with_equal_counts_is_a_mean_difference():
    rng = np.random.default_rng(2)
    a, b = rng.normal(300, 20, 30), rng.normal(290, 20, 30)
    counts = np.full(30, 64.0)
    ratio = paired_ratio_difference(a, counts, b, counts)
    mean = paired_mean_difference(a / 64, b / 64)
    assert ratio.estimate == pytest.approx(mean.estimate)
    assert ratio.se == pytest.approx(mean.se)


def test_ratio_difference_se_is_calibrated_by_simulation():
    """The delta-method SE of D predicts the spread of D over independent repetitions, and the
    pairing removes the shared part of the noise: paired SE << unpaired SE."""
    rng = np.random.default_rng(3)
    k, estimates, ses, unpaired = 64, [], [], []
    for _ in range(400):
        n = rng.integers(40, 90, size=k).astype(float)
        shared = rng.normal(5.0, 0.4, size=k)  # per-sample difficulty, common to both schedules
        a = n * (shared + rng.normal(0.05, 0.05, size=k))
        b = n * (shared + rng.normal(0.0, 0.05, size=k))
        d = paired_ratio_difference(a, n, b, n, resamples=200)
        estimates.append(d.estimate)
        ses.append(d.se)
        mean_a, mean_b = a.sum() / n.sum(), b.sum() / n.sum()
        se_a = math.sqrt(k / (k - 1) * ((a - mean_a * n) ** 2).sum()) / n.sum()
        se_b = math.sqrt(k / (k - 1) * ((b - mean_b * n) ** 2).sum()) / n.sum()
        unpaired.append(unpaired_se(se_a, se_b))
    assert np.mean(estimates) == pytest.approx(0.05, abs=0.003)
    assert np.std(estimates) == pytest.approx(np.mean(ses), rel=0.15)
    assert np.mean(unpaired) > 5 * np.mean(ses)


def test_gen_ppl_ratio_is_exp_of_the_nll_difference():
    a = np.array([10.0, 12.0, 11.0, 13.0])
    n = np.array([5.0, 6.0, 5.0, 6.0])
    d = paired_ratio_difference(a, n, a - 0.5 * n, n)
    r = gen_ppl_ratio(d)
    assert d.estimate == pytest.approx(0.5)
    assert r["gen_ppl_ratio"] == pytest.approx(math.exp(0.5))
    assert r["gen_ppl_ratio_ci_low"] == pytest.approx(math.exp(d.ci_low))


def test_bootstrap_is_reproducible():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 20), rng.normal(0, 1, 20)
    assert paired_mean_difference(a, b) == paired_mean_difference(a, b)


@pytest.mark.parametrize("bad, match", [
    (dict(a=[1.0], b=[2.0]), "at least 2 pairs"),
    (dict(a=[1.0, 2.0], b=[2.0]), "one length"),
    (dict(a=[1.0, float("nan")], b=[2.0, 3.0]), "finite"),
])
def test_bad_columns_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        paired_mean_difference(bad["a"], bad["b"])


def test_ratio_difference_refuses_non_positive_counts():
    with pytest.raises(ValueError, match="counts must be positive"):
        paired_ratio_difference([1.0, 2.0], [1.0, 0.0], [1.0, 2.0], [1.0, 1.0])


def _tiny(seed, n_blocks, std=0.5):
    config = mf.DiTConfig(hidden_dim=16, n_heads=2, n_blocks=n_blocks, cond_dim=8, vocab_size=12,
                          model_length=16)
    model = mf.DiT(config)
    model.init_random_(seed, std=std)
    return model.eval()


@pytest.mark.parametrize("sampler", ["fast", "reference"])
def test_same_seed_gives_the_same_samples_under_every_schedule_of_equal_models(sampler):
    """The pairing is real: with the same seed every uniform is the same under two schedules, so
    when the two models are one model in two copies, every schedule gives the same tokens."""
    heavy = _tiny(0, 2)
    copy = _tiny(0, 2)
    kwargs = dict(steps=12, batch_size=3, length=16, seed=7, sampler=sampler)
    a = mf.sample([heavy, copy], schedule="heavy", **kwargs).tokens
    b = mf.sample([heavy, copy], schedule="sandwich:0.5", **kwargs).tokens
    c = mf.sample([heavy, copy], schedule="light", **kwargs).tokens
    assert torch.equal(a, b) and torch.equal(a, c)


def test_same_seed_samples_of_two_schedules_agree_far_more_than_two_seeds():
    """With light steps only at the end, every step before them sees the same inputs and the same
    uniforms under both schedules, so most positions agree; two seeds of one schedule share
    nothing but the model (near-flat here, so they agree about 1 time in 11)."""
    heavy, light = _tiny(0, 2, std=0.05), _tiny(1, 1, std=0.05)
    kwargs = dict(steps=16, batch_size=4, length=16, seed=3, sampler="fast")
    all_heavy = mf.sample([heavy, light], schedule="heavy", **kwargs).tokens
    late_light = mf.sample([heavy, light], schedule="last:0.25", **kwargs).tokens
    other_seed = mf.sample([heavy, light], schedule="heavy", **{**kwargs, "seed": 4}).tokens
    # Common random numbers: far more positions agree between schedules than between seeds.
    agree_paired = (all_heavy == late_light).float().mean().item()
    agree_seeds = (all_heavy == other_seed).float().mean().item()
    assert agree_paired > 0.6
    assert agree_seeds < 0.3

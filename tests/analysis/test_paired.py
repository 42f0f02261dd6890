"""Paired statistics on constructed inputs with known answers, and that the pairing is real."""

import math

import numpy as np
import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.analysis.paired import gen_ppl_ratio, paired_mean_difference, paired_ratio_difference, unpaired_se


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


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(a=[1.0], b=[2.0]), "at least 2 pairs"),
        (dict(a=[1.0, 2.0], b=[2.0]), "one length"),
        (dict(a=[1.0, float("nan")], b=[2.0, 3.0]), "finite"),
    ],
)
def test_bad_columns_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        paired_mean_difference(bad["a"], bad["b"])


def test_ratio_difference_refuses_non_positive_counts():
    with pytest.raises(ValueError, match="counts must be positive"):
        paired_ratio_difference([1.0, 2.0], [1.0, 0.0], [1.0, 2.0], [1.0, 1.0])


def _tiny(seed, n_blocks, std=0.5):
    config = mf.DiTConfig(hidden_dim=16, n_heads=2, n_blocks=n_blocks, cond_dim=8, vocab_size=12, model_length=16)
    model = mf.DiT(config)
    model.init_random_(seed, std=std)
    return model.eval()


@pytest.mark.parametrize("sampler", ["fast", "mdlm"])
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


# --------------------------------------------------------------------------------------------
# Rows of evaluate_schedule and the segment search
# --------------------------------------------------------------------------------------------

from mdlm_fast.analysis import metrics as ev  # noqa: E402
from mdlm_fast.analysis.paired import compare_rows, segment_score_se  # noqa: E402
from tests.helpers.text_helpers import FixedJudge, IdTokenizer  # noqa: E402

PROBS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.25]


def _evaluate(models, schedule, seed=3, samples=6):
    return ev.evaluate_schedule(
        models,
        schedule,
        steps=4,
        length=6,
        samples=samples,
        batch_size=4,
        seed=seed,
        tokenizer=IdTokenizer(),
        judge=FixedJudge(PROBS),
        judge_tokenizer=IdTokenizer(),
    )


def _tiny5(seed, n_blocks):
    config = mf.DiTConfig(hidden_dim=16, n_heads=2, n_blocks=n_blocks, cond_dim=8, vocab_size=6, model_length=6)
    model = mf.DiT(config)
    model.init_random_(seed, std=0.5)
    return model.eval()


def test_rows_carry_aligned_per_sample_values():
    row = _evaluate([_tiny5(0, 2), _tiny5(1, 1)], "L1-H2-L1")
    per = row["per_sample"]
    assert len(per["nll_sums"]) == len(per["token_counts"]) == len(per["unigram_entropies"]) == 6
    sums = [s for s in per["nll_sums"] if s is not None]
    counts = [c for c in per["token_counts"] if c is not None]
    assert sum(sums) / sum(counts) == pytest.approx(row["mean_nll"])


def test_a_schedule_against_itself_is_a_zero_difference():
    models = [_tiny5(0, 2), _tiny5(1, 1)]
    row = _evaluate(models, "L1-H2-L1")
    paired = compare_rows(row, row)
    assert paired["nll_diff_estimate"] == 0 and paired["nll_diff_se"] == 0
    assert paired["gen_ppl_ratio"] == 1 and paired["entropy_diff_estimate"] == 0
    assert paired["gen_ppl_diff_unpaired_se"] > 0


def test_compare_rows_matches_the_column_statistics():
    models = [_tiny5(0, 2), _tiny5(1, 1)]
    row, base = _evaluate(models, "light"), _evaluate(models, "heavy")
    paired = compare_rows(row, base)
    a, b = row["per_sample"], base["per_sample"]
    expect = paired_ratio_difference(a["nll_sums"], a["token_counts"], b["nll_sums"], b["token_counts"])
    assert paired["nll_diff_estimate"] == pytest.approx(row["mean_nll"] - base["mean_nll"])
    assert paired["nll_diff_se"] == pytest.approx(expect.se)
    assert paired["gen_ppl_ratio"] == pytest.approx(row["gen_ppl"] / base["gen_ppl"])
    assert paired["baseline"] == "H4"


def test_rows_with_other_seeds_are_not_paired():
    models = [_tiny5(0, 2), _tiny5(1, 1)]
    with pytest.raises(ValueError, match="same sampler, precision, steps, length and seeds"):
        compare_rows(_evaluate(models, "light", seed=3), _evaluate(models, "heavy", seed=9))


def _segment_rows(rng, k, effects, shared):
    """Constructed search rows over 4 segments, 2 light: per-sample NLL = shared difficulty +
    the effects of the light segments + small independent noise; 32 tokens per sample."""
    import itertools

    rows = []
    for chosen in itertools.combinations(range(4), 2):
        per_token = shared + sum(effects[c] for c in chosen) + rng.normal(0, 0.02, size=k)
        rows.append(
            {
                "key": str(chosen),
                "light_segments": list(chosen),
                "record": {"seeds": [0], "samples": k, "steps": 8, "length": 32},
                "per_sample": {"nll_sums": list(per_token * 32), "token_counts": [32] * k},
                "gen_ppl": float(np.exp(per_token.mean())),
            }
        )
    return rows


def test_segment_score_se_is_calibrated_by_simulation():
    from mdlm_fast.analysis.search import segment_scores

    rng = np.random.default_rng(5)
    effects = [0.0, 0.05, 0.0, -0.05]
    scores, ses = [], []
    for _ in range(150):
        shared = rng.normal(5.0, 0.3, size=48)
        rows = _segment_rows(rng, 48, effects, shared)
        scores.append(segment_scores(rows, 4))
        ses.append(segment_score_se(rows, 4))
    scores, ses = np.array(scores), np.array(ses)
    # Segment 1 hurts and segment 3 helps, by construction.
    assert scores[:, 1].mean() > 0 > scores[:, 3].mean()
    # The paired SE predicts the spread of the scores around their mean: the shared per-sample
    # difficulty (sd 0.3, 15x the independent noise) moves every schedule alike and cancels.
    for seg in range(4):
        assert scores[:, seg].std() == pytest.approx(ses[:, seg].mean(), rel=0.3)


def test_segment_score_se_needs_paired_rows():
    rng = np.random.default_rng(6)
    rows = _segment_rows(rng, 8, [0, 0, 0, 0], rng.normal(5, 0.3, size=8))
    rows[0]["record"] = {**rows[0]["record"], "seeds": [1]}
    with pytest.raises(ValueError, match="same seeds"):
        segment_score_se(rows, 4)

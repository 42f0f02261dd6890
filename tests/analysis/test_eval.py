"""Quality metrics on constructed inputs with known answers."""

import math

import pytest

from mdlm_fast.analysis import metrics as ev
from tests.helpers.text_helpers import FixedJudge, IdTokenizer


def test_gen_ppl_of_a_judge_with_known_probabilities():
    probs = [0.1, 0.2, 0.3, 0.4]
    judge = FixedJudge(probs)
    texts = ["1 2 3", "3 3", "1"]
    result = ev.generative_perplexity(texts, judge, IdTokenizer())
    ids = [1, 2, 3, 3, 3, 1]
    mean_nll = -sum(math.log(probs[i]) for i in ids) / len(ids)
    assert result["tokens"] == 6 and result["samples"] == 3
    assert result["mean_nll"] == pytest.approx(mean_nll)
    assert result["gen_ppl"] == pytest.approx(math.exp(mean_nll))
    # standard error: zero when every sample has the same per-token NLL
    same = ev.generative_perplexity(["3 3", "3 3 3"], judge, IdTokenizer())
    assert same["gen_ppl"] == pytest.approx(1 / 0.4) and same["gen_ppl_se"] == pytest.approx(0, abs=1e-12)
    assert result["gen_ppl_se"] > 0


def test_ratio_standard_error_matches_the_delta_method():
    sums, counts = [2.0, 5.0, 1.0, 4.0], [2, 4, 2, 3]
    mean, se = ev._ratio_se(sums, counts)
    k, n = 4, sum(counts)
    assert mean == pytest.approx(12 / 11)
    expected = math.sqrt(k / (k - 1) * sum((s - mean * c) ** 2 for s, c in zip(sums, counts))) / n
    assert se == pytest.approx(expected)


def test_unigram_entropy_and_distinct_n():
    assert ev.unigram_entropy([[1, 1, 1, 1]]) == 0
    assert ev.unigram_entropy([[1, 2, 3, 4], [5, 5]]) == pytest.approx((math.log(4) + 0) / 2)
    assert ev.distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert ev.distinct_n([[1, 2, 3]], 1) == 1.0

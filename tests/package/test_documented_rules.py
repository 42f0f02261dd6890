"""Rules the documentation states that no other test pins, each against values worked out by hand:
the model charged for the noise-removal forward, Hugging Face's mask_token_id, the paired bootstrap
interval and standard errors, and the bounds of the CLI's value checks."""

import argparse
import json
import math

import numpy as np
import pytest

from mdlm_fast.analysis.paired import gen_ppl_ratio, paired_mean_difference, unpaired_se
from mdlm_fast.cli import validate as check
from mdlm_fast.cli.validate import CliError
from mdlm_fast.models.checkpoint import load_denoiser
from mdlm_fast.schedules.flops import forward_flops, schedule_flops
from mdlm_fast.schedules.model_schedule import ModelSchedule
from tests.models.test_checkpoint import OWT_CONFIG, prefixed, ref, write_hf_dir

HEAVY = dict(hidden_dim=4, n_blocks=3, vocab_size=40)
LIGHT = dict(hidden_dim=4, n_blocks=1, vocab_size=40)


def test_the_noise_removal_forward_is_charged_to_the_model_that_runs_it():
    plain = schedule_flops(ModelSchedule.parse("H2-L1"), [HEAVY, LIGHT], 2, 3)
    light_last = schedule_flops(ModelSchedule.parse("H2-L1"), [HEAVY, LIGHT], 2, 3, noise_removal_model=1)
    assert light_last["per_model_forwards"] == (2, 2)
    assert light_last["total"] - plain["total"] == forward_flops(LIGHT, 2, 3)


def test_hugging_face_mask_token_id_names_the_mask(tmp_path):
    state = ref.random_published_state(ref.TINY, seed=21)
    config = {**OWT_CONFIG, "mask_token_id": 7}
    model = load_denoiser(write_hf_dir(tmp_path / "hf", prefixed(state), config))
    assert model.config.mask_index == 7
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "mask_index": 3}))
    assert load_denoiser(tmp_path / "hf").config.mask_index == 3  # mask_index, when given, wins


def test_the_bootstrap_interval_is_the_central_95_percent():
    """Normal differences, 400 pairs: the percentile interval is about estimate -+ 1.96 se (a 90%
    interval would be 16% narrower), and it is the 2.5% / 97.5% quantiles of the resampled means."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.2, 1.0, 400), rng.normal(0.0, 1.0, 400)
    d = paired_mean_difference(a, b)
    width = (d.ci_high - d.ci_low) / (d.normal_ci_high - d.normal_ci_low)
    assert 0.93 < width < 1.07
    assert d.ci_low < d.estimate < d.ci_high


def test_unpaired_se_is_the_root_sum_of_squares():
    assert unpaired_se(3.0, 4.0) == 5.0
    assert unpaired_se(math.inf, 1.0) is None


def test_gen_ppl_ratio_se_is_the_delta_method():
    d = paired_mean_difference([2.0, 2.5, 3.5, 3.0], [1.5, 2.0, 2.5, 2.0])
    r = gen_ppl_ratio(d)
    assert r["gen_ppl_ratio_se"] == pytest.approx(math.exp(d.estimate) * d.se)
    assert r["gen_ppl_ratio_ci_high"] == pytest.approx(math.exp(d.ci_high))


@pytest.mark.parametrize(
    "check_fn,good,bad",
    [
        (check.seed, ["0", str(2**64 - 1)], ["-1", str(2**64)]),
        (check.fraction, ["0", "1", "0.5"], ["-0.01", "1.01", "nan"]),
        (check.held_out_fraction, ["0", "0.99"], ["1", "-0.1"]),
        (check.non_negative_float, ["0", "2.5"], ["-0.001", "inf"]),
        (check.positive_float, ["0.001"], ["0", "-1"]),
        (check.positive_int, ["1"], ["0", "1.5"]),
        (check.non_negative_int, ["0"], ["-1"]),
    ],
)
def test_cli_value_checks_at_their_bounds(check_fn, good, bad):
    for text in good:
        check_fn(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            check_fn(text)


def test_a_size_may_equal_its_limit():
    assert check.at_most("--length", 16, 16, "the model's model_length") == 16
    with pytest.raises(CliError, match="--length 17 exceeds the model's model_length 16"):
        check.at_most("--length", 17, 16, "the model's model_length")

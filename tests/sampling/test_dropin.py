"""The one-line swap for MDLM's Diffusion._sample: shapes, restoring, seeds, and the distribution.

The module has MDLM's structure (tests/helpers/mdlm_structure.py) and keeps MDLM's own ddpm_cache _sample on
torch's RNG; the patched _sample must draw the same distribution (chi-square against the exact one,
which MDLM's own loop must match too), with a control distribution the test rejects.
"""

import itertools

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.models.denoiser import live_denoiser
from mdlm_fast.models.dit import subs_log_probs
from mdlm_fast.models.live import LiveModelError
from tests.helpers.exact_mdlm import exact_conditional
from tests.helpers.mdlm_structure import DIT, Diffusion, hydra_config, randomize_
from tests.helpers.paths import REPO_ROOT
from tests.helpers.stats_helpers import chi_square_p_value


def module(vocab=37, seed=0, std=0.3, **config):
    diffusion = Diffusion(hydra_config(**config), vocab)
    randomize_(diffusion.backbone, seed, std)
    return diffusion.eval()


def test_patched_sample_returns_mdlms_shapes_and_dtype_and_is_restored():
    diffusion = module(batch=5, length=8, steps=6)
    original = diffusion._sample()
    with mf.patch(diffusion) as patched:
        assert patched is diffusion and "_sample" in vars(diffusion)
        out = diffusion._sample()
        fewer = diffusion._sample(num_steps=2)
    assert "_sample" not in vars(diffusion)  # the class's method shows through again
    assert out.shape == original.shape == (5, 8) and out.dtype == original.dtype == torch.int64
    assert out.device == original.device and not out.is_inference()
    assert fewer.shape == (5, 8) and (out != diffusion.mask_index).all()
    handle = mf.patch(diffusion)
    assert diffusion._sample.__name__ == "_sample"
    handle.restore()
    handle.restore()  # twice is harmless
    assert "_sample" not in vars(diffusion)


def test_restoring_puts_back_an_instance_override():
    diffusion = module()

    def own(num_steps=None, eps=1e-5):
        return "own"

    diffusion._sample = own
    with mf.patch(diffusion):
        assert diffusion._sample is not own
    assert diffusion._sample is own


def test_seeds_from_torchs_global_generator_or_from_the_argument():
    diffusion = module(batch=4, length=8)
    with mf.patch(diffusion):
        torch.manual_seed(0)
        a, b = diffusion._sample(), diffusion._sample()
        torch.manual_seed(0)
        c = diffusion._sample()
    assert torch.equal(a, c) and not torch.equal(a, b)  # reproducible under manual_seed; new samples each call
    with mf.patch(diffusion, seed=12):
        d, e = diffusion._sample(), diffusion._sample()
    with mf.patch(diffusion, seed=12):
        f = diffusion._sample()
    assert torch.equal(d, f) and not torch.equal(d, e)


def test_eps_sets_the_last_time_and_noise_removal_follows_the_config():
    keep = module(batch=64, length=8, noise_removal=False)
    with mf.patch(keep, seed=1):
        left = keep._sample(num_steps=2, eps=0.5)  # a token stays masked with probability 0.5
    assert 0.3 < (left == keep.mask_index).float().mean() < 0.7
    remove = module(batch=64, length=8, noise_removal=True)
    with mf.patch(remove, seed=1):
        assert (remove._sample(num_steps=2, eps=0.5) != remove.mask_index).all()


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda d: setattr(d.config.sampling, "predictor", "analytic"), "predictor='analytic'"),
        (lambda d: setattr(d, "parameterization", "ar"), "parameterization 'ar'"),
        (lambda d: setattr(d.config.noise, "type", "cosine"), "noise.type='cosine'"),
        (lambda d: delattr(d.config, "loader"), "loader.eval_batch_size"),
    ],
)
def test_what_the_fast_sampler_does_not_reproduce_is_refused_at_patch_time(change, match):
    diffusion = module()
    change(diffusion)
    with pytest.raises(LiveModelError, match=match):
        mf.patch(diffusion)
    assert "_sample" not in vars(diffusion)


def test_a_class_level_swap_works_too():
    class Patched(Diffusion):
        _sample = mf.fast_sample

    diffusion = Patched(hydra_config(batch=3, length=8), 37)
    randomize_(diffusion.backbone, 0)
    assert diffusion._sample(num_steps=4).shape == (3, 8)


def outcome_counts(tokens, real):
    outcomes = list(itertools.product(real, repeat=tokens.shape[1]))
    index = {o: i for i, o in enumerate(outcomes)}
    counts = torch.zeros(len(outcomes), dtype=torch.int64)
    for row in tokens.tolist():
        counts[index[tuple(row)]] += 1
    return outcomes, counts


def test_patched_sample_draws_mdlms_distribution():
    vocab, mask, length, steps, draws = 4, 3, 2, 4, 6000
    diffusion = module(vocab=vocab, seed=3, std=0.3, length=length, steps=steps, batch=draws)
    other = module(vocab=vocab, seed=5, std=0.3, length=length, steps=steps)
    shared = live_denoiser(diffusion).model
    with torch.no_grad():  # spread predictions, or the test could not tell distributions apart
        x = torch.full((1, length), mask)
        assert subs_log_probs(shared(x, torch.zeros(1)), x, mask).exp().max() < 0.9
    exact = exact_conditional(shared, [mask] * length, steps, vocab, mask)
    control = exact_conditional(live_denoiser(other).model, [mask] * length, steps, vocab, mask)
    torch.manual_seed(0)
    own = diffusion._sample()  # MDLM's own loop on torch's RNG: the fixture is MDLM's sampler
    with mf.patch(diffusion, seed=2):
        fast = diffusion._sample()
    for tokens in (own, fast):
        outcomes, counts = outcome_counts(tokens, [v for v in range(vocab) if v != mask])
        probs = torch.tensor([exact.get(o, 0.0) for o in outcomes], dtype=torch.float64)
        assert chi_square_p_value(counts, probs) > 1e-4
        assert chi_square_p_value(counts, torch.tensor([control.get(o, 0.0) for o in outcomes])) < 1e-6


def test_a_near_miss_module_is_sampled_by_its_own_forward():
    diffusion = Diffusion(hydra_config(batch=3, length=8), 37, backbone=DIT(hydra_config(), 37, torch.nn.GELU()))
    randomize_(diffusion.backbone, 0)
    with pytest.warns(mf.LiveModelWarning, match="GELU"), mf.patch(diffusion, seed=0):
        out = diffusion._sample(num_steps=4)
    assert out.shape == (3, 8) and (out != 36).all()


def test_the_dropin_benchmark_runs_and_writes_its_ratios(tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = REPO_ROOT / "benchmarks" / "bench_dropin.py"
    out = tmp_path / "dropin"
    args = [
        "--hidden",
        "32",
        "--blocks",
        "1",
        "--vocab",
        "64",
        "--length",
        "8",
        "--batch",
        "2",
        "--steps",
        "4",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--name",
        str(out),
    ]
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["variant"] for r in data["rows"]] == [
        "mdlm_own_sample",
        "patched_sample",
        "callable_path",
        "live_fast_path",
    ]
    med = {r["variant"]: r["median_s"] for r in data["rows"]}
    assert data["speedup_patched_vs_mdlm_own_sample"] == med["mdlm_own_sample"] / med["patched_sample"]
    assert data["head_positions"]["live_fast_path"] == 2 * 8 < data["head_positions"]["callable_path"]
    assert len(data["loadavg_1min"]) == 2

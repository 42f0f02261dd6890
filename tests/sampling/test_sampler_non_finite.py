"""Samplers stop on a forward that produces NaN or inf, naming the step and the model; progress bars
count trajectory steps."""

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.sampling.run import NonFiniteForwardError

SAMPLERS = ["mdlm", "fast", "confidence"]


def tiny_dit(seed, vocab=20, length=8, n_blocks=1):
    config = mf.DiTConfig(
        hidden_dim=16, n_heads=2, n_blocks=n_blocks, cond_dim=8, vocab_size=vocab, model_length=length
    )
    return mf.DiT(config).init_random_(seed, std=0.5).eval()


def poisoned(model, where, value=float("nan")):
    with torch.no_grad():
        if where == "trunk":
            model.blocks[0].mlp[0].bias[:] = value
        elif where == "head_row":
            model.head_weight[3] = value  # one row: one token's logit
        elif where == "head_bias":
            model.head_bias[5] = value
    model.refresh_constants()
    return model


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    "where,value",
    [("trunk", float("nan")), ("head_row", float("nan")), ("head_bias", float("inf")), ("trunk", float("inf"))],
)
def test_a_broken_model_stops_at_its_first_forward(sampler, where, value):
    model = poisoned(tiny_dit(0), where, value)
    with pytest.raises(NonFiniteForwardError, match="model 0 at step 0 of 6 .*NaN or inf"):
        mf.sample(model, steps=6, batch_size=3, sampler=sampler, seed=1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_error_names_the_scheduled_model_and_step(sampler):
    heavy, light = tiny_dit(0), poisoned(tiny_dit(1), "trunk")
    with pytest.raises(NonFiniteForwardError, match=r"model 1 at step 3 of 6 \(t = "):
        mf.sample([heavy, light], steps=6, batch_size=16, schedule=[0, 0, 0, 1, 1, 0], sampler=sampler, seed=2)
    with pytest.raises(ValueError):  # also a ValueError: one line from the CLI
        mf.sample([heavy, light], steps=6, batch_size=16, schedule=[0, 0, 0, 1, 1, 0], sampler=sampler, seed=2)


def test_head_weights_are_named_for_fused_models():
    model = poisoned(tiny_dit(0), "head_row")
    with pytest.raises(NonFiniteForwardError, match="output layer's weights"):
        mf.sample(model, steps=4, batch_size=2, sampler="fast")


class SwitchesAtSmallT:
    """A callable denoiser whose logits are NaN once sigma is small (only noise removal sees it)."""

    def __init__(self, vocab=12):
        self.vocab = vocab

    def __call__(self, x, sigma):
        logits = torch.linspace(-1, 1, self.vocab).expand(*x.shape, -1).clone()
        logits[..., 0] = float("-inf")  # -inf marks an impossible token: allowed
        return torch.where(sigma[:, None, None] < 1e-3, float("nan"), logits)


def test_the_noise_removal_forward_is_checked():
    model = mf.Denoiser(SwitchesAtSmallT(), vocab_size=12, mask_index=11, time_conditioning=True)
    match = "model 0 at the noise-removal forward after step 5"
    with pytest.raises(NonFiniteForwardError, match=match):
        mf.sample(model, steps=5, batch_size=64, length=6, sampler="mdlm", seed=0)
    # the fast sampler rarely has anything left for noise removal: run its removal plan directly
    from mdlm_fast.models.denoiser import as_denoisers
    from mdlm_fast.ops.compiled import PURPOSE_NOISE_REMOVAL
    from mdlm_fast.sampling import fast as fast_sampler
    from mdlm_fast.sampling.run import SamplingRun

    x = torch.full((2, 6), 11)
    run = SamplingRun(as_denoisers(model), mf.ModelSchedule.all_heavy(5), x, 0, "fp64", "greedy", False)
    plans, removal = fast_sampler.build_plan(torch.full((2, 6), 5), 5, x.device)
    with pytest.raises(NonFiniteForwardError, match=match):  # the draw refuses the NaN row at once
        fast_sampler._reveal(run, x.clone(), removal, 0, 1e-5, 0.0, PURPOSE_NOISE_REMOVAL)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_minus_inf_logits_are_allowed(sampler):
    def logits(x, sigma):
        out = torch.linspace(-1, 1, 12).expand(*x.shape, -1).clone()
        out[..., :3] = float("-inf")
        return out

    model = mf.Denoiser(logits, vocab_size=12, mask_index=11, time_conditioning=False)
    tokens = mf.sample(model, steps=4, batch_size=8, length=6, sampler=sampler, seed=0).tokens
    assert ((tokens >= 3) & (tokens != 11)).all()


def test_checks_add_no_host_sync_to_the_fast_loop():
    model = tiny_dit(0, length=16)
    result = mf.sample(model, steps=16, batch_size=4, sampler="fast", seed=0)
    assert result.stats.host_syncs == 1
    reference = mf.sample(model, steps=16, batch_size=4, sampler="mdlm", seed=0)
    assert reference.stats.host_syncs == 16  # one per step, as before: the flag rides on the cache check


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_progress_counts_trajectory_steps(sampler, monkeypatch):
    import importlib

    from tqdm import tqdm

    bars = []

    class RecordingBar(tqdm):
        def close(self):
            bars.append((self.desc, self.n, self.total))
            super().close()

    module = importlib.import_module(f"mdlm_fast.sampling.{sampler}")
    monkeypatch.setattr(module, "tqdm", RecordingBar)
    model = tiny_dit(0, length=4)
    steps = 40  # far more steps than positions: the fast sampler runs at most 4 forwards + removal
    result = mf.sample(model, steps=steps, batch_size=1, sampler=sampler, seed=0, progress=True)
    assert bars and set(bars) == {(f"{sampler} sampler", steps, steps)}  # close() may run twice
    if sampler == "fast":
        assert sum(result.stats.forwards) <= 5

"""MDLM's live objects on the fast path, sharing their weights; near misses fall back or are refused.

The objects are built from tests/helpers/mdlm_structure.py (MDLM's class, submodule and parameter names,
written for the tests). Logits through the fast path are compared with the object's own forward:
both are fp32 on the CPU but in different operation orders (rotary, modulation, attention), so
the stated tolerance is atol 1e-5 on logits of magnitude ~1.
"""

import warnings

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.models.denoiser import live_denoiser
from mdlm_fast.models.dit import subs_log_probs
from mdlm_fast.models.live import LiveModelError, LiveModelWarning, looks_like_mdlm
from mdlm_fast.sampling.fast import FastOptions
from tests.helpers.mdlm_structure import (
    DIT,
    MDLM,
    Diffusion,
    LogLinearNoise,
    hf_config,
    hydra_config,
    modulate,
    randomize_,
)

VOCAB = 37
LOGIT_TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def make(kind, seed=0, time_conditioning=False, **config):
    if kind == "dit":
        return randomize_(DIT(hydra_config(time_conditioning=time_conditioning, **config), VOCAB), seed)
    if kind == "hf":
        return randomize_(MDLM(hf_config(vocab=VOCAB, time_conditioning=time_conditioning)), seed)
    if kind == "lightning":
        module = Diffusion(hydra_config(time_conditioning=time_conditioning, **config), VOCAB, ema=0.999)
        randomize_(module.backbone, seed)
        return module
    if kind == "lightning-hf":  # MDLM's backbone='hf_dit': the HF model inside the Lightning module
        hf = make("hf", seed, time_conditioning)
        return Diffusion(hydra_config(time_conditioning=time_conditioning), VOCAB, backbone=hf)
    raise AssertionError(kind)


def dit_module(obj):
    inner = getattr(obj, "backbone", obj)
    return getattr(inner, "backbone", inner)


def own_logprobs(obj, x, sigma):
    """The object's own next-token log-probabilities (SUBS) as MDLM computes them."""
    with torch.no_grad():
        if isinstance(obj, Diffusion):
            out = obj(x, sigma)
        elif isinstance(obj, MDLM):
            out = obj(input_ids=x, timesteps=sigma)[0]
        else:
            out = obj(x, sigma if obj.config.time_conditioning else torch.zeros_like(sigma))
    return subs_log_probs(out, x, VOCAB - 1)


def check_input(length=8):
    gen = torch.Generator().manual_seed(9)
    x = torch.randint(0, VOCAB - 1, (3, length), generator=gen)
    x[:, ::2] = VOCAB - 1
    return x, torch.tensor([0.2, 0.9, 2.5])


KINDS = ["dit", "hf", "lightning", "lightning-hf"]


@pytest.mark.parametrize("time_conditioning", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_shares_weights_and_matches_the_module(kind, time_conditioning):
    obj = make(kind, time_conditioning=time_conditioning).eval()
    assert looks_like_mdlm(obj)
    denoiser = live_denoiser(obj)
    assert denoiser.fast_path and denoiser.fused and denoiser.weights == "module"
    assert denoiser.time_conditioning == time_conditioning and denoiser.mask_index == VOCAB - 1
    theirs = dict(dit_module(obj).named_parameters())
    ours = dict(denoiser.model.named_parameters())
    assert list(ours) == list(theirs)
    assert all(ours[n].data_ptr() == theirs[n].data_ptr() for n in ours)  # shared, not copied
    x, sigma = check_input()
    with torch.no_grad():
        logits = denoiser.model(x, sigma)
    masked = x == VOCAB - 1
    torch.testing.assert_close(
        subs_log_probs(logits, x, VOCAB - 1)[masked], own_logprobs(obj, x, sigma)[masked], **LOGIT_TOLERANCE
    )


@pytest.mark.parametrize("kind", KINDS)
def test_sample_runs_the_fused_head_at_revealed_positions_only(kind):
    obj = make(kind)
    batch, length = 3, 8
    result = mf.sample(obj, steps=16, batch_size=batch, length=length, seed=4)
    assert result.stats.head_positions == batch * length  # each position projected once, when revealed
    unpruned = mf.sample(
        obj, steps=16, batch_size=batch, length=length, seed=4, _fast_options=FastOptions(pruned_last_block=False)
    )
    assert torch.equal(result.tokens, unpruned.tokens)
    assert result.stats.executed_flops["total"] < unpruned.stats.executed_flops["total"]  # last block pruned
    assert (result.tokens != VOCAB - 1).all()


def test_updates_of_the_module_are_seen_without_rewrapping():
    module = make("lightning").eval()
    denoiser = live_denoiser(module)
    x, sigma = check_input()
    with torch.no_grad():
        before = denoiser.model(x, sigma)
        module.backbone.output_layer.linear.bias.add_(1.0)
        module.backbone.blocks[0].adaLN_modulation.bias.mul_(2.0)  # an input of the cached constants
        after = denoiser.model(x, sigma)
    assert not torch.allclose(before, after)
    masked = x == VOCAB - 1
    torch.testing.assert_close(
        subs_log_probs(after, x, VOCAB - 1)[masked], own_logprobs(module, x, sigma)[masked], **LOGIT_TOLERANCE
    )


def test_ema_weights_are_shared_when_asked_for():
    module = make("lightning").eval()
    with torch.no_grad():
        for s in module.ema.shadow_params:
            s.mul_(0.8)  # the average differs from the weights
    ema = live_denoiser(module, ema=True)
    plain = live_denoiser(module)
    assert ema.weights == "ema" and plain.weights == "module"
    shadow_ptrs = [s.data_ptr() for s in module.ema.shadow_params]
    assert [p.data_ptr() for p in ema.model.parameters()] == shadow_ptrs
    x, sigma = check_input()
    with torch.no_grad():
        ema_logits, plain_logits = ema.model(x, sigma), plain.model(x, sigma)
    assert not torch.allclose(ema_logits, plain_logits)
    module.ema.copy_to(module.backbone.parameters())  # what MDLM does before sampling
    masked = x == VOCAB - 1
    torch.testing.assert_close(
        subs_log_probs(ema_logits, x, VOCAB - 1)[masked], own_logprobs(module, x, sigma)[masked], **LOGIT_TOLERANCE
    )
    assert live_denoiser(make("dit"), ema=True).weights == "module"  # nothing to use: the module's weights


def test_ema_that_does_not_belong_to_the_module_is_refused():
    module = make("lightning")
    module.ema.shadow_params.pop()
    with pytest.raises(LiveModelError, match="shadow_params has"):
        live_denoiser(module, ema=True)


def test_noise_eps_and_mask_id_are_read_from_the_lightning_module():
    module = make("lightning")
    module.noise = LogLinearNoise(eps=1e-2)
    module.mask_index = 0
    denoiser = live_denoiser(module)
    assert denoiser.noise_eps == 1e-2 and denoiser.mask_index == 0
    assert live_denoiser(make("dit"), mask_index=5).mask_index == 5


class ScaledDIT(DIT):
    """Same structure, other math: the kind of near miss only the forward check can see."""

    def forward(self, indices, sigma):
        return 2 * super().forward(indices, sigma)


def near_misses():
    other_activation = DIT(hydra_config(), VOCAB, activation=torch.nn.GELU())
    extra_layer = DIT(hydra_config(), VOCAB)
    extra_layer.blocks[1].adapter = torch.nn.Linear(32, 32)
    renamed = DIT(hydra_config(), VOCAB)
    final = renamed.output_layer
    final.proj = final.linear
    del final.linear
    final.forward = lambda x, c: final.proj(
        modulate(final.norm_final(x), *final.adaLN_modulation(c)[:, None].chunk(2, 2))
    )
    return [
        (other_activation, "GELU"),
        (extra_layer, "extra blocks.1.adapter"),
        (renamed, "missing output_layer.linear.weight"),
        (ScaledDIT(hydra_config(), VOCAB), "disagree"),
    ]


@pytest.mark.parametrize("index", range(4))
def test_near_misses_fall_back_to_their_own_forward_with_a_warning(index):
    module, reason = near_misses()[index]
    randomize_(module, 3)
    with pytest.warns(LiveModelWarning, match=reason) as record:
        result = mf.sample(module, steps=4, batch_size=2, length=8, seed=1)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert result.stats.head_positions > 2 * 8  # every position of the rows run, at every forward
    with pytest.warns(LiveModelWarning):
        denoiser = live_denoiser(module)
    assert not denoiser.fast_path and not denoiser.fused and reason.split()[0] in denoiser.fallback_reason


def test_blocks_that_are_not_a_module_list_fall_back_instead_of_failing_on_len():
    module = randomize_(DIT(hydra_config(), VOCAB), 3)
    module.blocks = torch.nn.Linear(4, 4)  # has DIT's submodule names, but blocks cannot be counted
    with pytest.warns(LiveModelWarning, match="parameters differ"):
        denoiser = live_denoiser(module)
    assert not denoiser.fast_path


def test_fallback_logits_are_the_modules_own():
    module = randomize_(ScaledDIT(hydra_config(), VOCAB), 3).eval()
    with pytest.warns(LiveModelWarning):
        denoiser = live_denoiser(module)
    x, sigma = check_input()
    with torch.no_grad():
        assert torch.equal(denoiser.logits(x, sigma), module(x, torch.zeros_like(sigma)))
    assert mf.sample(denoiser, steps=2, batch_size=1).tokens.shape == (1, 8)  # config.model.length


def test_ema_on_a_near_miss_is_refused():
    module = Diffusion(hydra_config(), VOCAB, ema=0.999, backbone=DIT(hydra_config(), VOCAB, torch.nn.GELU()))
    with pytest.raises(LiveModelError, match="EMA weights need the fast path"):
        live_denoiser(module, ema=True)


def test_what_no_path_can_sample_is_refused():
    module = make("lightning")
    module.parameterization = "sedd"
    with pytest.raises(LiveModelError, match="SUBS"):
        live_denoiser(module)
    module = make("lightning")
    module.noise.forward = lambda t: (t * 3, t)
    with pytest.raises(LiveModelError, match="log-linear"):
        live_denoiser(module)
    with pytest.raises(LiveModelError, match="not one of MDLM's objects"):
        live_denoiser(torch.nn.Linear(2, 2))


def test_training_mode_is_kept_and_dropout_does_not_enter_the_check():
    module = make("lightning").train()
    denoiser = live_denoiser(module)
    assert denoiser.fast_path and module.training and module.backbone.blocks[0].dropout1.training


def test_own_dit_and_plain_modules_are_not_taken_for_mdlm_objects():
    config = mf.DiTConfig(hidden_dim=16, n_heads=2, n_blocks=1, cond_dim=8, vocab_size=9, model_length=4)
    assert not looks_like_mdlm(mf.DiT(config)) and not looks_like_mdlm(torch.nn.Linear(2, 2))

    class Trunked(torch.nn.Module):  # a fused denoiser of its own that happens to hold a backbone
        def __init__(self):
            super().__init__()
            self.backbone = mf.DiT(config).init_random_(0)
            self.config = config
            self.trunk, self.head = self.backbone.trunk, self.backbone.output_layer.linear

    assert not looks_like_mdlm(Trunked())


def test_a_wrapper_around_a_dit_backbone_gets_the_fast_path_on_its_weights():
    config = mf.DiTConfig(hidden_dim=16, n_heads=2, n_blocks=1, cond_dim=8, vocab_size=9, model_length=4)

    class Wrapper(torch.nn.Module):  # forward(x, sigma) -> logits around a module with DIT's structure
        def __init__(self):
            super().__init__()
            self.backbone = mf.DiT(config).init_random_(0)
            self.config = config

        def forward(self, x, sigma):
            return self.backbone(x, sigma)

    wrapper = Wrapper()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        denoiser = live_denoiser(wrapper)
    assert denoiser.fast_path and denoiser.model.head_weight is wrapper.backbone.head_weight
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mf.sample(mf.DiT(config).init_random_(0), steps=2, batch_size=1)

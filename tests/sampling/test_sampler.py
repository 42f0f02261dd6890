"""Samplers: exact output distributions on tiny models, prefix handling, determinism, errors."""

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.models.dit import subs_log_probs
from mdlm_fast.schedules.noise import LogLinearNoise, sampling_dt
from tests.helpers.exact_law import exact_law, outcome_counts, spread_dit
from tests.helpers.stats_helpers import chi_square_p_value


def tiny_dit(n_blocks, seed, vocab=4, length=2, time_conditioning=False, scale=0.5):
    """spread_dit at a larger default weight scale (the sharper models of the non-statistical tests)."""
    return spread_dit(n_blocks, seed, vocab, length, time_conditioning, scale)


def _law(models, schedule, steps, length, **kwargs):
    """The exact output law (tests/helpers/exact_law.py), asserting the models' spread."""
    law = exact_law(models, schedule, steps, length, 4, 3, **kwargs)
    assert law.top < 0.9, f"the models are near-certain (top probability {law.top:.3f})"
    assert abs(sum(law.probs.values()) - 1) < 1e-6
    return law


@pytest.mark.parametrize("sampler", ["mdlm", "fast"])
@pytest.mark.parametrize("time_conditioning", [False, True])
def test_output_distribution_is_exact(sampler, time_conditioning):
    heavy = tiny_dit(2, 0, time_conditioning=time_conditioning, scale=0.1)
    light = tiny_dit(1, 1, time_conditioning=time_conditioning, scale=0.1)
    schedule = mf.ModelSchedule([1, 0, 0, 1])
    exact = _law([heavy, light], schedule, 4, 2)
    draws = 6000
    result = mf.sample([heavy, light], steps=4, batch_size=draws, schedule=schedule, sampler=sampler, seed=7)
    outcomes, counts = outcome_counts(result.tokens, 4, 3)
    assert chi_square_p_value(counts, exact.vector(outcomes)) > 1e-4
    # the same counts reject the law of one step fewer and that of MDLM's dt of a finer grid
    fewer = _law([heavy, light], mf.ModelSchedule([1, 0, 1]), 3, 2)
    finer_dt = _law([heavy, light], schedule, 4, 2, dt_steps=5)
    assert chi_square_p_value(counts, fewer.vector(outcomes)) < 1e-6
    assert chi_square_p_value(counts, finer_dt.vector(outcomes)) < 1e-6


def test_fp32_mdlm_precision_runs_and_matches_coarsely():
    heavy = tiny_dit(2, 0, scale=0.1)
    exact = _law([heavy], mf.ModelSchedule.all_heavy(3), 3, 2)
    result = mf.sample(heavy, steps=3, batch_size=3000, seed=1, sampler="mdlm", precision="fp32-mdlm")
    outcomes, counts = outcome_counts(result.tokens, 4, 3)
    # the truncated float32 Gumbel tail only matters for tokens far below 1e-7; not visible here
    assert chi_square_p_value(counts, exact.vector(outcomes)) > 1e-4
    flatter = _law([heavy], mf.ModelSchedule.all_heavy(3), 3, 2, temperature=2.0)
    assert chi_square_p_value(counts, flatter.vector(outcomes)) < 1e-6


def test_one_reference_step_matches_the_transition_probabilities():
    """From all-masked, a single step at t=1 leaves a position masked with probability mc(s)/mc(t)
    and otherwise reveals v with probability p_x0[v]; checked per position by chi-square."""
    model = tiny_dit(1, 3, vocab=6, length=3, scale=0.2)
    steps = 4
    draws = 5000
    x = torch.full((draws, 3), 5)
    noise = LogLinearNoise()
    t, s = 1.0, 1.0 - sampling_dt(steps)
    stay = noise.move_chance(s) / noise.move_chance(t)
    with torch.no_grad():
        p = subs_log_probs(model(x[:1], torch.full((1,), noise.sigma(t))), x[:1], 5).double().exp()[0]
    from mdlm_fast.models.denoiser import as_denoisers
    from mdlm_fast.sampling import mdlm as mdlm_sampler
    from mdlm_fast.sampling.keys import position_grid
    from mdlm_fast.sampling.run import SamplingRun

    run = SamplingRun(as_denoisers(model), mf.ModelSchedule.all_heavy(steps), x, 11, "fp64", "greedy", False)
    keys = position_grid(draws, 3, x.device)
    with torch.no_grad():
        p_x0 = subs_log_probs(model(x, torch.full((draws,), noise.sigma(t))), x, 5).exp()
    proposal = mdlm_sampler._gumbel_max_step(run, p_x0, noise.move_chance(t), noise.move_chance(s), keys)
    assert p.max() < 0.9  # spread predictions
    for pos in range(3):
        probs = p[pos] * (1 - stay)
        probs[5] = stay
        counts = torch.bincount(proposal[:, pos], minlength=6)
        assert chi_square_p_value(counts, probs) > 1e-4
        # the same counts reject the transition of a grid with one step fewer (another dt)
        wrong_stay = noise.move_chance(1.0 - sampling_dt(steps - 1)) / noise.move_chance(1.0)
        wrong = p[pos] * (1 - wrong_stay)
        wrong[5] = wrong_stay
        assert chi_square_p_value(counts, wrong) < 1e-6


@pytest.mark.parametrize("sampler", ["mdlm", "fast"])
def test_same_seed_same_tokens_and_prefix_kept(sampler):
    heavy, light = tiny_dit(2, 0, vocab=50, length=24), tiny_dit(1, 1, vocab=50, length=24)
    prefix = torch.tensor([4, 8, 15, 16, 23])
    kwargs = dict(steps=24, batch_size=5, schedule="sandwich:0.5", sampler=sampler, prefix=prefix)
    a = mf.sample([heavy, light], seed=42, **kwargs).tokens
    b = mf.sample([heavy, light], seed=42, **kwargs).tokens
    c = mf.sample([heavy, light], seed=43, **kwargs).tokens
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a[:, :5] == prefix).all() and (c[:, :5] == prefix).all()
    assert not (a == heavy.config.mask_index).any()


def test_per_row_prefixes():
    model = tiny_dit(1, 0, vocab=30, length=10)
    prefix = torch.tensor([[1, 2], [3, 4], [5, 6]])
    for sampler in ("mdlm", "fast"):
        out = mf.sample(model, steps=10, batch_size=3, sampler=sampler, prefix=prefix).tokens
        assert torch.equal(out[:, :2], prefix)


class RowLocalDenoiser(torch.nn.Module):
    """A time-conditioned denoiser whose logits are exact small numbers and depend only on the
    row itself: an embedding of the next position's token plus a position and a time term."""

    def __init__(self, vocab=40, d=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randint(-4, 5, (vocab, d), generator=g).float() / 4)
        self.pos = torch.nn.Parameter(torch.randint(-4, 5, (64, d), generator=g).float() / 4)
        self.head = torch.nn.Linear(d, vocab)
        with torch.no_grad():
            self.head.weight.copy_(torch.randint(-4, 5, (vocab, d), generator=g).float() / 4)
            self.head.bias.copy_(torch.randint(-4, 5, (vocab,), generator=g).float() / 4)
        self.vocab = vocab

    def trunk(self, x, sigma):
        h = self.embed[x.roll(-1, dims=1)] + self.pos[: x.shape[1]]
        return h + (sigma[:, None, None] > 1.0).float()  # time-dependent, exactly representable

    def forward(self, x, sigma):
        return self.head(self.trunk(x, sigma))


@pytest.mark.parametrize("kind", ["fused", "callable"])
def test_rows_do_not_depend_on_the_rest_of_the_batch(kind):
    module = RowLocalDenoiser()
    model = (
        mf.Denoiser(module, vocab_size=40, mask_index=39, time_conditioning=True)
        if kind == "fused"
        else mf.Denoiser(lambda x, s: module(x, s), vocab_size=40, mask_index=39, time_conditioning=True)
    )
    assert model.fused == (kind == "fused")
    full = mf.sample(model, steps=16, batch_size=6, length=12, sampler="fast", seed=3)
    part = mf.sample(model, steps=16, batch_size=3, length=12, sampler="fast", seed=3)
    assert torch.equal(full.tokens[:3], part.tokens)
    # every row runs only at steps where it reveals something
    assert sum(full.stats.rows) < 6 * 16
    assert full.stats.host_syncs == 1


def test_fused_and_unfused_heads_draw_identical_tokens():
    module = RowLocalDenoiser()
    fused = mf.Denoiser(module, vocab_size=40, mask_index=39, time_conditioning=True)
    unfused = mf.Denoiser(lambda x, s: module(x, s), vocab_size=40, mask_index=39, time_conditioning=True)
    assert fused.fused and not unfused.fused
    a = mf.sample(fused, steps=16, batch_size=4, length=12, sampler="fast", seed=9)
    b = mf.sample(unfused, steps=16, batch_size=4, length=12, sampler="fast", seed=9)
    assert torch.equal(a.tokens, b.tokens)
    assert a.stats.head_positions < b.stats.head_positions


def test_fast_sampler_skips_work_and_counts_it():
    heavy, light = tiny_dit(2, 0, vocab=50, length=32), tiny_dit(1, 1, vocab=50, length=32)
    ref = mf.sample([heavy, light], steps=32, batch_size=4, schedule="sandwich:0.25", sampler="mdlm")
    fast = mf.sample([heavy, light], steps=32, batch_size=4, schedule="sandwich:0.25", sampler="fast")
    assert fast.stats.predicted_saving == pytest.approx(0.25 * 0.5)
    assert sum(fast.stats.forwards) <= 33
    assert fast.stats.head_positions == 4 * 32  # each position is projected exactly once
    assert ref.stats.head_positions >= 4 * 32 * 2
    assert fast.stats.executed_flops["total"] < ref.stats.executed_flops["total"]
    assert fast.stats.host_syncs == 1


class TrunkWithoutPositions(torch.nn.Module):
    """A DiT behind a trunk that takes no `positions=`: the sampler must run every block whole."""

    def __init__(self, dit):
        super().__init__()
        self.dit, self.config = dit, dit.config
        self.head_weight, self.head_bias = dit.head_weight, dit.head_bias

    def trunk(self, x, sigma):
        return self.dit.trunk(x, sigma)

    def forward(self, x, sigma):
        return self.dit(x, sigma)


def test_last_block_at_revealed_positions_changes_the_work_not_the_tokens():
    heavy = tiny_dit(3, 0, vocab=50, length=32)
    pruned = mf.sample(heavy, steps=32, batch_size=4, sampler="fast", seed=3)
    whole = mf.sample(TrunkWithoutPositions(heavy), steps=32, batch_size=4, sampler="fast", seed=3)
    assert torch.equal(pruned.tokens, whole.tokens)
    assert pruned.stats.rows == whole.stats.rows
    # the saving is (rows * L - queries) * the per-query cost of the last block (flops.block_flops)
    d, length = 16, 32
    per_query = 2 * (d * d + d * d + 8 * d * d) + 4 * length * d
    saved = whole.stats.executed_flops["blocks"] - pruned.stats.executed_flops["blocks"]
    assert saved > 0 and saved % per_query == 0
    queries = sum(whole.stats.rows) * length - saved // per_query
    assert pruned.stats.head_positions <= queries < sum(whole.stats.rows) * length // 2


def _noise_removal_tokens(model, x, how):
    """Run the fast sampler's noise removal on every masked position of x."""
    from mdlm_fast.models.denoiser import as_denoisers
    from mdlm_fast.ops.compiled import PURPOSE_NOISE_REMOVAL
    from mdlm_fast.sampling import fast as fast_sampler
    from mdlm_fast.sampling.run import SamplingRun

    steps = 4
    run = SamplingRun(as_denoisers(model), mf.ModelSchedule.all_heavy(steps), x, 5, "fp64", how, False)
    reveal = torch.where(x == model.config.mask_index, steps, -1)
    plans, removal = fast_sampler.build_plan(reveal, steps, x.device)
    assert plans == [] and removal.n_positions == int((reveal == steps).sum())
    out = x.clone()
    with torch.no_grad():
        fast_sampler._reveal(run, out, removal, 0, 1e-5, 0.0 if how == "greedy" else 1.0, PURPOSE_NOISE_REMOVAL)
    return out


def test_noise_removal_greedy_is_argmax_and_ancestral_follows_p_x0():
    model = tiny_dit(1, 0, vocab=6, length=3, scale=0.2)
    draws = 4000
    x = torch.tensor([[2, 5, 5]]).expand(draws, -1).clone()
    with torch.no_grad():
        logp = subs_log_probs(model(x[:1], torch.full((1,), LogLinearNoise().sigma(1e-5))), x[:1], 5)[0].double()
    greedy = _noise_removal_tokens(model, x, "greedy")
    assert (greedy[:, 0] == 2).all()
    assert (greedy[:, 1:] == logp[1:].argmax(-1)).all()
    ancestral = _noise_removal_tokens(model, x, "ancestral")
    assert (ancestral[:, 0] == 2).all() and not (ancestral == 5).any()
    assert logp[1:].exp().max() < 0.9  # spread predictions
    for pos in (1, 2):
        counts = torch.bincount(ancestral[:, pos], minlength=6)
        assert chi_square_p_value(counts, logp[pos].exp()) > 1e-4
        assert chi_square_p_value(counts, torch.softmax(logp[pos] / 0.6, 0)) < 1e-6  # another temperature


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sampler="turbo"), "sampler"),
        (dict(precision="fp16"), "precision"),
        (dict(sampler="fast", precision="fp32-mdlm"), "fp32-mdlm"),
        (dict(steps=0), "steps"),
        (dict(batch_size=-1), "batch_size"),
        (dict(schedule="sandwich:1.5"), "1.5"),
        (dict(schedule=[0, 2, 0, 0]), "2"),
        (dict(schedule="L2-H3"), "5"),
        (dict(prefix=list(range(9))), "prefix has 9 tokens"),
        (dict(prefix=[3, 29]), "mask id"),
        (dict(prefix=[3, 99]), "outside"),
        (dict(seed=-1), "seed"),
        (dict(noise_removal="ancestral"), "fast sampler only"),
        (dict(sampler="confidence", noise_removal="ancestral"), "fast sampler only"),
        (dict(temperature=0.5), "temperature must be 1"),
        (dict(sampler="fast", temperature=-1.0), "temperature"),
    ],
)
def test_bad_arguments(kwargs, match):
    models = [tiny_dit(1, 0, vocab=30, length=8), tiny_dit(1, 1, vocab=30, length=8)]
    args = dict(steps=4, batch_size=2, sampler="mdlm")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mf.sample(models, **args)


def test_models_must_agree_on_vocabulary_and_mask():
    a = tiny_dit(1, 0, vocab=30)
    with pytest.raises(ValueError, match="vocab_size"):
        mf.sample([a, tiny_dit(1, 1, vocab=31)], steps=2, batch_size=1, sampler="mdlm")
    other = mf.DiT(mf.DiTConfig(hidden_dim=16, n_heads=2, n_blocks=1, cond_dim=8, vocab_size=30, mask_index=0))
    with pytest.raises(ValueError, match="mask_index"):
        mf.sample([a, other], steps=2, batch_size=1, sampler="mdlm")


def test_confidence_decoding_keeps_the_most_confident_positions():
    """Temperature 0 confidence decoding: each step unmasks exactly the scheduled number of
    positions, and they are the ones where the model's top token is most probable."""
    from mdlm_fast.sampling import confidence as confidence_sampler

    model = tiny_dit(2, 0, vocab=30, length=12)
    result = mf.sample(model, steps=4, batch_size=3, sampler="confidence", temperature=0.0, prefix=[1, 2], seed=0)
    assert (result.tokens[:, :2] == torch.tensor([1, 2])).all() and not (result.tokens == 29).any()
    assert confidence_sampler.unmask_counts(10, 4) == [2, 3, 2, 3]
    # replay step 0 by hand: the first unmasked positions are the two most confident ones
    x = torch.full((3, 12), 29)
    x[:, :2] = torch.tensor([1, 2])
    with torch.no_grad():
        logp = subs_log_probs(model(x, torch.zeros(3)), x, 29)
    conf, top = logp[:, 2:].max(-1)
    first = conf.topk(2, dim=1).indices + 2
    one_step = mf.sample(model, steps=4, batch_size=3, sampler="confidence", temperature=0.0, prefix=[1, 2])
    assert torch.equal(one_step.tokens.gather(1, first), top.gather(1, first - 2))
    assert result.stats.forwards == [4] and result.stats.host_syncs == 1


@pytest.mark.parametrize("kind", ["fused", "callable"])
def test_confidence_decoding_fused_and_unfused_agree(kind):
    module = RowLocalDenoiser()
    fused = mf.Denoiser(module, vocab_size=40, mask_index=39, time_conditioning=True)
    other = (
        fused
        if kind == "fused"
        else mf.Denoiser(lambda x, s: module(x, s), vocab_size=40, mask_index=39, time_conditioning=True)
    )
    a = mf.sample(fused, steps=6, batch_size=2, length=12, sampler="confidence", seed=4)
    b = mf.sample(other, steps=6, batch_size=2, length=12, sampler="confidence", seed=4)
    assert torch.equal(a.tokens, b.tokens) and not (a.tokens == 39).any()


def test_reference_is_an_alias_of_the_mdlm_sampler_and_fast_the_default():
    model = tiny_dit(1, 0, vocab=30, length=8)
    kw = dict(steps=6, batch_size=3, seed=5)
    mdlm = mf.sample(model, sampler="mdlm", **kw)
    alias = mf.sample(model, sampler="reference", **kw)
    assert torch.equal(alias.tokens, mdlm.tokens) and alias.stats.sampler == "mdlm"
    default = mf.sample(model, **kw)
    assert torch.equal(default.tokens, mf.sample(model, sampler="fast", **kw).tokens)
    assert default.stats.sampler == "fast"
    with pytest.raises(ValueError, match="sampler must be one of"):
        mf.sample(model, sampler="ddpm", **kw)

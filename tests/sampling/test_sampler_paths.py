"""Sampler paths a distribution test on tiny models cannot see: the sigma and the model of every
forward, the temperature through sample() and the CLI, the noise-removal stream through a whole
run, and the placements and segment specs whose slack is odd."""

import json
import math

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.ops import compiled as ops
from mdlm_fast.sampling.keys import position_grid
from tests.helpers.exact_law import TimeTable, spread_dit

VOCAB, MASK = 4, 3


def _grid_sigma(steps: int, i: int) -> float:
    """sigma at MDLM's grid point i, written out here rather than taken from the package."""
    t = 1.0 - (1.0 - 1e-5) * i / steps
    return -math.log1p(-(1.0 - 1e-3) * t)


class Recorder:
    """Wraps a model's forward (callable) or trunk (fused): records (model index, sigma) per call."""

    def __init__(self):
        self.calls = []

    def record(self, index, sigma):
        values = sigma.unique()
        assert values.numel() == 1, "one forward conditions every row on the same time"
        self.calls.append((index, values.item()))

    def callable_model(self, index, module):
        def forward(x, sigma):
            self.record(index, sigma)
            return module(x, sigma)

        return mf.Denoiser(forward, vocab_size=VOCAB, mask_index=MASK, time_conditioning=True)

    def fused_model(self, index, module):
        recorder = self

        class Recording(TimeTable):
            def trunk(self, x, sigma):
                recorder.record(index, sigma)
                return super().trunk(x, sigma)

        model = Recording(0, length=module.table.shape[0])
        model.load_state_dict(module.state_dict())
        return mf.Denoiser(model, vocab_size=VOCAB, mask_index=MASK, time_conditioning=True)


@pytest.mark.parametrize("sampler,kind", [("fast", "fused"), ("fast", "callable"), ("mdlm", "callable")])
def test_every_forward_runs_the_scheduled_model_at_its_grid_sigma(sampler, kind):
    steps, schedule = 6, mf.ModelSchedule.parse("L2-H3-L1")
    recorder = Recorder()
    modules = [TimeTable(0, length=24), TimeTable(1, length=24)]
    make = recorder.fused_model if kind == "fused" else recorder.callable_model
    models = [make(i, m) for i, m in enumerate(modules)]
    # 8 x 24 positions: every step reveals something (the fast sampler runs it), nothing is left for
    # noise removal at this seed
    result = mf.sample(models, steps=steps, batch_size=8, length=24, schedule=schedule, sampler=sampler, seed=2)
    expected = [(schedule[i], _grid_sigma(steps, i)) for i in range(steps)]
    if sampler == "mdlm":  # time-conditioned: no cache; then the noise-removal forward at ts[T]
        expected.append((schedule[-1], _grid_sigma(steps, steps)))
    assert [i for i, _ in recorder.calls] == [i for i, _ in expected]
    torch.testing.assert_close(
        torch.tensor([s for _, s in recorder.calls]),
        torch.tensor([s for _, s in expected], dtype=torch.float32),
        rtol=1e-6,
        atol=0,
    )
    assert sum(result.stats.forwards) == len(expected)


@pytest.mark.parametrize("temperature", [0.0, 0.5, 2.0])
def test_temperature_reaches_the_fast_sampler_through_sample(temperature):
    """Another temperature draws other tokens at the same seed, and T = 0 draws no random token:
    every revealed token is the argmax of p_x0 at the state its step started from."""
    model = spread_dit(1, 0, vocab=30, length=16, scale=0.3)
    kwargs = dict(steps=8, batch_size=4, length=16, seed=3)
    at_one = mf.sample(model, **kwargs).tokens
    tokens = mf.sample(model, temperature=temperature, **kwargs).tokens
    assert not torch.equal(tokens, at_one)
    if temperature == 0:  # replay: the reveal plan is the run's own, the tokens must be the argmax
        from mdlm_fast.models.denoiser import as_denoisers
        from mdlm_fast.sampling import fast
        from mdlm_fast.sampling.run import SamplingRun

        x = torch.full((4, 16), 29)
        run = SamplingRun(as_denoisers(model), mf.ModelSchedule.all_heavy(8), x, 3, "fp64", "greedy", False, 0.0)
        reveal = fast.reveal_steps(run)
        state = x.clone()
        for step in range(8):
            with torch.no_grad():
                logits = model(state, torch.full((4,), float(run.noise.sigma(run.timesteps[step].item()))))
            logits[..., 29] = -math.inf
            at = reveal == step
            state[at] = logits.argmax(-1)[at]
        assert torch.equal(state, tokens)


def test_temperatures_through_the_cli_match_sample(capsys):
    from mdlm_fast.cli.app import main
    from mdlm_fast.models.checkpoint import load_denoiser

    model = load_denoiser("embedded:light")  # the smaller embedded model, alone: the flag is what is tested
    argv = [
        "generate",
        "--heavy",
        "embedded:light",
        "--tokenizer",
        "embedded",
        "--length",
        "8",
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--seed",
        "3",
        "--judge",
        "none",
        "--dtype",
        "float32",
        "--json",
    ]
    kwargs = dict(steps=4, batch_size=2, length=8, seed=3, dtype="float32")
    seen = [mf.sample(model, **kwargs).tokens.tolist()]
    for temperature in (0.0, 0.5, 2.0):
        assert main([*argv, "--temperature", str(temperature)]) == 0
        cli = [s["tokens"] for s in json.loads(capsys.readouterr().out)["samples"]]
        assert cli == mf.sample(model, temperature=temperature, **kwargs).tokens.tolist()
        seen.append(cli)
    assert all(seen[i] != seen[j] for i in range(4) for j in range(i))


def test_noise_removal_draws_on_its_own_stream_through_a_run():
    """Positions whose reveal uniform is <= ts[T] = 1e-5 are left to noise removal. At this seed
    three of the 512 x 64 are (found by search, asserted here); ancestral noise removal draws them
    with the last step's model from p_x0 at sigma(ts[T]) on the noise-removal stream, greedy takes
    the argmax, and every other token is the same in both runs."""
    batch, length, seed = 512, 64, 37
    heavy, light = (
        spread_dit(1, 0, vocab=50, length=length, scale=0.1),
        spread_dit(1, 1, vocab=50, length=length, scale=0.1),
    )
    u = ops.philox_noise(position_grid(batch, length, torch.device("cpu")), seed, ops.PURPOSE_REVEAL, 1)[:, 0]
    left = torch.nonzero(u <= 1e-5).flatten()
    assert len(left) == 3
    rows, positions = left // length, left % length
    kwargs = dict(steps=2, schedule="H1-L1", batch_size=batch, length=length, seed=seed)
    ancestral = mf.sample([heavy, light], noise_removal="ancestral", **kwargs).tokens
    greedy = mf.sample([heavy, light], **kwargs).tokens
    keep = torch.ones_like(greedy, dtype=torch.bool)
    keep[rows, positions] = False
    assert torch.equal(ancestral[keep], greedy[keep])
    before = greedy[rows].clone()
    before[torch.arange(3), positions] = 49
    with torch.no_grad():
        hidden = light.trunk(before, torch.full((3,), -math.log1p(-(1 - 1e-3) * 1e-5)))[torch.arange(3), positions]
    keys = torch.stack([torch.full_like(rows, 2), rows, positions], 1)  # (step T, row, position)

    def draw(purpose=ops.PURPOSE_NOISE_REMOVAL, temperature=1.0):
        return ops.fused_head_sample(
            hidden,
            light.head_weight,
            light.head_bias,
            keys,
            seed=seed,
            purpose=purpose,
            temperature=temperature,
            banned=torch.tensor([49]),
        )[0]

    assert torch.equal(ancestral[rows, positions], draw())
    assert torch.equal(greedy[rows, positions], draw(temperature=0.0))
    assert not torch.equal(draw(ops.PURPOSE_TOKEN), draw())  # the streams differ here: the check can fail


@pytest.mark.parametrize(
    "spec,steps,expected",
    [
        # one centered block, odd slack: the spare step goes after the block (start + floor(slack / 2))
        ("middle:0.3", 10, "H3-L3-H4"),
        ("middle:0.2", 11, "H4-L2-H5"),
        ("middle:0.4", 9, "H2-L4-H3"),
        # quarters of 10 steps are 3, 3, 2, 2: a 2-step block in a 3-step quarter has slack 1
        ("q1:0.2", 10, "L2-H8"),
        ("q2:0.2", 10, "H3-L2-H5"),
        ("q3:0.1", 10, "H6-L1-H3"),
        ("q4:0.1", 10, "H8-L1-H1"),
        ("q4:0.1", 11, "H9-L1-H1"),
        # sandwich with an odd count: the extra step at the start
        ("sandwich:0.3", 10, "L2-H7-L1"),
        # segments of 11 steps in 4: 3, 3, 3, 2; of 10 in 3: 4, 3, 3; of 7 in 2: 4, 3
        ("segments/4:1,3", 11, "H3-L3-H3-L2"),
        ("segments/3:1", 10, "H4-L3-H3"),
        ("segments/2:1", 7, "H4-L3"),
    ],
)
def test_placements_and_segments_with_odd_slack(spec, steps, expected):
    assert mf.ModelSchedule.parse(spec, steps).to_spec() == expected


@pytest.mark.parametrize("time_conditioning", [True, False])
def test_mdlm_sampler_reuses_p_x0_only_for_models_without_time_conditioning(time_conditioning):
    """One position, eight steps: most steps reveal nothing, so MDLM's cache would hold p_x0 across
    them, which is only right when the model ignores sigma."""
    recorder = Recorder()
    table = TimeTable(0, length=1)
    model = mf.Denoiser(
        lambda x, s: (recorder.record(0, s), table(x, s))[1],
        vocab_size=VOCAB,
        mask_index=MASK,
        time_conditioning=time_conditioning,
    )
    mf.sample(model, steps=8, batch_size=1, length=1, sampler="mdlm", seed=0)
    sigmas = [s for _, s in recorder.calls]
    if time_conditioning:
        expected = [_grid_sigma(8, i) for i in range(9)]
        torch.testing.assert_close(torch.tensor(sigmas), torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0)
    else:
        assert len(sigmas) < 9

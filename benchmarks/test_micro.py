"""pytest-benchmark micro-benchmarks, outside the default test run (testpaths is tests/): the fused
head against the matmul it replaces at N = 1, 8, 64 rows, the Philox noise op, and one fast-sampler
step of each embedded model. A regression shows against a saved run:

  python -m pytest benchmarks/test_micro.py --benchmark-autosave             # save a baseline
  python -m pytest benchmarks/test_micro.py --benchmark-compare --benchmark-compare-fail=median:15%

The paper-style tables come from the standalone scripts (bench_head.py, bench_sampler.py).
"""

import pytest
import torch

pytest.importorskip("pytest_benchmark", reason="needs pytest-benchmark: pip install -e .[test]")

import mdlm_fast as mf  # noqa: E402
from mdlm_fast.models.denoiser import as_denoisers  # noqa: E402
from mdlm_fast.ops import compiled as ops  # noqa: E402
from mdlm_fast.sampling import fast  # noqa: E402
from mdlm_fast.sampling.run import SamplingRun  # noqa: E402

V, D = 50258, 768  # GPT-2's vocabulary and mdlm-owt's width: a head of 154 MB in fp32


@pytest.fixture(scope="module")
def weight():
    return torch.randn(V, D, generator=torch.Generator().manual_seed(0)) * 0.02


def _keys(n):
    return torch.stack([torch.zeros(n, dtype=torch.int64), torch.arange(n), torch.zeros(n, dtype=torch.int64)], 1)


def _hidden(n):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("n", [1, 8, 64])
def test_fused_head(benchmark, weight, n):
    benchmark.group = f"head N={n}"
    hidden, keys = _hidden(n), _keys(n)
    tokens, _ = benchmark(ops.fused_head_sample, hidden, weight, None, keys, seed=0)
    assert tokens.shape == (n,)


@pytest.mark.parametrize("n", [1, 8, 64])
def test_matmul(benchmark, weight, n):
    benchmark.group = f"head N={n}"
    logits = benchmark(torch.matmul, _hidden(n), weight.T)
    assert logits.shape == (n, V)


@pytest.mark.parametrize(
    "n,width,dist", [(65536, 1, "uniform"), (64, 8193, "gumbel")], ids=["reveal-uniforms", "gumbel-rows"]
)
def test_philox_noise(benchmark, n, width, dist):
    benchmark.group = "philox_noise"
    noise = benchmark(ops.philox_noise, _keys(n), 0, ops.PURPOSE_TOKEN, width, dist)
    assert noise.shape == (n, width)


@pytest.mark.parametrize("which", ["heavy", "light"])
def test_fast_sampler_step(benchmark, which):
    """One step from the middle of a 64-step run, batch 4 x 256: the trunk on the active rows, the
    last block and the fused head at the ~16 positions the step reveals."""
    benchmark.group = "fast sampler step"
    model = mf.load_denoiser(f"embedded:{which}").eval()
    steps, batch, length = 64, 4, model.config.model_length
    x = torch.full((batch, length), model.config.mask_index)
    run = SamplingRun(as_denoisers(model), mf.ModelSchedule.all_heavy(steps), x, 0, "fp64", "greedy", False, 1.0)
    plans, _ = fast.build_plan(fast.reveal_steps(run).cpu(), steps, x.device)
    plan = plans[len(plans) // 2]
    # the state a mid-run step sees: the positions revealed earlier hold tokens
    x = torch.where(fast.reveal_steps(run) < plan.step, torch.randint(0, model.config.mask_index, x.shape), x)
    t = run.timesteps[plan.step].item()
    with torch.inference_mode():
        benchmark(fast._reveal, run, x.clone(), plan, 0, t, 1.0, ops.PURPOSE_TOKEN)
    assert plan.n_positions > 0

"""pytest-benchmark microbenchmarks of the vocabulary head (kept out of the default test run).

  python -m pytest benchmarks/ --benchmark-only
"""
import pytest
import torch

from mdlm_fast.ops import compiled as ops

V, D = 50258, 768


@pytest.fixture(scope="module")
def weight():
    return torch.randn(V, D, generator=torch.Generator().manual_seed(0)) * 0.02


def _inputs(n):
    hidden = torch.randn(n, D, generator=torch.Generator().manual_seed(n))
    keys = torch.stack([torch.zeros(n, dtype=torch.int64), torch.arange(n), torch.zeros(n, dtype=torch.int64)], 1)
    return hidden, keys


@pytest.mark.parametrize("n", [1, 16, 64])
def test_fused_head(benchmark, weight, n):
    hidden, keys = _inputs(n)
    tokens, _ = benchmark(ops.fused_head_sample, hidden, weight, None, keys, seed=0)
    assert tokens.shape == (n,)


@pytest.mark.parametrize("n", [1, 16, 64])
def test_matmul(benchmark, weight, n):
    hidden, _ = _inputs(n)
    logits = benchmark(torch.matmul, hidden, weight.T)
    assert logits.shape == (n, V)

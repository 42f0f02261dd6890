"""The CPU fused head's small-N projection (N <= 8 rows, fp32 and bf16 W, AVX-512 where present):
bit-exact against reference.py on exact-logit inputs at every N and at widths that leave a
remainder of the 16- and 32-column vector steps, and the same tokens whatever the thread count."""

import pytest
import torch

from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops import reference


def _exact(n, d, vocab, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randint(-4, 5, (n, d), generator=g).float() / 4).to(dtype)
    weight = (torch.randint(-4, 5, (vocab, d), generator=g).float() / 8).to(dtype)
    bias = (torch.randint(-8, 9, (vocab,), generator=g).float() / 4).to(dtype)
    keys = torch.stack([torch.full((n,), 2), torch.arange(n), torch.arange(n) * 3], 1)
    return hidden, weight, bias, keys


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", range(1, 10))
@pytest.mark.parametrize("d", [24, 47, 768])
def test_small_n_is_bit_exact(dtype, n, d):
    vocab = 3001 if d == 768 else 5003
    hidden, weight, bias, keys = _exact(n, d, vocab, dtype, seed=n * 100 + d)
    banned = torch.tensor([vocab - 1])
    for temperature in (1.0, 0.0):
        got, got_lp = ops.fused_head_sample(
            hidden, weight, bias, keys, seed=7, temperature=temperature, banned=banned, return_logprob=True
        )
        want, want_lp = reference.fused_head_sample(hidden, weight, bias, keys, 7, 2, temperature, banned, True)
        assert torch.equal(got, want)
        torch.testing.assert_close(got_lp, want_lp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_small_n_same_tokens_whatever_the_thread_count(dtype):
    hidden, weight, bias, keys = _exact(6, 64, 20011, dtype, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = ops.fused_head_sample(hidden, weight, bias, keys, seed=1)
        torch.set_num_threads(2)
        two, _ = ops.fused_head_sample(hidden, weight, bias, keys, seed=1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_small_n_strided_weight_rows():
    hidden, weight, bias, keys = _exact(3, 40, 2000, torch.float32, seed=5)
    wide = torch.zeros(2000, 56)
    wide[:, :40] = weight
    view = wide[:, :40]  # row stride 56: the kernel walks rows by the tensor's stride
    a, _ = ops.fused_head_sample(hidden, view, bias, keys, seed=2)
    b, _ = ops.fused_head_sample(hidden, weight, bias, keys, seed=2)
    assert torch.equal(a, b)

"""Per-row seeds of fused_head_sample (the engine packs rows of different requests into one call):
row i with seeds[i] draws exactly what a call with the scalar seed seeds[i] draws, on the CPU op,
the reference and the logits draw, at every temperature and on both projection paths."""

import pytest
import torch

from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops import reference
from mdlm_fast.ops.draw import sample_from_logits

SEEDS = [0, 5, 2**63 + 3, 2**64 - 1, 5, 17, 123456789, 2**40]


def _problem(n, d, vocab, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randint(-4, 5, (n, d), generator=g).float() / 4).to(dtype)
    weight = (torch.randint(-4, 5, (vocab, d), generator=g).float() / 8).to(dtype)
    bias = (torch.randint(-8, 9, (vocab,), generator=g).float() / 4).to(dtype)
    keys = torch.stack([torch.full((n,), 3), torch.arange(n) % 3, torch.arange(n) * 7 % 50], 1)
    return hidden, weight, bias, keys


def _one_by_one(fn, n, seeds):
    return torch.cat([fn(slice(i, i + 1), seeds[i]) for i in range(n)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [5, 8, 24])  # the small-N projection (<= 8 rows) and the GEMM path
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_each_row_draws_what_its_own_seed_draws(dtype, n, temperature):
    hidden, weight, bias, keys = _problem(n, 32, 2100, dtype, seed=n)
    seeds = [SEEDS[i % len(SEEDS)] for i in range(n)]
    banned = torch.tensor([7])
    got, got_lp = ops.fused_head_sample(
        hidden, weight, bias, keys, seed=99, temperature=temperature, banned=banned, return_logprob=True, seeds=seeds
    )
    alone = _one_by_one(
        lambda r, s: ops.fused_head_sample(
            hidden[r], weight, bias, keys[r], seed=s, temperature=temperature, banned=banned
        )[0],
        n,
        seeds,
    )
    assert torch.equal(got, alone)
    want, want_lp = reference.fused_head_sample(
        hidden, weight, bias, keys, 99, 2, temperature, banned, True, seeds=ops.row_seeds(seeds, n, "cpu")
    )
    assert torch.equal(got, want)
    torch.testing.assert_close(got_lp, want_lp, rtol=1e-5, atol=1e-5)
    if temperature > 0:  # the control: the scalar seed alone draws other tokens
        scalar, _ = ops.fused_head_sample(hidden, weight, bias, keys, seed=99, temperature=temperature, banned=banned)
        assert not torch.equal(scalar, got)


def test_the_logits_draw_takes_per_row_seeds():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 1500, generator=g)
    logits[4, 11] = float("inf")  # a +inf row goes its own way; the others keep their seeds
    keys = torch.stack([torch.zeros(9, dtype=torch.int64), torch.arange(9), torch.arange(9)], 1)
    seeds = [SEEDS[i % len(SEEDS)] for i in range(9)]
    banned = torch.tensor([0])
    got, _ = sample_from_logits(logits, keys, 0, 2, 1.0, banned, False, seeds=seeds)
    alone = _one_by_one(lambda r, s: sample_from_logits(logits[r], keys[r], s, 2, 1.0, banned, False)[0], 9, seeds)
    assert torch.equal(got, alone) and int(got[4]) == 11


def test_bad_seeds_are_named():
    hidden, weight, bias, keys = _problem(3, 8, 50, torch.float32)
    for seeds, error in [
        ([1, 2], ValueError),
        ([1, 2, -1], ValueError),
        (torch.tensor([1, 2]), ValueError),
        (torch.tensor([1.0, 2.0, 3.0]), ValueError),
    ]:
        with pytest.raises(error, match="seed"):
            ops.fused_head_sample(hidden, weight, bias, keys, seed=0, seeds=seeds)
    for bad in (torch.zeros(2, dtype=torch.int64), torch.zeros(3, 1, dtype=torch.int64), torch.zeros(3)):
        with pytest.raises(RuntimeError, match="'seeds'"):
            torch.ops.mdlm_fast.fused_head_sample(hidden, weight, bias, keys, 0, 2, 1.0, torch.tensor([0]), False, bad)


def test_opcheck_with_seeds():
    hidden, weight, bias, keys = _problem(6, 8, 1500, torch.float32)
    seeds = ops.row_seeds(SEEDS[:6], 6, "cpu")
    torch.library.opcheck(
        torch.ops.mdlm_fast.fused_head_sample.default,
        (hidden, weight, bias, keys, 3, 2, 1.0, torch.tensor([1]), True, seeds),
    )

"""fused_head_sample: bit-exact against reference.py, and correct in distribution."""

import math

import pytest
import torch

from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops import reference
from tests.helpers.stats_helpers import chi_square_p_value

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _exact_problem(n, d, vocab, dtype, device, seed=0, bias=True):
    """Inputs whose logits are exact in float32 whatever the summation order: small multiples
    of powers of two, so kernel and reference see identical logits and must draw identical ids."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-4, 5, (n, d), generator=g).float() / 4
    weight = torch.randint(-4, 5, (vocab, d), generator=g).float() / 8
    b = torch.randint(-8, 9, (vocab,), generator=g).float() / 4 if bias else None
    to = dict(device=device, dtype=dtype)
    return hidden.to(**to), weight.to(**to), None if b is None else b.to(**to)


def _keys(n, device, step=3, row_offset=0):
    rows = torch.arange(n) + row_offset
    return torch.stack([torch.full((n,), step), rows, rows * 7 % 1000], 1).to(device)


def _compare(hidden, weight, bias, keys, temperature, banned, seed=11):
    got_t, got_lp = ops.fused_head_sample(
        hidden, weight, bias, keys, seed=seed, temperature=temperature, banned=banned, return_logprob=True
    )
    want_t, want_lp = reference.fused_head_sample(
        hidden.cpu(),
        weight.cpu(),
        None if bias is None else bias.cpu(),
        keys.cpu(),
        seed,
        2,
        temperature,
        banned.cpu(),
        True,
    )
    assert got_t.dtype == torch.int64 and got_t.shape == (hidden.shape[0],)
    assert torch.equal(got_t.cpu(), want_t)
    torch.testing.assert_close(got_lp.cpu(), want_lp, rtol=1e-5, atol=1e-5)
    return got_t


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab", [7, 1009, 1024, 1025, 50258])
@pytest.mark.parametrize("temperature", [1.0, 0.0, 0.7])
def test_bit_exact_against_reference(device, dtype, vocab, temperature):
    n = 5 if vocab == 50258 else 33
    hidden, weight, bias = _exact_problem(n, 24, vocab, dtype, device)
    banned = torch.tensor([vocab - 1], device=device)
    tokens = _compare(hidden, weight, bias, _keys(n, device), temperature, banned)
    assert not (tokens == vocab - 1).any()


@pytest.mark.parametrize("use_bias", [True, False])
def test_bias_on_and_off(device, use_bias):
    hidden, weight, bias = _exact_problem(17, 8, 3000, torch.float32, device, bias=use_bias)
    _compare(hidden, weight, bias, _keys(17, device), 1.0, torch.tensor([0], device=device))


def test_empty_batch(device):
    hidden, weight, bias = _exact_problem(0, 8, 100, torch.float32, device)
    tokens, logprob = ops.fused_head_sample(hidden, weight, bias, _keys(0, device), seed=1, return_logprob=True)
    assert tokens.shape == (0,) and logprob.shape == (0,)


def test_non_contiguous_hidden_and_weight(device):
    hidden, weight, bias = _exact_problem(12, 16, 2100, torch.float32, device)
    wide = torch.zeros(12, 32, device=device)
    wide[:, ::2] = hidden
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    keys = _keys(12, device)
    a, _ = ops.fused_head_sample(strided, weight, bias, keys, seed=4)
    b, _ = ops.fused_head_sample(hidden, weight, bias, keys, seed=4)
    assert torch.equal(a, b)
    _compare(strided, weight, bias, keys, 1.0, torch.tensor([], dtype=torch.int64, device=device))


def test_same_key_same_token_whatever_the_batch(device):
    hidden, weight, bias = _exact_problem(64, 16, 4000, torch.float32, device, seed=3)
    keys = _keys(64, device)
    full, _ = ops.fused_head_sample(hidden, weight, bias, keys, seed=8)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1)).to(device)
    shuffled, _ = ops.fused_head_sample(hidden[perm], weight, bias, keys[perm], seed=8)
    assert torch.equal(shuffled, full[perm])
    for n in (1, 7, 31):
        part, _ = ops.fused_head_sample(hidden[:n], weight, bias, keys[:n], seed=8)
        assert torch.equal(part, full[:n])


def test_same_token_whatever_the_thread_count():
    hidden, weight, bias = _exact_problem(40, 16, 9000, torch.float32, "cpu", seed=5)
    keys = _keys(40, "cpu")
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(ops.fused_head_sample(hidden, weight, bias, keys, seed=2)[0])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(r, results[0]) for r in results)


def _designed_distribution(vocab, device, dtype=torch.float32):
    """One hidden row whose logits put mass across several chunks, with a long low-probability tail."""
    d = 4
    weight = torch.zeros(vocab, d)
    hidden = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    logits = torch.full((vocab,), -30.0)  # effectively zero mass ...
    logits[::97] = -7.0  # ... a tail of rare ids (each ~1e-4 of the mass) ...
    logits[[3, 1500, 2047, 2048, vocab - 2]] = torch.tensor([2.0, 1.5, 0.5, 1.0, 0.0])  # ... and a head
    weight[:, 0] = logits
    return hidden.to(device, dtype), weight.to(device, dtype), logits


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_draws_follow_the_softmax(device, temperature):
    vocab, draws = 2500, 40000
    hidden, weight, logits = _designed_distribution(vocab, device)
    banned = torch.tensor([3], device=device)  # the most likely id is banned
    keys = torch.stack(
        [torch.zeros(draws, dtype=torch.int64), torch.arange(draws), torch.zeros(draws, dtype=torch.int64)], 1
    )
    tokens, logprob = ops.fused_head_sample(
        hidden.expand(draws, -1),
        weight,
        None,
        keys.to(device),
        seed=123,
        temperature=temperature,
        banned=banned,
        return_logprob=True,
    )
    z = logits.double()
    z[3] = -math.inf
    probs = torch.softmax(z / temperature, 0)
    assert probs.max() < 0.9  # spread: a sampler stuck on the top id would fail
    counts = torch.bincount(tokens.cpu(), minlength=vocab)
    assert counts[3] == 0
    assert chi_square_p_value(counts, probs) > 1e-4
    assert chi_square_p_value(counts, torch.softmax(z / (1.2 * temperature), 0)) < 1e-6  # another temperature
    # the rare tail is drawn about as often as it should be (Poisson, 6 sigma)
    tail = torch.zeros(vocab, dtype=torch.bool)
    tail[::97] = True
    tail[[1500, 2047, 2048, vocab - 2]] = False
    expected_tail = probs[tail].sum().item() * draws
    assert abs(counts[tail].sum().item() - expected_tail) < 6 * math.sqrt(expected_tail) + 1
    torch.testing.assert_close(logprob.cpu().double(), torch.log(probs[tokens.cpu()]), rtol=1e-5, atol=1e-5)


def test_zero_probability_ids_are_never_drawn(device):
    vocab, draws = 1100, 20000
    weight = torch.zeros(vocab, 2)
    weight[:, 0] = torch.where(torch.arange(vocab) % 2 == 0, 0.0, -math.inf)  # odd ids: probability 0
    hidden = torch.tensor([[1.0, 0.0]]).expand(draws, -1)
    keys = torch.stack(
        [torch.zeros(draws, dtype=torch.int64), torch.arange(draws), torch.zeros(draws, dtype=torch.int64)], 1
    )
    tokens, _ = ops.fused_head_sample(
        hidden.to(device),
        weight.to(device),
        None,
        keys.to(device),
        seed=5,
        banned=torch.tensor([0, 1098], device=device),
    )
    tokens = tokens.cpu()
    assert (tokens % 2 == 0).all() and not (tokens == 0).any() and not (tokens == 1098).any()
    counts = torch.bincount(tokens, minlength=vocab)
    probs = torch.zeros(vocab, dtype=torch.float64)
    probs[2:1098:2] = 1.0
    probs /= probs.sum()
    assert probs.max() < 0.9
    assert chi_square_p_value(counts, probs) > 1e-4
    tilted = probs * torch.where(torch.arange(vocab) < vocab // 2, 1.25, 0.75)  # a nearby wrong law
    assert chi_square_p_value(counts, tilted / tilted.sum()) < 1e-6


def test_all_banned_row_is_an_error():
    hidden, weight, _ = _exact_problem(2, 4, 3, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="banned"):
        ops.fused_head_sample(hidden, weight, None, _keys(2, "cpu"), seed=0, banned=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(hidden=torch.zeros(2, 3, 4)), "'hidden'"),
        (dict(hidden=torch.zeros(2, 4, dtype=torch.float64)), "'hidden'"),
        (dict(weight=torch.zeros(10, 5)), "'weight'"),
        (dict(weight=torch.zeros(10, 4, dtype=torch.bfloat16)), "'weight'"),
        (dict(bias=torch.zeros(9)), "'bias'"),
        (dict(keys=torch.zeros(3, 3, dtype=torch.int64)), "'keys'"),
        (dict(temperature=-1.0), "'temperature'"),
        (dict(temperature=math.nan), "'temperature'"),
        (dict(banned=torch.tensor([10])), "'banned'"),
        (dict(banned=torch.tensor([1.0])), "'banned'"),
    ],
)
def test_bad_arguments_are_named(bad, match):
    args = dict(
        hidden=torch.zeros(2, 4),
        weight=torch.zeros(10, 4),
        bias=None,
        keys=torch.zeros(2, 3, dtype=torch.int64),
        seed=0,
        temperature=1.0,
        banned=torch.tensor([0]),
    )
    args.update(bad)
    with pytest.raises(RuntimeError, match=match):
        ops.fused_head_sample(args.pop("hidden"), args.pop("weight"), args.pop("bias"), args.pop("keys"), **args)


def test_opcheck(device):
    hidden, weight, bias = _exact_problem(6, 8, 1500, torch.float32, device)
    args = (hidden, weight, bias, _keys(6, device), 3, 2, 1.0, torch.tensor([1], device=device), True)
    torch.library.opcheck(torch.ops.mdlm_fast.fused_head_sample.default, args)

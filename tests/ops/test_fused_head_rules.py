"""fused_head_sample's rules for non-finite logits, extreme temperatures, banned ids, devices and
seeds: one behaviour in every kernel and in reference.py."""

import math

import pytest
import torch

from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops import reference

INF = math.inf


def _problem(n=4, d=3, vocab=2100, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-4, 5, (n, d), generator=g).float() / 4
    weight = torch.randint(-4, 5, (vocab, d), generator=g).float() / 8
    bias = torch.randint(-8, 9, (vocab,), generator=g).float() / 4
    keys = torch.stack([torch.full((n,), 2), torch.arange(n), torch.arange(n) * 3], 1)
    return hidden, weight, bias, keys


def _both(hidden, weight, bias, keys, device, temperature=1.0, banned=None, seed=5):
    """(op result, reference result) on the same inputs; banned defaults to none."""
    banned = torch.empty(0, dtype=torch.int64) if banned is None else banned
    got = ops.fused_head_sample(
        hidden.to(device),
        weight.to(device),
        None if bias is None else bias.to(device),
        keys.to(device),
        seed=seed,
        temperature=temperature,
        banned=banned.to(device),
        return_logprob=True,
    )
    want = reference.fused_head_sample(hidden, weight, bias, keys, seed, 2, temperature, banned, True)
    return (got[0].cpu(), got[1].cpu()), want


def _raises_alike(match, *args, **kwargs):
    """The op and reference.py refuse the same input with the same words."""
    device = kwargs.pop("device")
    with pytest.raises(RuntimeError, match=match):
        _both(*args, device=device, **kwargs)
    hidden, weight, bias, keys = args
    banned = kwargs.get("banned", torch.empty(0, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=match):
        reference.fused_head_sample(hidden, weight, bias, keys, 5, 2, kwargs.get("temperature", 1.0), banned, True)


@pytest.mark.parametrize("temperature", [1.0, 0.0, 0.5])
@pytest.mark.parametrize("where", ["weight", "hidden", "bias", "inf_times_zero"])
def test_nan_logit_is_an_error_naming_the_row(device, temperature, where):
    hidden, weight, bias, keys = _problem()
    if where == "weight":
        weight[1500, 1] = math.nan  # one NaN id poisons every row
        row = 0
    elif where == "hidden":
        hidden[2, 0] = math.nan
        row = 2
    elif where == "bias":
        bias[7] = math.nan
        row = 0
    else:
        hidden[3, 0] = INF
        weight[:, 0] = 0.0  # inf * 0 = NaN in every logit of row 3
        row = 3
    _raises_alike(rf"row {row} has a NaN logit", hidden, weight, bias, keys, device=device, temperature=temperature)


@pytest.mark.parametrize("temperature", [1.0, 0.0, 0.7])
def test_plus_inf_logit_is_taken_with_logprob_zero(device, temperature):
    hidden, weight, bias, keys = _problem(n=5)
    bias[1800] = INF  # every row's logits at 1800 are +inf ...
    bias[[1900, 2099]] = INF  # ... and later +inf ids lose to the lowest
    bias[3] = -INF
    (got_t, got_lp), (want_t, want_lp) = _both(hidden, weight, bias, keys, device, temperature)
    assert torch.equal(got_t, torch.full((5,), 1800)) and torch.equal(want_t, got_t)
    assert torch.equal(got_lp, torch.zeros(5)) and torch.equal(want_lp, got_lp)


def test_plus_inf_rows_leave_the_other_rows_alone(device):
    hidden, weight, bias, keys = _problem(n=6, d=4)
    hidden[:, 3] = 0.0
    hidden[[1, 4], 3] = 1e38
    weight[:, 3] = 0.0
    weight[700, 3] = 1e38  # an overflowing product: +inf at id 700 in rows 1 and 4 only
    (got_t, got_lp), (want_t, want_lp) = _both(hidden, weight, bias, keys, device, 1.0)
    assert torch.equal(got_t, want_t)
    assert got_t[1] == 700 and got_t[4] == 700 and got_lp[1] == 0 and got_lp[4] == 0
    torch.testing.assert_close(got_lp, want_lp, rtol=1e-5, atol=1e-5)
    plain, _ = ops.fused_head_sample(
        hidden[[0, 2, 3, 5]].to(device), weight.to(device), bias.to(device), keys[[0, 2, 3, 5]].to(device), seed=5
    )
    assert torch.equal(plain.cpu(), got_t[[0, 2, 3, 5]])


def test_minus_inf_ids_are_never_drawn(device):
    hidden, weight, bias, keys = _problem(n=64, d=2, vocab=40)
    bias[::2] = -INF
    (got_t, _), (want_t, _) = _both(hidden, weight, bias, keys, device, 1.0)
    assert torch.equal(got_t, want_t) and (got_t % 2 == 1).all()


def test_overflow_at_a_small_temperature_follows_the_plus_inf_rule(device):
    hidden, weight, bias, keys = _problem(n=3, vocab=1500)
    bias[[200, 1300]] = 1e33  # / 1e-6 overflows to +inf: the lowest such id
    (got_t, got_lp), (want_t, want_lp) = _both(hidden, weight, bias, keys, device, 1e-6)
    assert torch.equal(got_t, torch.full((3,), 200)) and torch.equal(got_t, want_t)
    assert torch.equal(got_lp, want_lp)


@pytest.mark.parametrize("temperature", [1e-38, 9.9e-7, 3.5e38, -0.0 - 1e-9, math.inf, math.nan])
def test_extreme_temperatures_are_refused_alike(temperature):
    hidden, weight, bias, keys = _problem()
    with pytest.raises(RuntimeError, match="'temperature' must be 0 \\(argmax\\) or in"):
        ops.fused_head_sample(hidden, weight, bias, keys, seed=0, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be 0 \\(argmax\\) or in"):
        reference.fused_head_sample(
            hidden, weight, bias, keys, 0, 2, temperature, torch.empty(0, dtype=torch.int64), True
        )


@pytest.mark.parametrize("temperature", [1e-6, 3.4e38])
def test_temperature_bounds_are_accepted(device, temperature):
    hidden, weight, bias, keys = _problem()
    (got_t, got_lp), (want_t, want_lp) = _both(hidden, weight, bias, keys, device, temperature)
    assert torch.equal(got_t, want_t)
    torch.testing.assert_close(got_lp, want_lp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad_id", [-1, 2100, 10**12])
@pytest.mark.parametrize("n", [0, 3])
def test_out_of_range_banned_ids_are_refused_alike(device, bad_id, n):
    hidden, weight, bias, keys = _problem(n=n)
    _raises_alike(
        rf"'banned' ids must lie in \[0, 2100\), got {bad_id}",
        hidden,
        weight,
        bias,
        keys,
        device=device,
        banned=torch.tensor([5, bad_id]),
    )


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_all_banned_row_is_refused_alike(device, temperature):
    hidden, weight, bias, keys = _problem(n=3, vocab=30)
    bias[:] = 0.0
    weight[:, :] = 0.0
    bias[[4, 9]] = -INF  # with everything else banned, nothing is left
    banned = torch.tensor([i for i in range(30) if i not in (4, 9)])
    _raises_alike(
        r"every vocabulary id of row 0 is banned or -inf",
        hidden,
        weight,
        bias,
        keys,
        device=device,
        banned=banned,
        temperature=temperature,
    )


@pytest.mark.parametrize("arg", ["weight", "bias", "keys", "banned"])
def test_a_meta_tensor_among_cpu_ones_is_refused_by_name(arg):
    hidden, weight, bias, keys = _problem()
    args = dict(hidden=hidden, weight=weight, bias=bias, keys=keys, banned=torch.tensor([1]))
    args[arg] = args[arg].to("meta")
    with pytest.raises(RuntimeError, match=f"argument '{arg}' must be on the device of 'hidden'"):
        ops.fused_head_sample(args["hidden"], args["weight"], args["bias"], args["keys"], seed=0, banned=args["banned"])
    # The raw op too (the meta tensor dispatches to the fake kernel, which must not return garbage).
    with pytest.raises(RuntimeError, match=f"'{arg}'"):
        torch.ops.mdlm_fast.fused_head_sample(
            args["hidden"], args["weight"], args["bias"], args["keys"], 0, 2, 1.0, args["banned"], True
        )


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_seed_rule_is_samples(seed):
    hidden, weight, bias, keys = _problem()
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^64\)"):
        ops.fused_head_sample(hidden, weight, bias, keys, seed=seed)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^64\)"):
        ops.philox_noise(keys, seed, 0, 4)


@pytest.mark.parametrize("seed", [0, 2**63 - 1, 2**63, 2**63 + 12345, 2**64 - 1])
def test_seeds_of_the_whole_range_match_the_reference(device, seed):
    hidden, weight, bias, keys = _problem(n=6)
    (got_t, got_lp), (want_t, want_lp) = _both(hidden, weight, bias, keys, device, 1.0, seed=seed)
    assert torch.equal(got_t, want_t)
    got = ops.philox_noise(keys.to(device), seed, 0, 5, "uniform").cpu()
    assert torch.equal(got, reference.philox_noise(keys, seed, 0, 5, "uniform"))

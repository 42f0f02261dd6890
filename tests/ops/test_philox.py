"""The counter-based RNG: known-answer vectors, kernel vs pure-PyTorch twin, key independence."""

import math

import pytest
import torch

from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops import reference

# Random123's published known-answer vectors for philox4x32 with 10 rounds (kat_vectors).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_reference_philox_known_answers(counter, key, expected):
    out = reference.philox4x32_10(torch.tensor([counter], dtype=torch.int64), key)[0]
    assert tuple(out.tolist()) == expected


# The op's streams start at block 0, so only the KAT vectors with a zero first word are reachable.
@pytest.mark.parametrize("counter,key,expected", [kat for kat in PHILOX_KAT if kat[0][0] == 0])
def test_kernel_philox_known_answers(device, counter, key, expected):
    # Counter (block, position, row, step | purpose << 24) and key = seed: choose the arguments
    # that spell the KAT counter and read the words back through the 24-bit uniforms.
    step_purpose = counter[3]
    purpose, step = step_purpose >> 24, step_purpose & 0xFFFFFF
    seed = key[0] | (key[1] << 32)
    keys = torch.tensor([[step, counter[2], counter[1]]], dtype=torch.int64, device=device)
    u = ops.philox_noise(keys, seed, purpose, 4, "uniform24").cpu()
    # uniform24 keeps the top 24 bits of each word
    assert [int(x * 2**24) for x in u[0].tolist()] == [w >> 8 for w in expected]


def _keys(n, device, step=7):
    return torch.stack([torch.full((n,), step), torch.arange(n) * 3 + 1, torch.arange(n) * 101], 1).to(device)


@pytest.mark.parametrize("dist", ["uniform", "gumbel", "uniform24"])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 64])
def test_kernel_matches_reference_bit_for_bit(device, dist, n):
    keys = _keys(9, device)
    seed = 0x1234_5678_9ABC_DEF0
    got = ops.philox_noise(keys, seed, 3, n, dist).cpu()
    want = reference.philox_noise(keys.cpu(), seed, 3, n, dist)
    assert got.dtype == want.dtype and got.shape == (9, n)
    if dist == "gumbel" and device == "cuda":
        # CUDA's double log and glibc's are each within an ulp of correct rounding, not always equal
        torch.testing.assert_close(got, want, rtol=1e-15, atol=2e-15)
    else:
        assert torch.equal(got, want)


def test_noise_depends_only_on_the_key(device):
    keys = _keys(50, device)
    full = ops.philox_noise(keys, 5, 1, 8, "uniform")
    perm = torch.randperm(50)
    shuffled = ops.philox_noise(keys[perm.to(device)], 5, 1, 8, "uniform")
    assert torch.equal(full[perm.to(device)], shuffled)
    assert torch.equal(ops.philox_noise(keys[:3], 5, 1, 8, "uniform"), full[:3])
    # a longer stream starts with the shorter one
    assert torch.equal(ops.philox_noise(keys, 5, 1, 3, "uniform"), full[:, :3])


def test_streams_differ_across_every_key_field(device):
    base = torch.tensor([[1, 2, 3]], device=device)
    draws = {
        "base": ops.philox_noise(base, 9, 1, 4, "uniform"),
        "seed": ops.philox_noise(base, 10, 1, 4, "uniform"),
        "seed_high": ops.philox_noise(base, 9 + (1 << 32), 1, 4, "uniform"),
        "purpose": ops.philox_noise(base, 9, 2, 4, "uniform"),
        "step": ops.philox_noise(base + torch.tensor([[1, 0, 0]], device=device), 9, 1, 4, "uniform"),
        "row": ops.philox_noise(base + torch.tensor([[0, 1, 0]], device=device), 9, 1, 4, "uniform"),
        "position": ops.philox_noise(base + torch.tensor([[0, 0, 1]], device=device), 9, 1, 4, "uniform"),
    }
    values = [tuple(v.cpu().flatten().tolist()) for v in draws.values()]
    assert len(set(values)) == len(values)


def test_uniforms_are_uniform_and_open(device):
    keys = _keys(2000, device)
    u = ops.philox_noise(keys, 1, 0, 50, "uniform").cpu().flatten()
    assert u.min() > 0 and u.max() < 1
    # Kolmogorov-Smirnov statistic against U(0, 1); the 1e-4 critical value is ~1.95 / sqrt(n)
    sorted_u, _ = u.sort()
    n = u.numel()
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = torch.maximum((ecdf - sorted_u).abs(), (sorted_u - (ecdf - 1 / n)).abs()).max().item()
    assert ks < 1.95 / math.sqrt(n)
    g = ops.philox_noise(keys, 1, 0, 50, "gumbel").cpu().flatten()
    assert abs(g.mean().item() - 0.5772156649) < 0.01  # Euler-Mascheroni constant
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03


def test_zero_word_pair_maps_inside_the_open_interval():
    zero = torch.zeros(1, dtype=torch.int64)
    top = torch.full((1,), 0xFFFFFFFF, dtype=torch.int64)
    assert reference.uniform53(zero, zero).item() == 2.0**-54
    assert reference.uniform53(top, top).item() == 1 - 2.0**-53


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(keys=torch.zeros(3, 2, dtype=torch.int64)), "keys"),
        (dict(keys=torch.zeros(3, 3, dtype=torch.int32)), "keys"),
        (dict(keys=torch.tensor([[1 << 24, 0, 0]])), "step"),
        (dict(purpose=256), "purpose"),
        (dict(n=-1), "'n'"),
        (dict(dist="normal"), "dist"),
    ],
)
def test_bad_arguments_are_named(bad, match):
    args = dict(keys=torch.zeros(3, 3, dtype=torch.int64), seed=0, purpose=1, n=4, dist="uniform")
    args.update(bad)
    with pytest.raises(RuntimeError, match=match):
        ops.philox_noise(**args)


def test_opcheck(device):
    keys = _keys(5, device)
    for dist in ("uniform", "gumbel", "uniform24"):
        torch.library.opcheck(torch.ops.mdlm_fast.philox_noise.default, (keys, 3, 1, 6, dist))

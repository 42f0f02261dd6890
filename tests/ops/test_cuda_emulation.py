"""The CUDA kernels (csrc/cuda/*_kernels.cu) executed on the CPU under tests/cuda_emulation,
against the CPU op: bit-identical noise, bit-identical tokens and log-probabilities on inputs
whose logits are exact, the distribution by chi-square, the non-finite rules, and every thread
order. The quick set runs by default; --emulated-full runs the whole matrix."""

import ctypes
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops.head_status import DeferredHeadErrors
from tests.helpers.paths import REPO_ROOT
from tests.helpers.stats_helpers import chi_square_p_value

sys.path.insert(0, str(REPO_ROOT / "tests" / "cuda_emulation"))
import emulator  # noqa: E402

pytestmark = pytest.mark.emulated
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ORDERS = ["forward", "reverse", "random"]


def _full(request) -> bool:
    return request.config.getoption("--emulated-full")


@pytest.fixture(scope="session")
def emu_lib():
    if emulator.compiler() is None:
        pytest.skip("g++ not found: the CUDA-on-CPU emulator needs a C++20 compiler")
    return emulator.build()


@pytest.fixture
def emu(request, emu_lib):
    emulator.DEFAULT_ORDER = request.config.getoption("--emulated-order")
    e = emulator.Emulator(emu_lib)
    yield e
    e.configure()


def _exact_problem(n, d, vocab, dtype, seed=0, bias=True):
    """Logits that are exact in float32 in any summation order (small multiples of powers of 2)."""
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randint(-4, 5, (n, d), generator=g).float() / 4).to(dtype)
    weight = (torch.randint(-4, 5, (vocab, d), generator=g).float() / 8).to(dtype)
    b = (torch.randint(-8, 9, (vocab,), generator=g).float() / 4).to(dtype) if bias else None
    return hidden, weight, b


def _keys(n, step=3):
    rows = torch.arange(n)
    return torch.stack([torch.full((n,), step), rows, rows * 7 % 1000], 1)


def _same_as_cpu(emu, hidden, weight, bias, keys, temperature, banned, seed=11):
    got_t, got_lp = emu.fused_head_sample(hidden, weight, bias, keys, seed, 2, temperature, banned, True)
    want_t, want_lp = ops.fused_head_sample(
        hidden, weight, bias, keys, seed=seed, temperature=temperature, banned=banned, return_logprob=True
    )
    assert torch.equal(got_t, want_t), (got_t != want_t).nonzero()[:5]
    if temperature in (0.0, 1.0):
        assert torch.equal(got_lp, want_lp)  # bit-identical, not merely close
    else:
        # z / temperature is no longer a short binary fraction, and expf of such arguments can
        # differ in the last bit between the host's libm (the emulated kernel) and ATen's
        # vectorized exp (the CPU op): the masses, hence the log-probabilities, by ~1 ulp.
        torch.testing.assert_close(got_lp, want_lp, rtol=2e-6, atol=2e-6)
    return got_t


# ---------------------------------------------------------------------------------------------
# philox_noise


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dist", ["uniform", "gumbel", "uniform24"])
def test_philox_noise_bit_identical(emu, order, dist):
    emu.configure(order, seed=7)
    keys = torch.stack([torch.arange(70) % 5, torch.arange(70), torch.arange(70) * 3 + 1], 1)
    for n in (0, 1, 5, 8, 333):
        for seed in (0, 2**64 - 1):
            assert torch.equal(emu.philox_noise(keys, seed, 4, n, dist), ops.philox_noise(keys, seed, 4, n, dist))


# ---------------------------------------------------------------------------------------------
# fused_head_sample: bit-identical to the CPU op

QUICK_CASES = [  # (n, d, vocab, temperature, bias, banned)
    (1, 24, 7, 1.0, True, [6]),
    (33, 13, 1025, 1.0, True, [0, 1024, 5, 5]),
    (32, 67, 2100, 0.0, True, [3]),
    (31, 24, 1024, 0.7, False, []),
]
FULL_CASES = [
    (n, d, vocab, t, b, banned)
    for n, d, vocab, t, b, banned in itertools.product(
        [0, 1, 31, 32, 33], [1, 67], [7, 1025, 3000], [1.0, 0.0, 0.7], [True, False], [[], [2, 6]]
    )
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_head_quick_matrix(emu, dtype):
    for n, d, vocab, t, b, banned in QUICK_CASES:
        hidden, weight, bias = _exact_problem(n, d, vocab, dtype, bias=b)
        tokens = _same_as_cpu(emu, hidden, weight, bias, _keys(n), t, torch.tensor(banned, dtype=torch.int64))
        assert not any(int(x) in banned for x in tokens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [3, 40])  # rows of one group and of several groups and passes
def test_per_row_seeds_as_on_the_cpu(emu, dtype, n):
    """Row i with seeds[i] draws what the CPU op draws with the same per-row seeds, which is what a
    call with the scalar seed seeds[i] draws (tests/ops/test_row_seeds.py)."""
    hidden, weight, bias = _exact_problem(n, 24, 2100, dtype, seed=n)
    seeds = ops.row_seeds([(i * 2**61 + 3 * i) % 2**64 for i in range(n)], n, "cpu")
    banned = torch.tensor([5])
    drawn = {}
    for temperature in (1.0, 0.0):
        got, _ = emu.fused_head_sample(hidden, weight, bias, _keys(n), 11, 2, temperature, banned, False, seeds=seeds)
        want, _ = ops.fused_head_sample(
            hidden, weight, bias, _keys(n), seed=11, temperature=temperature, banned=banned, seeds=seeds
        )
        assert torch.equal(got, want)
        drawn[temperature] = got
    if n > 3:  # the control: the scalar seed alone draws other tokens
        scalar, _ = emu.fused_head_sample(hidden, weight, bias, _keys(n), 11, 2, 1.0, banned, False)
        assert not torch.equal(scalar, drawn[1.0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_head_full_matrix(request, emu, dtype):
    if not _full(request):
        pytest.skip("full emulated matrix: pass --emulated-full")
    for i, (n, d, vocab, t, b, banned) in enumerate(FULL_CASES):
        emu.configure(ORDERS[i % 3], seed=i)
        hidden, weight, bias = _exact_problem(n, d, vocab, dtype, seed=i, bias=b)
        _same_as_cpu(emu, hidden, weight, bias, _keys(n), t, torch.tensor(banned, dtype=torch.int64))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpt2_vocabulary(request, emu, dtype):
    n = 5 if _full(request) else 1
    hidden, weight, bias = _exact_problem(n, 24, 50258, dtype, seed=2)
    _same_as_cpu(emu, hidden, weight, bias, _keys(n), 1.0, torch.tensor([50257]))


def test_more_rows_than_one_pass(request, emu):
    n = 2049 if not _full(request) else 4200  # passes of 2048 rows
    hidden, weight, bias = _exact_problem(n, 8, 7, torch.float32, seed=4)
    _same_as_cpu(emu, hidden, weight, bias, _keys(n), 1.0, torch.tensor([1]))
    if _full(request):
        hidden, weight, bias = _exact_problem(n, 16, 30, torch.bfloat16, seed=5)
        _same_as_cpu(emu, hidden, weight, bias, _keys(n), 0.5, torch.tensor([1]))


# The split grid (rows_pad <= 64): 128-id slice blocks. Before sm_90 their logits go through the
# workspace, then one warp per (row, chunk); on sm_90 the 8 slices of a chunk are a cluster that
# combines them in distributed shared memory. Vocabularies just below / above a multiple of the 128-id slice and of the
# 1024-id chunk; N around the 8-row n-tile and the 64-row limit of the split (65: the chunk grid).
SPLIT_QUICK = [(1, 20, 1153, 1.0), (7, 20, 1151, 0.0), (9, 33, 2049, 1.0), (64, 16, 1025, 0.7), (65, 16, 1023, 1.0)]
SPLIT_FULL = list(itertools.product([1, 7, 8, 9, 64, 65], [20], [127, 129, 1151, 1153, 2047, 2049], [1.0, 0.0]))


@pytest.mark.parametrize("major", [8, 9], ids=["workspace-sm80", "cluster-sm90"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_grid_matches_the_cpu(request, emu, dtype, major):
    cases = SPLIT_FULL if _full(request) else SPLIT_QUICK
    if dtype == torch.float16 and not _full(request):
        cases = cases[:2]
    for i, (n, d, vocab, t) in enumerate(cases):
        emu.configure(ORDERS[i % 3], seed=i, major=major)
        hidden, weight, bias = _exact_problem(n, d, vocab, dtype, seed=20 + i)
        banned = torch.tensor(sorted({0, 127, 128, vocab - 1} & set(range(vocab))))  # ids at slice edges
        tokens = _same_as_cpu(emu, hidden, weight, bias, _keys(n), t, banned)
        assert not any(int(x) in banned.tolist() for x in tokens)


def test_split_grid_geometry(emu):
    # N <= 64: slices of 128 ids, >= 2 blocks per SM of an H100 (132 SMs) at V = 50258. sm_80: the
    # slices, the summaries, the select; sm_90: clusters of 8 slices (50 chunks x 8), the select.
    # N = 65: one 1024-id chunk block per 32-row group on both.
    for dtype, mma in [(torch.bfloat16, "mma_kernel<Bf16Tag"), (torch.float32, "simt_kernel<")]:
        for n in (1, 8, 64):
            groups = 2 if n == 64 else 1
            sm80 = emu.geometry(dtype, n, 768, 50258, major=8)
            names = [name for name, _, _ in sm80]
            assert names[0].startswith("pack_hidden_kernel") and names[1].startswith("slice_" + mma), names
            assert names[2:] == ["chunk_summary_kernel", "select_kernel"]
            assert sm80[1][1] == 393 * groups >= 2 * 132
            sm90 = emu.geometry(dtype, n, 768, 50258, major=9)
            names = [name for name, _, _ in sm90]
            assert names[1].startswith("cluster_" + mma) and names[2:] == ["select_kernel"], names
            assert sm90[1][1] == 50 * 8 * groups >= 2 * 132
        for major in (8, 9):
            chunk = emu.geometry(dtype, 65, 768, 50258, major=major)[1]
            assert chunk[0].startswith("chunk_") and chunk[1] == 50 * 3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_misaligned_and_strided_views(emu, dtype):
    hidden, weight, bias = _exact_problem(9, 40, 1100, dtype, seed=6)
    big_w = torch.zeros(1101, 41, dtype=dtype)
    big_w[1:, 1:] = weight
    misaligned_w = big_w[1:, 1:]  # row stride 41 elements, base one row and one element in
    assert misaligned_w.data_ptr() % 16 != 0
    wide_h = torch.zeros(9, 80, dtype=dtype)
    wide_h[:, ::2] = hidden
    strided_h = wide_h[:, ::2]
    transposed_h = hidden.t().contiguous().t()
    offset_bias = torch.cat([torch.zeros(1, dtype=dtype), bias])[1:]
    keys = _keys(9)
    for h, w, b in [(strided_h, misaligned_w, offset_bias), (transposed_h, weight, bias), (hidden, misaligned_w, None)]:
        _same_as_cpu(emu, h, w, b, keys, 1.0, torch.tensor([7, 1099]))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_thread_order_gives_the_same_tokens(emu, order, dtype):
    for major in (8, 9):  # the split grid through the workspace, in clusters
        emu.configure(order, seed=12345, major=major)
        for n in (33, 70):  # the split grid, the chunk grid
            hidden, weight, bias = _exact_problem(n, 29, 2100, dtype, seed=9)
            _same_as_cpu(emu, hidden, weight, bias, _keys(n), 1.0, torch.tensor([2]))


def test_small_shared_memory_devices_use_smaller_row_groups(emu):
    # 99 KB of opt-in shared memory (consumer parts): row groups of 16 instead of 32.
    emu.configure("reverse", major=8, smem_optin=101376)
    hidden, weight, bias = _exact_problem(33, 16, 1500, torch.bfloat16, seed=10)
    _same_as_cpu(emu, hidden, weight, bias, _keys(33), 1.0, torch.tensor([], dtype=torch.int64))


def test_pre_ampere_devices_refuse_bf16(emu):
    emu.configure(major=7)
    hidden, weight, bias = _exact_problem(2, 8, 50, torch.bfloat16)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidDeviceFunction"):
        emu.fused_head_sample(hidden, weight, bias, _keys(2), 0, 2, 1.0, torch.tensor([], dtype=torch.int64), False)
    hidden, weight, bias = _exact_problem(2, 8, 50, torch.float32)
    _same_as_cpu(emu, hidden, weight, bias, _keys(2), 1.0, torch.tensor([], dtype=torch.int64))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_width_hidden(emu, dtype):
    # d == 0: [V, 0] weights may have null data on CUDA; the logits are the bias.
    hidden = torch.empty(3, 0, dtype=dtype)
    weight = torch.empty(1500, 0, dtype=dtype)
    bias = (torch.arange(1500) % 7 / 4).to(dtype)
    keys = _keys(3)
    got_t, got_lp = emu.fused_head_sample(hidden, weight, bias, keys, 1, 2, 1.0, torch.tensor([6]), True)
    emu_null = emu.lib.emu_fused_head_sample  # the same call with null hidden/weight pointers
    assert got_t.shape == (3,)
    want_t, want_lp = ops.fused_head_sample(
        hidden, weight, bias, keys, seed=1, banned=torch.tensor([6]), return_logprob=True
    )
    assert torch.equal(got_t, want_t) and torch.equal(got_lp, want_lp)
    tokens = torch.empty(3, dtype=torch.int64)
    ws = emu.lib.emu_fused_head_workspace_bytes(emulator._DTYPES[dtype], 3, 0, 1500)
    raw = torch.empty(ws + 512, dtype=torch.uint8)
    off = (-raw.data_ptr()) % 512
    banned = torch.tensor([6])
    status = emu_null(
        emulator._DTYPES[dtype],
        None,
        3,
        0,
        0,
        1,
        None,
        1500,
        0,
        ctypes.c_void_p(bias.data_ptr()),
        ctypes.c_void_p(keys.data_ptr()),
        1,
        None,
        2,
        1.0,
        ctypes.c_void_p(banned.data_ptr()),
        1,
        ctypes.c_void_p(tokens.data_ptr()),
        None,
        ctypes.c_void_p(raw.data_ptr() + off),
        ws,
    )
    assert status == 0 and torch.equal(tokens, want_t)


# ---------------------------------------------------------------------------------------------
# fused_head_sample: the rules for non-finite logits and bad values, as on the CPU


def _both_raise(emu, match, hidden, weight, bias, keys, temperature=1.0, banned=None):
    banned = torch.tensor([], dtype=torch.int64) if banned is None else banned
    with pytest.raises(RuntimeError, match=match):
        ops.fused_head_sample(hidden, weight, bias, keys, seed=3, temperature=temperature, banned=banned)
    with pytest.raises(RuntimeError, match=match):
        emu.fused_head_sample(hidden, weight, bias, keys, 3, 2, temperature, banned, True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_non_finite_rules(emu, dtype, temperature):
    hidden, weight, bias = _exact_problem(4, 16, 2100, dtype, seed=1)
    keys = _keys(4)
    w = weight.clone()
    w[1500, 3] = math.nan
    _both_raise(emu, "row 0 has a NaN logit", hidden, w, bias, keys, temperature)
    h = hidden.clone()
    h[2, 5] = math.nan
    _both_raise(emu, "row 2 has a NaN logit", h, weight, bias, keys, temperature)
    b = bias.clone()
    b[[1800, 1900]] = math.inf
    b[3] = -math.inf
    got = _same_as_cpu(emu, hidden, weight, b, keys, temperature, torch.tensor([1900]))
    assert (got == 1800).all()
    allbanned = torch.arange(2100)
    _both_raise(emu, "every vocabulary id of row 0 is banned", hidden, weight, bias, keys, temperature, allbanned)
    _both_raise(
        emu,
        r"'banned' ids must lie in \[0, 2100\), got 2100",
        hidden,
        weight,
        bias,
        keys,
        temperature,
        torch.tensor([4, 2100]),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deferred_errors_surface_later_with_the_cpu_message(emu, dtype):
    # The CUDA op reads nothing back: the rows come back as the fill token and the error waits in
    # the device-side status until the run reads it.
    hidden, weight, bias = _exact_problem(5, 16, 2100, dtype, seed=1)
    keys = _keys(5)
    nan_hidden = hidden.clone()
    nan_hidden[3, 2] = math.nan
    for h, banned in [(nan_hidden, torch.tensor([4])), (hidden, torch.arange(2100)), (hidden, torch.tensor([7, 2100]))]:
        with pytest.raises(RuntimeError) as want:
            ops.fused_head_sample(h, weight, bias, keys, seed=3, banned=banned)
        deferred = DeferredHeadErrors("cpu", fill_token=2099)
        tokens, _ = emu.fused_head_sample(h, weight, bias, keys, 3, 2, 1.0, banned, True, deferred=deferred)
        assert (tokens >= 0).all()
        with pytest.raises(RuntimeError) as got:
            deferred.raise_if_any()
        assert str(got.value) == str(want.value)


def test_out_of_range_banned_is_refused_with_no_rows(emu):
    hidden, weight, bias = _exact_problem(0, 8, 100, torch.float32)
    _both_raise(emu, r"got -1", hidden, weight, bias, _keys(0), 1.0, torch.tensor([-1]))


# ---------------------------------------------------------------------------------------------
# fused_head_sample: the distribution (the CPU kernel's chi-square test, on the emulated kernel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_emulated_draws_follow_the_softmax(request, emu, dtype):
    if dtype != torch.float32 and not _full(request):
        pytest.skip("bf16 chi-square: pass --emulated-full")
    vocab = 2500 if _full(request) else 1100
    draws = 12000 if _full(request) else 1500
    logits = torch.full((vocab,), -30.0)
    logits[::37] = -3.0
    logits[[3, 500, 1023, 1024, vocab - 2]] = torch.tensor([2.0, 1.5, 0.5, 1.0, 0.0])
    weight = torch.zeros(vocab, 4)
    weight[:, 0] = logits
    hidden = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(draws, -1)
    keys = torch.stack(
        [torch.zeros(draws, dtype=torch.int64), torch.arange(draws), torch.zeros(draws, dtype=torch.int64)], 1
    )
    banned = torch.tensor([3])
    tokens, logprob = emu.fused_head_sample(hidden.to(dtype), weight.to(dtype), None, keys, 123, 2, 1.0, banned, True)
    z = weight.to(dtype)[:, 0].double()
    z[3] = -math.inf
    probs = torch.softmax(z, 0)
    assert probs.max() < 0.9  # spread: a kernel stuck on the top id would fail
    counts = torch.bincount(tokens, minlength=vocab)
    assert counts[3] == 0
    assert chi_square_p_value(counts, probs) > 1e-4
    assert chi_square_p_value(counts, torch.softmax(z / 1.5, 0)) < 1e-6  # another temperature
    torch.testing.assert_close(logprob.double(), torch.log(probs[tokens]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The emulator catches what hardware would punish


class _Selftest:
    def __init__(self, emu):
        self.emu, self.lib = emu, emu.lib

    def defect(self, which, threads=64):
        out = torch.zeros(max(threads, 64), dtype=torch.int32)
        status = self.lib.selftest_defect(which, ctypes.c_void_p(out.data_ptr()))
        fault = self.lib.emu_last_fault().decode()
        self.lib.emu_reset()
        return status, fault, out


@pytest.mark.parametrize(
    "which,match",
    [
        (0, r"__syncthreads at selftest_kernels.cu:\d+ .* is not reached by every thread"),
        (1, r"not reached by every thread of the block: thread \(5,0,0\) of block \(0,0,0\) has exited"),
        (2, r"__shfl_xor_sync at .*: lane 8 of its mask waits at __shfl_sync .* divergent code"),
        (3, r"the mask names lane 16, which the block does not have \(16 threads\)"),
        (4, r"launched with 128 threads per block, above its __launch_bounds__\(64\)"),
    ],
)
def test_defects_fail_loudly(emu, which, match):
    status, fault, _ = _Selftest(emu).defect(which)
    assert status == emulator.FAULT
    assert __import__("re").search(match, fault), fault


def test_thread_order_is_selectable(emu):
    winners = {}
    for order in ORDERS:
        emu.configure(order, seed=1)
        status, _, out = _Selftest(emu).defect(5)
        assert status == 0
        winners[order] = int(out[0])
    # The last thread to write wins: forward order ends with thread 63, reverse with thread 0.
    assert winners["forward"] == 63 and winners["reverse"] == 0


def test_block_sum_with_static_and_dynamic_shared_memory(emu):
    for order in ORDERS:
        emu.configure(order, seed=2)
        x = torch.arange(3 * 256, dtype=torch.float32) / 8
        out = torch.zeros(3)
        assert emu.lib.selftest_block_sum(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(out.data_ptr()), 3, 256) == 0
        assert torch.equal(out, x.view(3, 256).sum(1))


def test_clusters_share_shared_memory(emu):
    # 4 clusters of 4 blocks: block r reads block (r + 1) % 4 of its own cluster, in every order.
    x = torch.arange(16 * 64, dtype=torch.float32)
    peer = [(b // 4) * 4 + (b % 4 + 1) % 4 for b in range(16)]
    want = x.view(16, 64)[peer].flip(1)
    for order in ORDERS:
        emu.configure(order, seed=3)
        out = torch.zeros(16, 64)
        lib = emu.lib
        assert (
            lib.selftest_cluster_rotate(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(out.data_ptr()), 16, 64, 4) == 0
        )
        assert torch.equal(out, want)


@pytest.mark.parametrize(
    "which,match",
    [
        (
            0,
            r"cluster.sync\(\) at selftest_kernels.cu:\d+ .* is not reached by every thread of the cluster: "
            r"thread \(0,0,0\) of block \(1,0,0\) has exited",
        ),
        (1, r"map_shared_rank to block rank 2 of a cluster of 2"),
    ],
)
def test_cluster_defects_fail_loudly(emu, which, match):
    out = torch.zeros(256, dtype=torch.int32)
    assert emu.lib.selftest_cluster_defect(which, ctypes.c_void_p(out.data_ptr())) == emulator.FAULT
    fault = emu.lib.emu_last_fault().decode()
    emu.lib.emu_reset()
    assert __import__("re").search(match, fault), fault


def test_cluster_grid_must_tile_the_clusters(emu):
    out = torch.zeros(256, dtype=torch.int32)
    assert emu.lib.selftest_cluster_defect(2, ctypes.c_void_p(out.data_ptr())) == 1  # cudaErrorInvalidValue


def test_shared_memory_is_poisoned(emu):
    words = torch.zeros(32, dtype=torch.int32)
    assert emu.lib.selftest_uninitialized_shared(ctypes.c_void_p(words.data_ptr()), 32) == 0
    assert int(words[0]) == 7 and (words[1:] == -1).all()  # 0xFFFFFFFF: NaN as a float


def test_shared_memory_limits(emu):
    out = torch.zeros(32)
    sel = emu.lib.selftest_smem
    assert sel(ctypes.c_void_p(out.data_ptr()), 48 * 1024, 0) == 0
    assert sel(ctypes.c_void_p(out.data_ptr()), 48 * 1024 + 4, 0) == 9  # cudaErrorInvalidConfiguration
    assert sel(ctypes.c_void_p(out.data_ptr()), 200 * 1024, 200 * 1024) == 0
    assert sel(ctypes.c_void_p(out.data_ptr()), 232448, 232448) == 0  # sm_90: 227 KB with opt-in
    assert sel(ctypes.c_void_p(out.data_ptr()), 232448 + 4, 232448 + 4) == 1  # cudaErrorInvalidValue


def test_mma_fragments_follow_the_ptx_tables(emu):
    g = torch.Generator().manual_seed(0)
    A = (torch.randint(-8, 9, (16, 16), generator=g).float() / 4).bfloat16()
    B = (torch.randint(-8, 9, (16, 8), generator=g).float() / 4).bfloat16()
    bits = lambda t: int(t.view(torch.int16).item()) & 0xFFFF  # noqa: E731
    pack = lambda lo, hi: bits(lo) | (bits(hi) << 16)  # noqa: E731
    a = torch.zeros(32, 4, dtype=torch.int64)
    b = torch.zeros(32, 2, dtype=torch.int64)
    for lane in range(32):
        gq, t = lane >> 2, lane & 3
        a[lane] = torch.tensor(
            [
                pack(A[gq, 2 * t], A[gq, 2 * t + 1]),
                pack(A[gq + 8, 2 * t], A[gq + 8, 2 * t + 1]),
                pack(A[gq, 2 * t + 8], A[gq, 2 * t + 9]),
                pack(A[gq + 8, 2 * t + 8], A[gq + 8, 2 * t + 9]),
            ]
        )
        b[lane] = torch.tensor([pack(B[2 * t, gq], B[2 * t + 1, gq]), pack(B[2 * t + 8, gq], B[2 * t + 9, gq])])
    a32, b32 = a.to(torch.int32).contiguous(), b.to(torch.int32).contiguous()
    d = torch.zeros(32, 4)
    assert (
        emu.lib.selftest_mma_bf16(
            ctypes.c_void_p(a32.data_ptr()), ctypes.c_void_p(b32.data_ptr()), ctypes.c_void_p(d.data_ptr())
        )
        == 0
    )
    want = A.float() @ B.float()
    got = torch.zeros(16, 8)
    for lane in range(32):
        gq, t = lane >> 2, lane & 3
        got[gq, 2 * t], got[gq, 2 * t + 1], got[gq + 8, 2 * t], got[gq + 8, 2 * t + 1] = d[lane]
    assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------------
# AddressSanitizer build: out-of-bounds accesses stop the run


def _asan_runtime() -> str | None:
    cxx = emulator.compiler()
    if cxx is None:
        return None
    path = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def run_asan_check(lib: Path, mode: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        LD_PRELOAD=_asan_runtime() or "",
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, str(Path(emulator.HERE) / "asan_check.py"), str(lib), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="session")
def asan_lib():
    if emulator.compiler() is None or _asan_runtime() is None:
        pytest.skip("g++ with AddressSanitizer not found")
    return emulator.build("asan")


def test_asan_build_runs_the_kernels_cleanly(request, asan_lib):
    result = run_asan_check(asan_lib, "full" if _full(request) else "quick")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "asan_check: OK" in result.stdout


def test_asan_build_catches_a_shared_memory_overrun(asan_lib):
    result = run_asan_check(asan_lib, "overrun")
    assert result.returncode != 0 and "AddressSanitizer" in result.stderr, result.stderr[-2000:]

"""The CUDA fused head's value errors without a host sync: head_status / DeferredHeadErrors (run on
the CPU and on meta tensors, which cannot be read), a CPU stand-in of the CUDA op inside the fast
sampler, and the CUDA adapter's source."""

import contextlib
import re

import pytest
import torch

import mdlm_fast as mf
from mdlm_fast.ops import compiled as ops
from mdlm_fast.ops.head_status import (
    BANNED_OUT_OF_RANGE,
    EMPTY_ROW,
    EMPTY_ROW_TOKEN,
    NAN_ROW,
    NAN_ROW_TOKEN,
    OK,
    DeferredHeadErrors,
    head_status,
    raise_head_status,
)
from mdlm_fast.sampling import fast as fast_sampler
from mdlm_fast.sampling.run import NonFiniteForwardError
from tests.helpers.paths import REPO_ROOT

CALLS: list[bool] = []  # per stand-in call: whether its errors were deferred
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero")


@contextlib.contextmanager
def no_host_reads():
    """Every Tensor method that copies values to the host raises inside this block."""
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name}() read a value back to the host (a device sync on CUDA)")

        return method

    try:
        for name in READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def test_the_status_never_reads_a_value():
    # Meta tensors have no values: any read back would raise.
    tokens = torch.empty(7, dtype=torch.int64, device="meta")
    banned = torch.empty(3, dtype=torch.int64, device="meta")
    status = head_status(tokens, banned, 50)
    assert status.shape == (2,) and status.device.type == "meta"
    deferred = DeferredHeadErrors("meta", fill_token=49)
    out = deferred.record(tokens, banned, 50)
    assert out.shape == (7,) and deferred.status.device.type == "meta"
    with no_host_reads():  # and on real tensors, with every host read refused
        deferred = DeferredHeadErrors("cpu", fill_token=49)
        deferred.record(torch.tensor([3, NAN_ROW_TOKEN, 5]), torch.tensor([49]), 50)
        head_status(torch.tensor([1, 2]), torch.tensor([60]), 50)
    with pytest.raises(AssertionError, match="read a value back"), no_host_reads():
        raise_head_status(torch.zeros(2, dtype=torch.int64), 50)


@pytest.mark.parametrize(
    "tokens,banned,want",
    [
        ([3, 4, 5], [2], (OK, 0)),
        ([], [], (OK, 0)),
        ([3, EMPTY_ROW_TOKEN, NAN_ROW_TOKEN], [2], (EMPTY_ROW, 1)),
        ([3, NAN_ROW_TOKEN, EMPTY_ROW_TOKEN], [], (NAN_ROW, 1)),
        ([NAN_ROW_TOKEN], [7, 50, -1], (BANNED_OUT_OF_RANGE, 50)),  # banned ids first, as the CPU kernel checks
        ([], [-3], (BANNED_OUT_OF_RANGE, -3)),
    ],
)
def test_status_codes(tokens, banned, want):
    status = head_status(torch.tensor(tokens, dtype=torch.int64), torch.tensor(banned, dtype=torch.int64), 50)
    assert tuple(status.tolist()) == want


def _cpu_error(hidden, weight, bias, keys, banned) -> str:
    with pytest.raises(RuntimeError) as info:
        ops.fused_head_sample(hidden, weight, bias, keys, seed=1, banned=banned)
    return str(info.value)


def _coded_stand_in(
    hidden, weight, bias, keys, *, seed, purpose=2, temperature=1.0, banned=None, return_logprob=False, deferred=None
):
    """What the CUDA op returns, built from the CPU op (rows are independent): code tokens for rows
    that cannot be drawn, out-of-range banned ids ignored; then the wrapper's CUDA branch, with
    every host read refused when the errors are deferred."""
    CALLS.append(deferred is not None)
    vocab = weight.shape[0]
    usable = banned[(banned >= 0) & (banned < vocab)]
    tokens = torch.empty(hidden.shape[0], dtype=torch.int64)
    for i in range(hidden.shape[0]):
        try:
            tokens[i] = ops.fused_head_sample(
                hidden[i : i + 1],
                weight,
                bias,
                keys[i : i + 1],
                seed=seed,
                purpose=purpose,
                temperature=temperature,
                banned=usable,
            )[0][0]
        except RuntimeError as e:
            tokens[i] = NAN_ROW_TOKEN if "NaN" in str(e) else EMPTY_ROW_TOKEN
    with no_host_reads() if deferred is not None else contextlib.nullcontext():  # undeferred: one read, by design
        tokens = ops.finish_coded_call(tokens, banned, vocab, deferred)
    return tokens, None


def _problem():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(4, 8, generator=g), torch.randn(30, 8, generator=g)
    keys = torch.stack([torch.zeros(4, dtype=torch.int64), torch.arange(4), torch.arange(4)], 1)
    return hidden, weight, keys


def test_deferred_errors_carry_the_cpu_message():
    hidden, weight, keys = _problem()
    nan_hidden = hidden.clone()
    nan_hidden[2, 1] = float("nan")
    minus_inf = torch.zeros(30)
    minus_inf[:] = float("-inf")
    cases = [
        (nan_hidden, None, torch.tensor([0])),
        (hidden, minus_inf, torch.tensor([0])),
        (hidden, None, torch.tensor([5, 30])),
    ]
    for h, bias, banned in cases:
        want = _cpu_error(h, weight, bias, keys, banned)
        deferred = DeferredHeadErrors("cpu", fill_token=29)
        tokens, _ = _coded_stand_in(h, weight, bias, keys, seed=1, banned=banned, deferred=deferred)
        assert (tokens >= 0).all()  # code tokens replaced: the loop can embed every id
        deferred.record(torch.tensor([NAN_ROW_TOKEN]), torch.tensor([0]), 30)  # a later failure is not the first
        with pytest.raises(RuntimeError) as info:
            deferred.raise_if_any()
        assert str(info.value) == want
        with pytest.raises(RuntimeError) as info:  # undeferred: raised at the call, same words
            _coded_stand_in(h, weight, bias, keys, seed=1, banned=banned)
        assert str(info.value) == want


def tiny_dit(seed):
    config = mf.DiTConfig(hidden_dim=16, n_heads=2, n_blocks=1, cond_dim=8, vocab_size=20, model_length=8)
    return mf.DiT(config).init_random_(seed, std=0.5).eval()


class _CodedOps:
    """fast.py's `ops` with the CUDA op's behaviour (codes, no read back) in place of the CPU op's."""

    def __getattr__(self, name):
        return _coded_stand_in if name == "fused_head_sample" else getattr(ops, name)


def test_the_fast_sampler_reads_head_errors_only_at_its_end(monkeypatch):
    model = tiny_dit(0)
    want = mf.sample(model, steps=6, batch_size=3, sampler="fast", seed=1)
    monkeypatch.setattr(fast_sampler, "ops", _CodedOps())
    CALLS.clear()
    got = mf.sample(model, steps=6, batch_size=3, sampler="fast", seed=1)
    assert CALLS and all(CALLS)  # every head call went through the stand-in, deferred
    assert torch.equal(got.tokens, want.tokens)
    assert got.stats.host_syncs == want.stats.host_syncs == 1
    with torch.no_grad():
        model.head_weight[3] = float("nan")
    model.refresh_constants()
    with pytest.raises(NonFiniteForwardError, match="model 0 at step 0 of 6 .*output layer's weights"):
        mf.sample(model, steps=6, batch_size=3, sampler="fast", seed=1)


def test_the_cuda_adapter_reads_nothing_back():
    source = (REPO_ROOT / "csrc" / "cuda" / "fused_head_sample_cuda.cu").read_text()
    code = re.sub(r"//[^\n]*", "", source)
    for call in (
        ".cpu()",
        ".item<",
        ".to(at::kCPU",
        "cudaMemcpy(",
        "cudaDeviceSynchronize",
        "cudaStreamSynchronize",
        ".nonzero()",
        "_local_scalar_dense",
    ):
        assert call not in code, f"fused_head_sample_cuda.cu calls {call}: a device sync per call"

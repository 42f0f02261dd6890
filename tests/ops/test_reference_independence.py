"""The oracle is independent of what it checks: ops/reference.py runs no compiled mdlm_fast operator,
and an ``embedded:`` name that does not exist is refused the same way by every loader."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mdlm_fast.ops import compiled, reference


class _RecordOps(TorchDispatchMode):
    """Records the namespace of every operator dispatched inside the mode."""

    def __init__(self):
        super().__init__()
        self.namespaces: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.namespaces.add(func.namespace)
        return func(*args, **(kwargs or {}))


def _inputs():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(5, 16, generator=g), torch.randn(2100, 16, generator=g)
    keys = torch.tensor([[3, r, 2 * r] for r in range(5)], dtype=torch.int64)
    return hidden, weight, keys


def test_the_reference_runs_no_compiled_op_and_matches_the_kernel():
    hidden, weight, keys = _inputs()
    banned = torch.empty(0, dtype=torch.int64)
    with _RecordOps() as seen:
        ref_tokens, _ = reference.fused_head_sample(
            hidden, weight, None, keys, 7, compiled.PURPOSE_TOKEN, 1.0, banned, False
        )
        ref_noise = reference.philox_noise(keys, 7, compiled.PURPOSE_REVEAL, 3, "gumbel")
    assert "mdlm_fast" not in seen.namespaces and "aten" in seen.namespaces
    tokens, _ = compiled.fused_head_sample(hidden, weight, None, keys, seed=7, purpose=compiled.PURPOSE_TOKEN)
    assert torch.equal(tokens, ref_tokens)
    assert torch.equal(compiled.philox_noise(keys, 7, compiled.PURPOSE_REVEAL, 3, "gumbel"), ref_noise)


def test_the_recorder_sees_a_compiled_op():
    """The check above can fail: the same recorder sees the compiled op when it runs."""
    hidden, weight, keys = _inputs()
    with _RecordOps() as seen:
        compiled.fused_head_sample(hidden, weight, None, keys, seed=7)
    assert "mdlm_fast" in seen.namespaces


@pytest.mark.parametrize(
    "kind, call",
    [
        ("model", lambda: __import__("mdlm_fast").load_denoiser("embedded:huge")),
        ("tokenizer", lambda: __import__("mdlm_fast").load_tokenizer("embedded:huge")),
        ("judge", lambda: __import__("mdlm_fast").load_judge("embedded:huge")),
        ("text", lambda: __import__("mdlm_fast.text.data", fromlist=["read_text"]).read_text("embedded:huge")),
    ],
)
def test_an_unknown_embedded_name_lists_the_names_of_its_kind(kind, call):
    from mdlm_fast.models.embedded import specs

    with pytest.raises((ValueError, FileNotFoundError)) as info:
        call()
    message = str(info.value)
    assert f"no embedded {kind} 'huge'" in message
    assert all(spec in message for spec in specs(kind))

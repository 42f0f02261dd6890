"""fused_head_sample's value errors on devices that report them in the tokens, read without a sync.

The CPU kernel raises its value errors (a banned id outside [0, V), a row with a NaN logit, a row
with every id banned or -inf) before it returns. The CUDA kernels cannot raise without waiting for
the device, so the CUDA op never reads a value back: a row it cannot draw from gets a code token
(EMPTY_ROW_TOKEN, NAN_ROW_TOKEN, as csrc/cuda/fused_head_sample_kernels.cuh) and out-of-range
banned ids match nothing. ``head_status`` turns one call's result into a two-number status on the
device (no host sync); ``raise_head_status`` reads it back and raises the CPU kernel's own error.
A sampling run collects the statuses of its calls in ``DeferredHeadErrors`` and reads them once,
at its end, where it syncs anyway.
"""

from __future__ import annotations

import torch

# Token codes of rows the CUDA kernels could not draw from: mirror fused_head_sample_kernels.cuh.
EMPTY_ROW_TOKEN = -1
NAN_ROW_TOKEN = -2

# Status codes, in the CPU kernel's order of checks: banned ids first, then the first bad row.
OK = 0
BANNED_OUT_OF_RANGE = 1
NAN_ROW = 2
EMPTY_ROW = 3


def head_status(tokens: torch.Tensor, banned: torch.Tensor, vocab: int) -> torch.Tensor:
    """int64 [2] on the tokens' device: (code, detail) -- detail is the first out-of-range banned id
    or the first bad row. Only device operations: no host sync."""
    device = tokens.device
    bad = (banned < 0) | (banned >= vocab)
    # A sentinel True at the end: argmax of the padded mask is the first hit, or the sentinel.
    # (Indices stay 1-element tensors: indexing with a 0-d tensor reads it back to the host.)
    first_bad = torch.cat([bad, bad.new_ones(1)]).to(torch.uint8).argmax().view(1)
    bad_id = torch.cat([banned.to(device), banned.new_zeros(1, device=device)]).index_select(0, first_bad)
    coded = tokens < 0
    first_row = torch.cat([coded, coded.new_ones(1)]).to(torch.uint8).argmax().view(1)
    row_code = torch.cat([tokens, tokens.new_zeros(1)]).index_select(0, first_row)
    row_status = torch.where(row_code == NAN_ROW_TOKEN, NAN_ROW, torch.where(row_code < 0, EMPTY_ROW, OK))
    code = torch.where(first_bad < bad.numel(), BANNED_OUT_OF_RANGE, row_status)
    detail = torch.where(code == BANNED_OUT_OF_RANGE, bad_id, torch.where(code == OK, 0, first_row))
    return torch.cat([code, detail]).to(torch.int64)


def raise_head_status(status: torch.Tensor, vocab: int) -> None:
    """Reads a head_status back (one device->host copy) and raises the CPU kernel's error, if any."""
    code, detail = status.tolist()
    if code == BANNED_OUT_OF_RANGE:
        raise RuntimeError(f"mdlm_fast: argument 'banned' ids must lie in [0, {vocab}), got {detail}")
    if code == NAN_ROW:
        raise RuntimeError(
            f"mdlm_fast: fused_head_sample: row {detail} has a NaN logit "
            f"(NaN or inf * 0 in 'hidden', 'weight' or 'bias'); nothing can be drawn"
        )
    if code == EMPTY_ROW:
        raise RuntimeError(
            f"mdlm_fast: fused_head_sample: every vocabulary id of row {detail} is banned or -inf; nothing can be drawn"
        )


class DeferredHeadErrors:
    """The first failing fused_head_sample call of a run, kept on the device until the run's end.

    record() returns the tokens with code tokens replaced by ``fill_token`` (an id the models can
    embed, e.g. the mask id), so the loop runs on to its end without reading anything back."""

    def __init__(self, device: torch.device | str, fill_token: int):
        self.fill_token = int(fill_token)
        self.status = torch.zeros(3, dtype=torch.int64, device=device)  # (code, detail, vocab)

    def record(self, tokens: torch.Tensor, banned: torch.Tensor, vocab: int) -> torch.Tensor:
        new = torch.cat([head_status(tokens, banned, vocab), tokens.new_full((1,), vocab)])
        self.status = torch.where(self.status[0] != OK, self.status, new)
        return torch.where(tokens < 0, tokens.new_full((), self.fill_token), tokens)

    def raise_if_any(self) -> None:
        """One device->host copy; raises the first recorded call's error as the CPU kernel words it."""
        code, detail, vocab = self.status.tolist()
        raise_head_status(torch.tensor([code, detail]), vocab)

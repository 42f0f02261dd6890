"""The DiT backbone's tensors in a checkpoint: their names, the config their shapes imply, and a
strict load that reports every key problem at once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from mdlm_fast.models.checkpoints.errors import CheckpointError, listing
from mdlm_fast.models.dit import DiT, DiTConfig

PREFIX = "backbone."
OPTIONAL_KEYS = frozenset({"rotary_emb.inv_freq"})  # recomputed from the config when absent


class BackboneState(dict):
    """Backbone tensors under bare names, plus how to report key problems to the user.

    ``prefix`` is what the file put before backbone names ("backbone." or ""), ``foreign`` the
    file's keys outside the backbone that must be reported as unexpected (HF files only).
    """

    def __init__(self, tensors: dict, prefix: str, foreign: list[str]) -> None:
        super().__init__(tensors)
        self.prefix = prefix
        self.foreign = foreign


def backbone_state(state: dict, *, ignore_other_prefixes: bool) -> BackboneState:
    """Strip ``backbone.``; keys without it are unexpected unless told to ignore them.

    If no key has the prefix, the keys are taken as bare backbone names.
    """
    if not any(k.startswith(PREFIX) for k in state):
        return BackboneState(state, "", [])
    tensors = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    foreign = [] if ignore_other_prefixes else [k for k in state if not k.startswith(PREFIX)]
    return BackboneState(tensors, PREFIX, foreign)


def infer_config(state: dict) -> dict:
    """Config fields readable from tensor shapes (everything but n_heads and the flags)."""
    out: dict[str, Any] = {}
    emb = state.get("vocab_embed.embedding")
    if emb is not None and emb.dim() == 2:
        out["vocab_size"], out["hidden_dim"] = emb.shape
    sig = state.get("sigma_map.mlp.0.weight")
    if sig is not None and sig.dim() == 2:
        out["cond_dim"] = sig.shape[0]
    indices = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if indices:
        out["n_blocks"] = max(indices) + 1
    return out


def build_and_load(config: DiTConfig, state: BackboneState, path: Path) -> DiT:
    # Build on the meta device so the (discarded) random init costs nothing at full size.
    with torch.device("meta"):
        model = DiT(config)
    model.to_empty(device="cpu")
    model.rotary_emb.reset_parameters()  # to_empty left it uninitialized; the file may lack it
    expected = model.state_dict()
    check_keys_and_shapes(expected, state, path)
    full = {**{k: expected[k] for k in OPTIONAL_KEYS if k not in state}, **state}
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as e:  # dtype problems etc.; keys and shapes were checked above
        raise CheckpointError(f"cannot load {path}: {e}") from e
    return model


def check_keys_and_shapes(expected: Mapping[str, torch.Tensor], state: BackboneState, path: Path) -> None:
    """One error listing every missing/unexpected key and shape mismatch, under file names."""
    pre = state.prefix or ""
    missing = [pre + k for k in expected if k not in state and k not in OPTIONAL_KEYS]
    unexpected = [pre + k for k in state if k not in expected] + state.foreign
    mismatched = [
        f"{pre}{k}: expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {listing(mismatched)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match the model config: " + "; ".join(problems))

"""A small GPT-style causal language model: the embedded judge for generative perplexity.

Architecture: token + learned position embeddings, ``n_blocks`` pre-LayerNorm blocks (causal
``scaled_dot_product_attention``, GELU(tanh) MLP of ratio 4, biases everywhere), a final
LayerNorm and a vocabulary head tied to the token embedding by default. Weights are stored as a
directory with ``config.json`` (``model_type: "mdlm_fast_causal_lm"``) and ``model.safetensors``;
with tied embeddings ``head.weight`` is not stored.

:func:`nll` gives per-token negative log-likelihoods (nats) for a batch of token ids, the
quantity generative perplexity averages.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdlm_fast.models.checkpoints.errors import CheckpointError
from mdlm_fast.models.checkpoints.hf import check_replaceable, write_safetensors
from mdlm_fast.models.embedded import JUDGE, EmbeddedNameError, embedded_path, shipped
from mdlm_fast.util.atomic import atomic_directory
from mdlm_fast.util.validate import integer

__all__ = ["CausalLMConfig", "CausalLM", "save_judge", "load_judge", "nll", "EMBEDDED_JUDGE"]

MODEL_TYPE = "mdlm_fast_causal_lm"
#: Where the embedded judge lives inside the package.
EMBEDDED_JUDGE = shipped(JUDGE, "judge")


@dataclass
class CausalLMConfig:
    """Shape of a :class:`CausalLM`. ``eos_id`` (optional) is the id used as a start context."""

    vocab_size: int
    hidden_dim: int = 256
    n_heads: int = 4
    n_blocks: int = 4
    max_length: int = 256
    dropout: float = 0.1
    tie_embeddings: bool = True
    eos_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_dim", "n_heads", "n_blocks", "max_length"):
            integer(f"CausalLMConfig.{name}", getattr(self, name), minimum=1)
        if self.hidden_dim % self.n_heads:
            raise ValueError(
                f"CausalLMConfig.hidden_dim ({self.hidden_dim}) must be divisible by n_heads ({self.n_heads})"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"CausalLMConfig.dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        self.tie_embeddings = bool(self.tie_embeddings)
        if self.eos_id is not None and not 0 <= int(self.eos_id) < self.vocab_size:
            raise ValueError(f"CausalLMConfig.eos_id {self.eos_id} outside [0, {self.vocab_size})")

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CausalLMConfig":
        if d.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"not a mdlm_fast causal LM config (model_type {d.get('model_type')!r})")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class _Block(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc_out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(b, s, d)), p, self.training)
        h = self.fc_out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return x + F.dropout(h, p, self.training)


class CausalLM(nn.Module):
    """``forward(ids [B, L]) -> logits [B, L, V]``: position i predicts token i + 1."""

    def __init__(self, config: CausalLMConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, CausalLMConfig):
            config = CausalLMConfig.from_dict(config)
        self.config = config
        d = config.hidden_dim
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.max_length, d)
        self.blocks = nn.ModuleList([_Block(d, config.n_heads, config.dropout) for _ in range(config.n_blocks)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.init_weights_(0)

    @torch.no_grad()
    def init_weights_(self, seed: int | torch.Generator = 0) -> "CausalLM":
        """GPT-2 init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2 n_blocks)), zero biases."""
        gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        resid_std = 0.02 / math.sqrt(2 * self.config.n_blocks)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln" in name or name.startswith("ln_f"):
                p.fill_(1.0)
            else:
                std = resid_std if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise ValueError(f"ids must be int64 [B, L], got {ids.dtype} {tuple(ids.shape)}")
        seq_len = ids.shape[1]
        if seq_len > self.config.max_length:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than the judge's "
                f"max_length {self.config.max_length} (use nll(), which slides)"
            )
        pos = torch.arange(seq_len, device=ids.device)
        x = self.tok_emb(ids) + self.pos_emb(pos)[None]
        x = F.dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of ``ids [B, L+1]``: inputs ``[:, :-1]``."""
        logits = self(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


@torch.no_grad()
def nll(model: CausalLM, ids: torch.Tensor, *, bos_id: int | None = None) -> torch.Tensor:
    """Per-token negative log-likelihood (nats, fp32) of a batch of token ids ``[B, L]``.

    Without ``bos_id`` the first token has no context and is not scored: the result is
    ``[B, L-1]`` (entry j scores ``ids[:, j+1]``). With ``bos_id`` (e.g. the end-of-text id the
    judge saw between documents) it is prepended as context and all ``L`` tokens are scored.
    Sequences longer than the judge's ``max_length`` are scored with a sliding window (stride
    half the window, every token scored once, with at least half a window of context).
    Right-padded batches: the values at padded positions are meaningless; mask them out.
    """
    if ids.dim() != 2 or ids.dtype != torch.int64:
        raise ValueError(f"ids must be int64 [B, L], got {ids.dtype} {tuple(ids.shape)}")
    if bos_id is not None:
        ids = torch.cat([ids.new_full((ids.shape[0], 1), int(bos_id)), ids], dim=1)
    vocab = model.config.vocab_size
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"ids outside the judge's vocabulary [0, {vocab})")
    was_training = model.training
    model.eval()
    try:
        total = ids.shape[1]
        out = torch.zeros(ids.shape[0], max(total - 1, 0), dtype=torch.float32, device=ids.device)
        if total < 2:
            return out
        window = model.config.max_length + 1  # inputs of max_length, targets shifted by one
        stride = max(1, model.config.max_length // 2)
        scored = 0  # targets [0, scored) done (target j is ids[:, j+1])
        start = 0
        while scored < total - 1:
            chunk = ids[:, start : start + window]
            logits = model(chunk[:, :-1]).float()
            tok_nll = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")
            first = scored - start  # skip targets already scored by the previous window
            out[:, scored : start + tok_nll.shape[1]] = tok_nll[:, first:]
            scored = start + tok_nll.shape[1]
            start += stride
        return out
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------


def save_judge(model: CausalLM, path: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (as :func:`save_denoiser`)."""
    if not isinstance(model, CausalLM):
        raise TypeError(f"save_judge expects a CausalLM, got {type(model).__name__}")
    path = Path(path)
    check_replaceable(path)
    with atomic_directory(path) as tmp:
        with open(tmp / "config.json", "w", encoding="utf-8") as f:
            json.dump(model.config.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        state = {
            k: v.detach().to("cpu").contiguous().clone()
            for k, v in model.state_dict().items()
            if not (model.config.tie_embeddings and k == "head.weight")
        }
        write_safetensors(state, tmp / "model.safetensors")
    return path


def load_judge(
    path: str | os.PathLike = "embedded", *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> CausalLM:
    """Load a :class:`CausalLM` from a directory written by :func:`save_judge`.

    ``"embedded"`` (or ``"embedded:judge"``) is the judge shipped in ``mdlm_fast/assets/judge``.
    Strict: missing/unexpected keys and shape mismatches raise :class:`CheckpointError`.
    Returns the model in eval mode.
    """
    try:
        embedded = embedded_path(path, JUDGE)
    except EmbeddedNameError as e:
        raise CheckpointError(str(e)) from None
    if embedded is not None:
        path = embedded
        if not path.is_dir():
            raise CheckpointError(f"the embedded judge is missing from this build ({path})")
    path = Path(path)
    if path.is_file() and path.name in ("config.json", "model.safetensors"):
        path = path.parent
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise CheckpointError(f"no judge checkpoint at {path} (needs config.json and model.safetensors)")
    try:
        config = CausalLMConfig.from_dict(json.loads(cfg_file.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"bad judge config {cfg_file}: {e}") from None
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as e:
        raise CheckpointError(f"cannot read {weights}: {e}") from None
    with torch.device("meta"):
        model = CausalLM(config)
    model.to_empty(device="cpu")
    if config.tie_embeddings:
        model.head.weight = model.tok_emb.weight
    expected = {k: v for k, v in model.state_dict().items() if not (config.tie_embeddings and k == "head.weight")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label}: {', '.join(items[:10])}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatch", mismatched),
            )
            if items
        ]
        raise CheckpointError(f"judge checkpoint {path} does not match its config: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()

"""The DiT denoiser of MDLM, with MDLM-compatible parameter names and a trunk/head split.

Parameter names, registration order and math follow MDLM's ``models/dit.py`` (and the HF port in
``kuleshov-group/mdlm-owt``), so that published ``model.safetensors`` files load by name and the
Lightning EMA ``shadow_params`` list -- which follows ``backbone.parameters()`` order -- maps onto
``DiT.parameters()`` one to one. Differences from MDLM, none of which change the fp32 math:

* attention is ``F.scaled_dot_product_attention`` (no flash_attn dependency);
* rotary embedding is computed explicitly (rotate-half, non-interleaved) in fp32;
* the residual stream is kept in fp32 and the matmuls run in the parameter dtype, which is what
  MDLM's fp32-parameters-under-bf16-autocast recipe does; with bf16 parameters LayerNorm, rotary,
  modulation and the gated residuals are fp32 and every Linear is bf16;
* when time conditioning is off, the adaLN modulations are constants and are cached per model.

``forward`` returns raw logits in the parameter dtype (fp32 for fp32 parameters, bf16 for bf16
ones); apply :func:`subs_log_probs` (which works in fp32) for MDLM's SUBS parameterization.
``trunk`` returns the hidden state right before the vocabulary projection, so that
``forward(x, s) == trunk(x, s) @ head_weight.T + head_bias``: the fast sampler projects only the
revealed rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator, Mapping, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdlm_fast.util.validate import integer

__all__ = ["DiTConfig", "DiT", "subs_log_probs"]

# Fields a config dict must provide; the others have defaults matching mdlm-owt.
_REQUIRED_FIELDS = ("hidden_dim", "n_heads", "n_blocks", "cond_dim", "vocab_size")
_FREQ_EMBED_DIM = 256  # sinusoidal timestep embedding width (MDLM's frequency_embedding_size)
_MAX_PERIOD = 10000
_ROTARY_BASE = 10_000


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class DiTConfig:
    """Shape of a DiT denoiser; field names follow ``kuleshov-group/mdlm-owt``'s config.json.

    ``mask_index`` defaults to ``vocab_size - 1`` (MDLM appends the mask token to the GPT-2
    vocabulary). ``dropout`` only acts in training mode; it is kept so configs round-trip.
    """

    hidden_dim: int = 768
    n_heads: int = 12
    n_blocks: int = 12
    cond_dim: int = 128
    vocab_size: int = 50258
    model_length: int = 1024
    time_conditioning: bool = False
    mask_index: int | None = None
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "n_heads", "n_blocks", "cond_dim", "vocab_size", "model_length"):
            setattr(self, name, _positive_int(name, getattr(self, name)))
        if not isinstance(self.time_conditioning, bool):
            raise ValueError(f"DiTConfig.time_conditioning must be a bool, got {self.time_conditioning!r}")
        if self.hidden_dim % self.n_heads:
            raise ValueError(f"DiTConfig.hidden_dim ({self.hidden_dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(
                f"DiTConfig head dim hidden_dim / n_heads = {self.head_dim} must be "
                f"even (rotary embedding rotates pairs)"
            )
        if self.mask_index is None:
            self.mask_index = self.vocab_size - 1
        self.mask_index = _int("mask_index", self.mask_index)
        if not 0 <= self.mask_index < self.vocab_size:
            raise ValueError(f"DiTConfig.mask_index ({self.mask_index}) must be in [0, vocab_size={self.vocab_size})")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= float(self.dropout) < 1.0
        ):
            raise ValueError(f"DiTConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serializable dict (mask_index resolved)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiTConfig":
        """Build from a config.json-like mapping; unknown keys (model_type, auto_map, ...) are ignored.

        ``hidden_dim, n_heads, n_blocks, cond_dim, vocab_size`` are required (cond_dim is always
        read from the dict: the published configuration class has a wrong default).
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"DiT config must be a mapping, got {type(d).__name__}")
        missing = [k for k in _REQUIRED_FIELDS if k not in d]
        if missing:
            raise ValueError(f"DiT config is missing required field(s): {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _int(name: str, value: Any) -> int:
    return integer(f"DiTConfig.{name}", value)


def _positive_int(name: str, value: Any) -> int:
    return integer(f"DiTConfig.{name}", value, minimum=1)


# --------------------------------------------------------------------------------------------
# Layers (names and registration order as in MDLM's models/dit.py)
# --------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: ``x * (1 + scale) + shift`` (shift/scale broadcast over positions)."""
    return x * (1 + scale) + shift


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x2, x1)`` of the two halves of the last dim (non-interleaved rotary)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int = _FREQ_EMBED_DIM, max_period: int = _MAX_PERIOD) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` of a 1-D tensor, fp32 ``[N, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class LayerNorm(nn.Module):
    """Weight-only LayerNorm computed in fp32 (MDLM's): returns fp32 whatever the input dtype."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones([dim]))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 * (fp32 or bf16) weight promotes to fp32, so the output is fp32 either way.
        return F.layer_norm(x.float(), [self.dim]) * self.weight


class EmbeddingLayer(nn.Module):
    """Token embedding as a raw parameter ``embedding [V, d]`` (MDLM's name, not nn.Embedding)."""

    def __init__(self, dim: int, vocab_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty((vocab_dim, dim)))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding[x]


class TimestepEmbedder(nn.Module):
    """sigma -> 256-dim sinusoidal embedding -> Linear -> SiLU -> Linear (``cond_dim``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = _FREQ_EMBED_DIM) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(cast(nn.Linear, self.mlp[0]).weight.dtype))


class Rotary(nn.Module):
    """Rotary position embedding: persistent buffer ``inv_freq`` plus a cached cos/sin table.

    ``inv_freq`` stays fp32 across ``.to(dtype)``: rounded to bf16 it would put the angles of
    late positions off by radians. The cos/sin table (fp32, ``[L, dh]``) is cached per sequence
    length and keyed on the buffer's identity and version, so it is rebuilt after a load.
    """

    def __init__(self, dim: int, base: int = _ROTARY_BASE) -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        self.register_buffer("inv_freq", self._inv_freq(None))
        self._cache_key: tuple | None = None
        self._cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None

    def _inv_freq(self, device: torch.device | None) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim))

    def reset_parameters(self) -> None:
        """Recompute ``inv_freq`` (e.g. after ``to_empty``, or when a checkpoint lacks it)."""
        with torch.no_grad():
            self.inv_freq.copy_(self._inv_freq(self.inv_freq.device))
        self.clear_cache()

    def clear_cache(self) -> None:
        self._cache_key = None
        self._cos_sin = None

    def _apply(self, fn, *args, **kwargs):
        before = self.inv_freq
        super()._apply(fn, *args, **kwargs)
        if self.inv_freq.dtype != torch.float32 and before.dtype == torch.float32:
            # fn cast the buffer (e.g. .to(torch.bfloat16)): keep the fp32 values, move only.
            self.inv_freq = before.to(device=self.inv_freq.device)
        self.clear_cache()
        return self

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 ``cos, sin`` of shape ``[seq_len, dh]`` (``emb = cat(freqs, freqs)``)."""
        inv = self.inv_freq
        key = (seq_len, device, inv.data_ptr(), _version(inv))
        cos_sin = self._cos_sin
        if key != self._cache_key or cos_sin is None:
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, inv.to(device=device, dtype=torch.float32))
            emb = torch.cat((freqs, freqs), dim=-1)
            cos_sin = self._cos_sin = (emb.cos(), emb.sin())
            self._cache_key = key
        return cos_sin


def _zeroed(linear: nn.Linear) -> nn.Linear:
    """MDLM's initialization of the adaLN and output layers: zero weight and bias."""
    linear.weight.data.zero_()
    linear.bias.data.zero_()
    return linear


def _modulations(adaLN: nn.Linear, c: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """The ``k`` adaLN vectors of conditioning ``c``, fp32 [B, 1, d] each (the layer may be bf16)."""
    return adaLN(c.to(adaLN.weight.dtype))[:, None].float().chunk(k, dim=2)


class DDiTBlock(nn.Module):
    """Transformer block with adaLN-Zero modulation, rotary attention and a GELU(tanh) MLP."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim, bias=True),
        )
        self.adaLN_modulation = _zeroed(nn.Linear(cond_dim, 6 * dim, bias=True))

    def modulations(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)``, fp32 [B, 1, d]."""
        return _modulations(self.adaLN_modulation, c, 6)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        mods: tuple[torch.Tensor, ...],
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: fp32 residual stream [B, L, d]; ``mods`` from :meth:`modulations`.

        ``positions [B, Q]``: return the block's output only there, ``[B, Q, d]``. Keys and values
        still cover every position; the query projection, attention output, output projection and
        MLP run at the Q positions only. Same math as the full output gathered at ``positions``:
        the last block before a head that reads a few positions needs no more.
        """
        shift_msa, scale_msa = mods[:2]
        dtype = self.attn_qkv.weight.dtype
        b, s, d = x.shape
        heads, head_dim = self.n_heads, d // self.n_heads
        h = modulate(self.norm1(x), shift_msa, scale_msa).to(dtype)
        cos, sin = cos_sin
        if positions is None:
            qkv = self.attn_qkv(h).view(b, s, 3, heads, head_dim)
            q, k = _rotary(qkv[:, :, :2], cos[:, None, None, :], sin[:, None, None, :]).to(dtype).unbind(2)
            return self._attend_and_mlp(x, q, k, qkv[:, :, 2], mods)
        w_q, w_kv = self.attn_qkv.weight[:d], self.attn_qkv.weight[d:]  # rows of the fused [3d, d]
        kv = F.linear(h, w_kv).view(b, s, 2, heads, head_dim)
        index = positions[..., None].expand(-1, -1, d)
        q = F.linear(h.gather(1, index), w_q).view(b, positions.shape[1], heads, head_dim)
        k = _rotary(kv[:, :, 0], cos[:, None, :], sin[:, None, :]).to(dtype)
        q = _rotary(q, cos[positions][:, :, None, :], sin[positions][:, :, None, :]).to(dtype)
        return self._attend_and_mlp(x.gather(1, index), q, k, kv[:, :, 1], mods)

    def _attend_and_mlp(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mods: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Attention of ``q [B, Q, H, dh]`` over ``k, v [B, L, H, dh]``, then the gated residual
        updates of ``x [B, Q, d]`` (the residual stream at the query positions)."""
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        b, n_queries, d = x.shape
        # [B, L, H, dh] -> [B, H, L, dh]; non-causal, softmax scale 1/sqrt(dh) as flash_attn's.
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        attn = attn.transpose(1, 2).reshape(b, n_queries, d)
        x = x + gate_msa * self._drop(self.attn_out(attn.to(self.attn_out.weight.dtype)))
        h = modulate(self.norm2(x), shift_mlp, scale_mlp).to(cast(nn.Linear, self.mlp[0]).weight.dtype)
        return x + gate_mlp * self._drop(self.mlp(h))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        # MDLM applies dropout before the gate; identity in eval mode.
        return F.dropout(x, p=self.dropout, training=self.training) if self.training else x


def _rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary on ``t [..., dh]`` in fp32, ``cos/sin`` broadcast against it; returns fp32.

    Elementwise, so rotating a subset of positions gives exactly the rows of rotating them all."""
    t = t.float()
    return t * cos + rotate_half(t) * sin


class DDitFinalLayer(nn.Module):
    """Final weight-only LayerNorm, adaLN modulation, and the vocabulary projection ``linear``."""

    def __init__(self, hidden_size: int, out_channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_final = LayerNorm(hidden_size)
        self.linear = _zeroed(nn.Linear(hidden_size, out_channels))
        self.adaLN_modulation = _zeroed(nn.Linear(cond_dim, 2 * hidden_size, bias=True))

    def modulations(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(shift, scale)``, fp32 [B, 1, d]."""
        return _modulations(self.adaLN_modulation, c, 2)

    def pre_head(self, x: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Norm + modulate, cast to the head's dtype: the input of ``linear``."""
        shift, scale = mods
        return modulate(self.norm_final(x), shift, scale).to(self.linear.weight.dtype)

    def forward(self, x: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.linear(self.pre_head(x, mods))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """MDLM's DiT backbone: ``forward(x [B, L] int64, sigma [B]) -> logits [B, L, V]``.

    Constant cache: with ``config.time_conditioning`` False, sigma is replaced by zeros (MDLM's
    ``_process_sigma``), so every adaLN modulation is a constant. They are computed once and
    reused while gradients are off (or no parameter needs them); the cache is dropped by
    ``.to()/.cuda()/.half()/to_empty`` (overridden ``_apply``), by ``load_state_dict``,
    ``init_random_`` and :meth:`refresh_constants`, and it is also keyed on each source
    parameter's storage pointer, dtype and version counter, so in-place updates through the
    parameter itself (``p.copy_``, optimizer steps) are noticed. Writes through ``p.data`` bypass
    the version counter: call :meth:`refresh_constants` after those.
    """

    def __init__(self, config: DiTConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, DiTConfig):
            config = DiTConfig.from_dict(config)
        self.config = config
        d = config.hidden_dim
        # Registration order matters: EMA shadow_params follow parameters() order.
        self.vocab_embed = EmbeddingLayer(d, config.vocab_size)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.head_dim)
        self.blocks = nn.ModuleList(
            [DDiTBlock(d, config.n_heads, config.cond_dim, dropout=config.dropout) for _ in range(config.n_blocks)]
        )
        self.output_layer = DDitFinalLayer(d, config.vocab_size, config.cond_dim)
        self._const_key: tuple | None = None
        self._const_mods: tuple[list, tuple] | None = None

    # ---- properties -------------------------------------------------------------------------

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def mask_index(self) -> int:
        mask_index = self.config.mask_index
        if mask_index is None:  # DiTConfig.__post_init__ resolves it; only a later assignment unsets it
            raise ValueError("DiTConfig.mask_index is None; construct the config again to resolve it")
        return mask_index

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def head_weight(self) -> torch.Tensor:
        """Vocabulary projection weight ``[V, d]``."""
        return self.output_layer.linear.weight

    @property
    def head_bias(self) -> torch.Tensor | None:
        """Vocabulary projection bias ``[V]`` (or None)."""
        return self.output_layer.linear.bias

    # ---- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Raw logits ``[B, L, V]`` before SUBS, in the parameter dtype."""
        h = self.trunk(x, sigma)
        return F.linear(h, self.head_weight, self.head_bias)

    def trunk(
        self, x: torch.Tensor, sigma: torch.Tensor | float, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden state ``[B, L, d]`` right before ``output_layer.linear``, in the parameter dtype.

        ``sigma``: shape ``[B]``, ``[B, 1]``, ``[1]`` or scalar (broadcast over the batch).
        ``positions``: optional int64 ``[B, Q]``; then only the hidden states at those positions of
        each row are returned, ``[B, Q, d]`` (the same values as ``trunk(x, sigma)`` gathered there),
        and the last block computes its queries, output projection and MLP at those positions only.
        """
        self._check_x(x)
        b, seq_len = x.shape
        if positions is not None:
            self._check_positions(positions, b, seq_len, x.device)
        sigma = self._check_sigma(sigma, b, x.device)
        block_mods, final_mods = self._modulations(sigma)
        cos_sin = self.rotary_emb(seq_len, x.device)
        h = self.vocab_embed(x).float()  # fp32 residual stream (see module doc)
        last = self.n_blocks - 1 if positions is not None else None
        for i, (block, mods) in enumerate(zip(self.blocks, block_mods)):
            h = block(h, cos_sin, mods, positions if i == last else None)
        return self.output_layer.pre_head(h, final_mods)

    # ---- input checks -----------------------------------------------------------------------

    def _check_x(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of token ids, got {type(x).__name__}")
        if x.dtype != torch.int64:
            raise ValueError(f"x must be int64 token ids, got dtype {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"x must have shape [B, L], got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("x must have at least one position (L >= 1)")
        weight = self.vocab_embed.embedding
        if x.device != weight.device:
            raise ValueError(f"x is on {x.device} but the model is on {weight.device}")
        # Range check only where it is cheap (no device sync); on CUDA a bad id would
        # otherwise be a device-side assert.
        if x.device.type == "cpu" and x.numel():
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"x holds token ids outside [0, {self.config.vocab_size}): min {lo}, max {hi}")

    @staticmethod
    def _check_positions(positions: torch.Tensor, batch: int, length: int, device: torch.device) -> None:
        if not isinstance(positions, torch.Tensor) or positions.dtype != torch.int64:
            raise ValueError(
                f"positions must be an int64 tensor [B, Q], got {getattr(positions, 'dtype', type(positions).__name__)}"
            )
        if positions.dim() != 2 or positions.shape[0] != batch:
            raise ValueError(f"positions must have shape [B={batch}, Q], got {tuple(positions.shape)}")
        if positions.device != device:
            raise ValueError(f"positions is on {positions.device} but x is on {device}")
        if device.type == "cpu" and positions.numel() and (positions.min() < 0 or positions.max() >= length):
            raise ValueError(f"positions must lie in [0, L={length})")

    @staticmethod
    def _check_sigma(sigma: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        if not isinstance(sigma, torch.Tensor):
            try:
                sigma = torch.tensor(float(sigma))
            except (TypeError, ValueError):
                raise TypeError(f"sigma must be a tensor or a number, got {type(sigma).__name__}") from None
        if sigma.dim() == 2 and sigma.shape[1] == 1:
            sigma = sigma[:, 0]  # MDLM's _process_sigma squeezes [B, 1]
        if sigma.dim() > 1 or (sigma.dim() == 1 and sigma.shape[0] not in (1, batch)):
            raise ValueError(f"sigma must have shape [B] (B={batch}), [B, 1], [1] or [], got {tuple(sigma.shape)}")
        if sigma.is_complex() or sigma.dtype == torch.bool:
            raise ValueError(f"sigma must be real-valued, got dtype {sigma.dtype}")
        return sigma.to(device=device, dtype=torch.float32).reshape(-1)

    # ---- conditioning and its cache ---------------------------------------------------------

    def _modulations(self, sigma: torch.Tensor) -> tuple[list, tuple]:
        """Per-block 6-tuples and the final 2-tuple of fp32 ``[B or 1, 1, d]`` modulations."""
        if self.config.time_conditioning:
            return self._compute_modulations(sigma)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self._const_params()):
            # Training: the constants must stay differentiable, so compute them afresh.
            return self._compute_modulations(sigma.new_zeros(1))
        key = self._constants_key()
        mods = self._const_mods
        if key != self._const_key or mods is None:
            with torch.no_grad():
                device = self.vocab_embed.embedding.device
                mods = self._const_mods = self._compute_modulations(torch.zeros(1, device=device, dtype=torch.float32))
            self._const_key = key
        return mods

    def _compute_modulations(self, sigma: torch.Tensor) -> tuple[list, tuple]:
        c = F.silu(self.sigma_map(sigma))
        return ([block.modulations(c) for block in self._typed_blocks()], self.output_layer.modulations(c))

    def _typed_blocks(self) -> Iterator[DDiTBlock]:
        # ModuleList yields nn.Module to a type checker; __init__ fills it with DDiTBlocks only.
        return cast("Iterator[DDiTBlock]", iter(self.blocks))

    def _const_params(self) -> list[torch.Tensor]:
        # Looked up each time (not stored): .to() may replace Parameter objects.
        params: list[torch.Tensor] = list(self.sigma_map.parameters())
        for block in self._typed_blocks():
            params += [block.adaLN_modulation.weight, block.adaLN_modulation.bias]
        params += [self.output_layer.adaLN_modulation.weight, self.output_layer.adaLN_modulation.bias]
        return params

    def _constants_key(self) -> tuple:
        return tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in self._const_params())

    def refresh_constants(self) -> None:
        """Drop cached constants (modulations, rotary table); they are rebuilt on next use."""
        self._const_key = None
        self._const_mods = None
        self.rotary_emb.clear_cache()

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half()/to_empty all land here: cached tensors would be stale.
        super()._apply(fn, *args, **kwargs)
        self.refresh_constants()
        return self

    def load_state_dict(self, state_dict, *args, **kwargs):
        result = super().load_state_dict(state_dict, *args, **kwargs)
        self.refresh_constants()
        return result

    # ---- initialization ---------------------------------------------------------------------

    @torch.no_grad()
    def init_random_(self, generator_or_seed: torch.Generator | int = 0, std: float = 0.02) -> "DiT":
        """Fill every parameter with small random values (MDLM's zero-init makes outputs trivial).

        LayerNorm weights get ``1 + std * N(0, 1)``, everything else ``std * N(0, 1)``. Values are
        drawn in fp32 on the generator's device in ``parameters()`` order, so a seed gives the same
        weights on every device and dtype (up to the final cast). Buffers are left alone.
        """
        if isinstance(generator_or_seed, torch.Generator):
            gen = generator_or_seed
        else:
            gen = torch.Generator().manual_seed(int(generator_or_seed))
        for name, p in self.named_parameters():
            noise = torch.randn(p.shape, generator=gen, device=gen.device, dtype=torch.float32)
            value = noise * std
            if name.endswith(("norm1.weight", "norm2.weight", "norm_final.weight")):
                value = value + 1.0
            p.copy_(value)
        self.refresh_constants()
        return self


def _version(t: torch.Tensor) -> int:
    # Inference tensors have no version counter; they cannot be updated outside inference mode.
    try:
        return t._version
    except RuntimeError:
        return -1


# --------------------------------------------------------------------------------------------
# SUBS parameterization
# --------------------------------------------------------------------------------------------


def subs_log_probs(logits: torch.Tensor, x: torch.Tensor, mask_index: int) -> torch.Tensor:
    """MDLM's SUBS parameterization: fp32 log-probabilities ``[..., V]`` of x0 given x_t.

    The mask id gets -inf (MDLM adds -1e6) before the log-softmax, so it never has probability;
    positions of ``x`` that are not masked are carried over: 0 at ``x`` and -inf elsewhere.
    ``logits`` is not modified.
    """
    if logits.shape[:-1] != x.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and x {tuple(x.shape)} disagree: logits must be x.shape + [V]")
    vocab = logits.shape[-1]
    if not 0 <= mask_index < vocab:
        raise ValueError(f"mask_index ({mask_index}) must be in [0, V={vocab})")
    if x.dtype != torch.int64:
        raise ValueError(f"x must be int64 token ids, got dtype {x.dtype}")
    masked = logits.float()
    if masked is logits:  # already fp32: copy rather than write into the caller's tensor
        masked = logits.clone()
    masked[..., mask_index] = float("-inf")
    out = torch.log_softmax(masked, dim=-1)
    unmasked = x != mask_index
    idx = x.unsqueeze(-1)
    carried = torch.where(unmasked.unsqueeze(-1), torch.zeros((), device=out.device), out.gather(-1, idx))
    out.masked_fill_(unmasked.unsqueeze(-1), float("-inf"))
    out.scatter_(-1, idx, carried)
    return out

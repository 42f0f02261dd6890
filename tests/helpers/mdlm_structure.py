"""Modules with the exact structure and names of MDLM's own objects, written for the tests.

MDLM's code is not in this repository and is never imported: these classes reproduce what the
drop-in adapter reads -- the class names, submodule and parameter names of ``models/dit.py``'s
``DIT``, the attributes of the Lightning ``Diffusion`` module (``backbone``, ``noise``,
``mask_index``, ``time_conditioning``, ``parameterization``, ``config``, ``ema``, ``_sample``), and
the Hugging Face ``MDLM`` class of ``mdlm-owt`` (``backbone`` inside, a flat config) -- with a
forward in plain PyTorch in MDLM's order of operations (scaled-dot-product attention stands in for
flash-attention). ``Diffusion._sample`` is MDLM's ddpm_cache loop on torch's global RNG.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class LayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones([dim]))
        self.dim = dim

    def forward(self, x):
        return F.layer_norm(x.float(), [self.dim]) * self.weight[None, None, :]


class Rotary(nn.Module):
    def __init__(self, dim, base=10_000):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, x, seq_dim=1):
        t = torch.arange(x.shape[seq_dim], device=x.device).type_as(self.inv_freq)
        freqs = torch.einsum("i,j->ij", t, self.inv_freq.clone())
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t):
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class EmbeddingLayer(nn.Module):
    def __init__(self, dim, vocab_dim):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty((vocab_dim, dim)))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x):
        return self.embedding[x]


class DDiTBlock(nn.Module):
    def __init__(self, dim, n_heads, cond_dim, mlp_ratio=4, dropout=0.1, activation=None):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim, bias=True),
            activation or nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim, bias=True),
        )
        self.dropout2 = nn.Dropout(dropout)
        self.dropout = dropout
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim, bias=True)

    def forward(self, x, rotary_cos_sin, c):
        b, s, d = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(
            6, dim=2
        )
        x_skip = x
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        qkv = self.attn_qkv(h).view(b, s, 3, self.n_heads, d // self.n_heads)
        cos, sin = rotary_cos_sin
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        q = qkv[:, :, 0] * cos + rotate_half(qkv[:, :, 0]) * sin
        k = qkv[:, :, 1] * cos + rotate_half(qkv[:, :, 1]) * sin
        v = qkv[:, :, 2]
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = attn.transpose(1, 2).reshape(b, s, d)
        x = x_skip + gate_msa * F.dropout(self.attn_out(h), p=self.dropout, training=self.training)
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp * F.dropout(h, p=self.dropout, training=self.training)


class DDitFinalLayer(nn.Module):
    def __init__(self, hidden_size, out_channels, cond_dim):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden_size, bias=True)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DIT(nn.Module):
    """MDLM's backbone: ``config.model.{hidden_size, cond_dim, n_blocks, n_heads, dropout, length}``."""

    def __init__(self, config, vocab_size, activation=None):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        m = config.model
        self.vocab_embed = EmbeddingLayer(m.hidden_size, vocab_size)
        self.sigma_map = TimestepEmbedder(m.cond_dim)
        self.rotary_emb = Rotary(m.hidden_size // m.n_heads)
        self.blocks = nn.ModuleList(
            [
                DDiTBlock(m.hidden_size, m.n_heads, m.cond_dim, dropout=m.dropout, activation=activation)
                for _ in range(m.n_blocks)
            ]
        )
        self.output_layer = DDitFinalLayer(m.hidden_size, vocab_size, m.cond_dim)
        self.scale_by_sigma = m.scale_by_sigma

    def forward(self, indices, sigma):
        x = self.vocab_embed(indices)
        c = F.silu(self.sigma_map(sigma))
        rotary_cos_sin = self.rotary_emb(x)
        for block in self.blocks:
            x = block(x, rotary_cos_sin, c)
        return self.output_layer(x, c)


def randomize_(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Small random weights (MDLM's zero init would make every output uniform), norms around 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            norm = name.endswith(("norm1.weight", "norm2.weight", "norm_final.weight"))
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if norm else 0.0))
    return module


def hydra_config(
    hidden=32,
    heads=4,
    blocks=2,
    cond=16,
    length=8,
    time_conditioning=False,
    batch=4,
    steps=8,
    predictor="ddpm_cache",
    noise_removal=True,
):
    """The fields of MDLM's Hydra config that the model and its _sample read."""
    return SimpleNamespace(
        model=SimpleNamespace(
            hidden_size=hidden,
            cond_dim=cond,
            n_blocks=blocks,
            n_heads=heads,
            dropout=0.1,
            length=length,
            scale_by_sigma=True,
        ),
        time_conditioning=time_conditioning,
        parameterization="subs",
        backbone="dit",
        T=0,
        noise=SimpleNamespace(type="loglinear"),
        sampling=SimpleNamespace(predictor=predictor, steps=steps, noise_removal=noise_removal),
        loader=SimpleNamespace(eval_batch_size=batch),
    )


class LogLinearNoise(nn.Module):
    def __init__(self, eps=1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, t):
        return -torch.log1p(-(1 - self.eps) * t), (1 - self.eps) / (1 - (1 - self.eps) * t)


class ExponentialMovingAverage:
    def __init__(self, parameters, decay):
        self.decay = decay
        self.shadow_params = [p.clone().detach() for p in parameters if p.requires_grad]

    def copy_to(self, parameters):
        for s, p in zip(self.shadow_params, [p for p in parameters if p.requires_grad]):
            p.data.copy_(s.data)


class Diffusion(nn.Module):
    """The attributes of MDLM's Lightning module the drop-in reads, and its ddpm_cache ``_sample``."""

    def __init__(self, config, vocab_size, mask_index=None, ema=0.0, backbone=None):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.mask_index = vocab_size - 1 if mask_index is None else mask_index
        self.parameterization = config.parameterization
        self.backbone = backbone if backbone is not None else DIT(config, vocab_size)
        self.noise = LogLinearNoise()
        self.time_conditioning = config.time_conditioning
        self.sampler = config.sampling.predictor
        self.neg_infinity = -1000000.0
        self.ema = ExponentialMovingAverage(list(self.backbone.parameters()), ema) if ema > 0 else None

    @property
    def device(self):
        return next(self.parameters()).device

    def _process_sigma(self, sigma):
        if sigma.ndim > 1:
            sigma = sigma.squeeze(-1)
        return sigma if self.time_conditioning else torch.zeros_like(sigma)

    def forward(self, x, sigma):
        logits = self.backbone(x, self._process_sigma(sigma))
        logits = _logits_of(logits)
        logits[:, :, self.mask_index] += self.neg_infinity
        logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        unmasked = x != self.mask_index
        logits[unmasked] = self.neg_infinity
        logits[unmasked, x[unmasked]] = 0
        return logits

    def _ddpm_caching_update(self, x, t, dt, p_x0=None):
        sigma_t, _ = self.noise(t)
        t = t.squeeze(-1)
        move_chance_t, move_chance_s = t[:, None, None], (t - dt)[:, None, None]
        if p_x0 is None:
            p_x0 = self.forward(x, sigma_t).exp()
        q_xs = p_x0 * (move_chance_t - move_chance_s)
        q_xs[:, :, self.mask_index] = move_chance_s[:, :, 0]
        gumbel_norm = 1e-10 - (torch.rand_like(q_xs) + 1e-10).log()
        proposal = (q_xs / gumbel_norm).argmax(dim=-1)
        copy_flag = (x != self.mask_index).to(x.dtype)
        return p_x0, copy_flag * x + (1 - copy_flag) * proposal

    @torch.no_grad()
    def _sample(self, num_steps=None, eps=1e-5):
        batch = self.config.loader.eval_batch_size
        num_steps = num_steps or self.config.sampling.steps
        x = torch.full((batch, self.config.model.length), self.mask_index, dtype=torch.int64, device=self.device)
        timesteps = torch.linspace(1, eps, num_steps + 1, device=self.device)
        dt = (1 - eps) / num_steps
        p_x0_cache = None
        for i in range(num_steps):
            t = timesteps[i] * torch.ones(x.shape[0], 1, device=self.device)
            p_x0_cache, x_next = self._ddpm_caching_update(x, t, dt, p_x0=p_x0_cache)
            if not torch.allclose(x_next, x) or self.time_conditioning:
                p_x0_cache = None
            x = x_next
        if self.config.sampling.noise_removal:
            t = timesteps[-1] * torch.ones(x.shape[0], 1, device=self.device)
            x = self.forward(x, self.noise(t)[0]).argmax(dim=-1)
        return x

    def restore_model_and_sample(self, num_steps, eps=1e-5):
        if self.ema:
            self.ema.copy_to(self.backbone.parameters())
        return self._sample(num_steps=num_steps, eps=eps)


class MaskedLMOutput(SimpleNamespace):
    pass


def _logits_of(output):
    return output[0] if isinstance(output, tuple) else output


class DITBackbone(nn.Module):
    """mdlm-owt's backbone: DIT's submodules under a flat config; zeroes sigma unless time-conditioned."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.vocab_embed = EmbeddingLayer(config.hidden_dim, config.vocab_size)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.hidden_dim // config.n_heads)
        self.blocks = nn.ModuleList(
            [
                DDiTBlock(config.hidden_dim, config.n_heads, config.cond_dim, dropout=config.dropout)
                for _ in range(config.n_blocks)
            ]
        )
        self.output_layer = DDitFinalLayer(config.hidden_dim, config.vocab_size, config.cond_dim)

    def forward(self, indices, sigma, output_hidden_states=False):
        if not self.config.time_conditioning:
            sigma = torch.zeros_like(sigma)
        x = self.vocab_embed(indices)
        c = F.silu(self.sigma_map(sigma))
        rotary_cos_sin = self.rotary_emb(x)
        hidden = [x]
        for block in self.blocks:
            x = block(x, rotary_cos_sin, c)
            hidden.append(x)
        return self.output_layer(x, c), hidden if output_hidden_states else []


class MDLM(nn.Module):
    """mdlm-owt's Hugging Face model class: ``forward(input_ids, timesteps)``, ``backbone`` inside."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.backbone = DITBackbone(config)

    def forward(self, input_ids=None, timesteps=None, output_hidden_states=None, return_dict=None):
        logits, hidden = self.backbone(
            indices=input_ids, sigma=timesteps, output_hidden_states=bool(output_hidden_states)
        )
        if return_dict if return_dict is not None else self.config.return_dict:
            return MaskedLMOutput(logits=logits, hidden_states=hidden or None)
        return (logits,)


def hf_config(hidden=32, heads=4, blocks=2, cond=16, vocab=37, length=8, time_conditioning=False):
    return SimpleNamespace(
        vocab_size=vocab,
        model_length=length,
        hidden_dim=hidden,
        cond_dim=cond,
        n_blocks=blocks,
        n_heads=heads,
        dropout=0.1,
        time_conditioning=time_conditioning,
        return_dict=False,
    )

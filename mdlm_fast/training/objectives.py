"""What is trained: the model a config builds, the MDLM and judge losses, and the validation loss.

MDLM loss (design eq. (9), MDLM's ``_forward_pass_diffusion``): ``t ~ U(0, 1)`` per sequence --
antithetic by default, ``t = (u/B + arange(B)/B) mod 1`` -- then ``t = (1 - eps_s) t + eps_s``
with ``eps_s = 1e-3``; every token is masked independently with probability ``move_chance(t)``;
the loss of a masked token is ``-log p(x0 | x_t) * loss_weight(t)`` under the SUBS
parameterization (mask logit -inf, log-softmax), 0 for an unmasked one, averaged over all
``B * L`` tokens. The vocabulary head runs only at masked positions (the unmasked ones contribute
exactly 0), which is the same number at about half the head cost.

Judge loss: next-token cross-entropy on windows of ``length + 1`` tokens.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

from mdlm_fast.analysis.judge import CausalLM, CausalLMConfig
from mdlm_fast.models.dit import DiT, DiTConfig
from mdlm_fast.schedules.noise import LogLinearNoise
from mdlm_fast.text.data import derive_seed
from mdlm_fast.text.tokenizer import TextTokenizer, check_compatible
from mdlm_fast.training.config import TrainConfig

#: What build_model makes: a DiT for kind "mdlm", a CausalLM for kind "judge".
TrainModel = Union[DiT, CausalLM]


def model_vocab(tokenizer: TextTokenizer) -> tuple[int, int]:
    """``(vocab_size, mask_index)`` of a model for ``tokenizer``: its own mask id if it has one,
    else one id appended after its vocabulary (MDLM's GPT-2 recipe)."""
    if tokenizer.mask_id is not None:
        return tokenizer.vocab_size, tokenizer.mask_id
    return tokenizer.vocab_size + 1, tokenizer.vocab_size


def build_model(config: TrainConfig, tokenizer: TextTokenizer) -> TrainModel:
    """A freshly initialized model for ``config`` (deterministic from ``config.seed``)."""
    gen = torch.Generator().manual_seed(derive_seed(config.seed, "init"))
    if config.kind == "mdlm":
        vocab, mask = model_vocab(tokenizer)
        dit_cfg = DiTConfig(
            hidden_dim=config.hidden_dim,
            n_heads=config.n_heads,
            n_blocks=config.n_blocks,
            cond_dim=config.cond_dim,
            vocab_size=vocab,
            model_length=config.length,
            time_conditioning=config.time_conditioning,
            mask_index=mask,
            dropout=config.dropout,
        )
        check_compatible(tokenizer, vocab, mask)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "init-torch"))
            model = DiT(dit_cfg)  # MDLM's init (zero adaLN and head), from the seeded global RNG
        return model
    judge_cfg = CausalLMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_dim=config.hidden_dim,
        n_heads=config.n_heads,
        n_blocks=config.n_blocks,
        max_length=config.length,
        dropout=config.dropout,
        tie_embeddings=config.tie_embeddings,
        eos_id=tokenizer.eos_id,
    )
    return CausalLM(judge_cfg).init_weights_(gen)


def sample_noise(
    x0: torch.Tensor,
    noise: LogLinearNoise,
    generator: torch.Generator,
    *,
    antithetic: bool = True,
    sampling_eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MDLM's ``(t [B], masked [B, L] bool)`` for a batch, drawn from ``generator``.

    ``t = (1 - sampling_eps) * u + sampling_eps`` with ``u`` uniform (antithetic:
    ``u = (r/B + arange(B)/B) mod 1``); each token is masked with probability
    ``noise.move_chance(t)``.
    """
    b = x0.shape[0]
    u = torch.rand(b, generator=generator, dtype=torch.float32)
    if antithetic:
        u = (u / b + torch.arange(b, dtype=torch.float32) / b) % 1
    t = (1 - sampling_eps) * u + sampling_eps
    move = noise.move_chance(t)
    masked = torch.rand(x0.shape, generator=generator, dtype=torch.float32) < move[:, None]
    return t.to(x0.device), masked.to(x0.device)


def mdlm_loss(
    model: DiT, x0: torch.Tensor, t: torch.Tensor, masked: torch.Tensor, noise: LogLinearNoise
) -> torch.Tensor:
    """MDLM's token-averaged NELBO term for given ``t [B]`` and mask pattern ``masked [B, L]``.

    ``sum over masked (b, l) of -log p_SUBS(x0[b, l] | x_t) * loss_weight(t[b]) / (B * L)``.
    """
    mask_index = model.mask_index
    xt = torch.where(masked, torch.full_like(x0, mask_index), x0)
    sigma = noise.sigma(t)
    h = model.trunk(xt, sigma)  # [B, L, d]
    rows, cols = masked.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return h.sum() * 0.0  # keeps the graph (and DDP-style hooks) alive
    logits = F.linear(h[rows, cols], model.head_weight, model.head_bias).float()
    is_mask = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    is_mask[mask_index] = True
    logits = logits.masked_fill(is_mask, float("-inf"))  # SUBS: never predict the mask
    tok_nll = F.cross_entropy(logits, x0[rows, cols], reduction="none")
    weight = noise.loss_weight(t.to(torch.float32))[rows]
    return (tok_nll * weight).sum() / x0.numel()


def autocast(config: TrainConfig, enabled: bool = True):
    dev = torch.device(config.device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled and config.amp == "bf16")


def judge_loss(model: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model.loss(ids)


@torch.no_grad()
def evaluate(
    model: TrainModel,
    config: TrainConfig,
    windows: torch.Tensor,
    *,
    max_batches: int | None = None,
    passes: int = 1,
    amp: bool = True,
) -> float:
    """Validation loss (nats/token) on fixed windows with a fixed noise seed.

    MDLM: the NELBO estimate of :func:`mdlm_loss` (token-weighted mean over the windows, ``passes``
    independent t/mask draws per window, noise seeded by ``(seed, "val", pass)``); its exp is an
    upper bound on perplexity. Judge: mean next-token cross-entropy (``windows`` of ``length + 1``).
    Runs on the model's device, under ``config.amp`` unless ``amp=False`` (export uses fp32).
    """
    was_training = model.training
    model.eval()
    if isinstance(model, DiT):  # the judge caches no constants
        model.refresh_constants()
    noise = LogLinearNoise(config.noise_eps)
    device = next(model.parameters()).device
    bs = config.batch_size
    n = windows.shape[0]
    if max_batches is not None:
        n = min(n, max_batches * bs)
    total, count = 0.0, 0
    try:
        for p in range(passes):
            gen = torch.Generator().manual_seed(derive_seed(config.seed, "val", p))
            for i in range(0, n, bs):
                x = windows[i : i + bs].to(device)
                with autocast(config, amp):
                    if isinstance(model, DiT):  # kind "mdlm"
                        t, masked = sample_noise(
                            x, noise, gen, antithetic=config.antithetic, sampling_eps=config.sampling_eps
                        )
                        loss = mdlm_loss(model, x, t, masked, noise)
                        tokens = x.numel()
                    else:
                        loss = judge_loss(model, x)
                        tokens = x[:, 1:].numel()
                total += float(loss) * tokens
                count += tokens
    finally:
        model.train(was_training)
    return total / count

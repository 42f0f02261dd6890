"""Training: MDLM denoisers and the causal-LM judge, resumable, with EMA and validation.

Python API: :class:`TrainConfig`, :func:`train`, :func:`export`, :func:`mdlm_loss`,
:func:`sample_noise`, :func:`evaluate`. CLI: :func:`add_train_arguments` / :func:`run_train`
(``mdlm-fast train``) and :func:`add_tokenizer_arguments` / :func:`run_train_tokenizer`
(``mdlm-fast tokenizer``); :func:`train_main` runs the train command on its own.

MDLM loss (DESIGN section 3, MDLM's ``_forward_pass_diffusion``): ``t ~ U(0, 1)`` per sequence --
antithetic by default, ``t = (u/B + arange(B)/B) mod 1`` -- then ``t = (1 - eps_s) t + eps_s``
with ``eps_s = 1e-3``; every token is masked independently with probability ``move_chance(t)``;
the loss of a masked token is ``-log p(x0 | x_t) * loss_weight(t)`` under the SUBS
parameterization (mask logit -inf, log-softmax), 0 for an unmasked one, averaged over all
``B * L`` tokens. The vocabulary head runs only at masked positions (the unmasked ones contribute
exactly 0), which is the same number at about half the head cost.

Judge loss: next-token cross-entropy on windows of ``length + 1`` tokens.

Optimizer: AdamW (betas 0.9/0.98, weight decay 0.01 on matrices only), linear warmup, then
constant or cosine decay to ``min_lr_ratio * lr`` (the rate is a pure function of the step);
gradient clipping at 1.0; EMA of the weights with decay ``min(ema_decay, (1+n)/(10+n))`` (MDLM's
warm-up rule). Validation and export use the EMA weights.

Determinism and resume: step ``k``'s batch, its noise (t, masks) and its dropout are drawn from
generators seeded by ``(seed, k)``, so a run depends only on its config, and stopping and
resuming (``state.pt``: model, EMA, optimizer, step, tokens seen, wall time, RNG states, best
validation loss; written atomically every ``save_every`` steps, at the end, on SIGINT/SIGTERM and
when ``time_budget`` runs out) reproduces the uninterrupted run bit for bit on the same machine
and thread count. ``metrics.jsonl`` gets one row per ``log_every`` steps (rows past the saved
step are dropped on resume, so nothing is duplicated).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdlm_fast.atomic import atomic_directory, atomic_file
from mdlm_fast.data import Corpus, derive_seed, load_corpus
from mdlm_fast.model import DiT, DiTConfig
from mdlm_fast.noise import LogLinearNoise
from mdlm_fast.tokenizer import (TextTokenizer, TokenizerError, check_compatible, load_tokenizer,
                                 train_bpe_tokenizer)

__all__ = [
    "TrainConfig", "TrainResult", "TrainError", "train", "export", "mdlm_loss", "sample_noise",
    "evaluate", "build_model", "add_train_arguments", "run_train", "add_tokenizer_arguments",
    "run_train_tokenizer", "train_main",
]

STATE_NAME = "state.pt"
METRICS_NAME = "metrics.jsonl"
TOKENIZER_COPY = "tokenizer.json"
_STATE_FORMAT = 1
#: Fields that may change between invocations on the same run directory.
_RESUMABLE_FIELDS = frozenset({"max_steps", "eval_every", "eval_batches", "save_every",
                               "log_every", "threads", "export_val_passes", "device",
                               "data", "tokenizer"})  # data/tokenizer: checked by content


class TrainError(ValueError):
    """A user error in training arguments or run directories (one-line message)."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in ``state.pt`` and in the model card)."""

    data: str
    kind: str = "mdlm"  # "mdlm" | "judge"
    tokenizer: str = "embedded"
    val_fraction: float = 0.05
    # model
    n_blocks: int = 8
    hidden_dim: int = 256
    n_heads: int = 4
    cond_dim: int = 128  # mdlm only
    length: int = 256
    dropout: float = 0.1
    time_conditioning: bool = False  # mdlm only
    tie_embeddings: bool = True  # judge only
    # optimization
    batch_size: int = 16
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # "cosine" | "constant"
    decay_steps: int | None = None  # cosine horizon; None = max_steps
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # MDLM noise
    antithetic: bool = True
    sampling_eps: float = 1e-3
    noise_eps: float = 1e-3
    # loop
    max_steps: int = 1000
    eval_every: int = 250
    eval_batches: int | None = 8  # None = the whole validation split
    save_every: int = 100
    log_every: int = 10
    export_val_passes: int = 4  # mdlm: t-draws per validation window at export
    seed: int = 0
    threads: int | None = None
    amp: str = "none"  # "none" | "bf16": autocast matmuls to bf16 (fp32 master weights)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in ("mdlm", "judge"):
            raise TrainError(f"kind must be 'mdlm' or 'judge', got {self.kind!r}")
        if self.amp not in ("none", "bf16"):
            raise TrainError(f"amp must be 'none' or 'bf16', got {self.amp!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise TrainError(f"unknown device {self.device!r}") from None
        if self.lr_schedule not in ("cosine", "constant"):
            raise TrainError(f"lr_schedule must be 'cosine' or 'constant', "
                             f"got {self.lr_schedule!r}")
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("n_blocks", "hidden_dim", "n_heads", "cond_dim", "length", "batch_size",
                     "max_steps", "eval_every", "save_every", "log_every", "export_val_passes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise TrainError(f"{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TrainError(f"{name} must be a non-negative integer, got {v!r}")
        if self.hidden_dim % self.n_heads or (self.hidden_dim // self.n_heads) % 2:
            raise TrainError(f"hidden_dim {self.hidden_dim} must split into n_heads "
                             f"{self.n_heads} heads of even size")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise TrainError(f"need lr > 0 and 0 <= min_lr_ratio <= 1 (got {self.lr}, "
                             f"{self.min_lr_ratio})")
        if not 0 <= self.ema_decay < 1:
            raise TrainError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.dropout < 1:
            raise TrainError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.sampling_eps < 1:
            raise TrainError(f"sampling_eps must be in (0, 1), got {self.sampling_eps}")
        if self.eval_batches is not None and self.eval_batches <= 0:
            raise TrainError(f"eval_batches must be positive or None, got {self.eval_batches}")
        if self.threads is not None and self.threads <= 0:
            raise TrainError(f"threads must be positive, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.length


@dataclass
class TrainResult:
    step: int
    tokens_seen: int
    wall_time_s: float
    stopped: str  # "max_steps" | "time_budget" | "signal"
    last_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    run_dir: str
    metrics: list[dict] = field(default_factory=list)  # rows written by this invocation


# --------------------------------------------------------------------------------------------
# Models and losses
# --------------------------------------------------------------------------------------------

def model_vocab(tokenizer: TextTokenizer) -> tuple[int, int | None]:
    """``(vocab_size, mask_index)`` of a model for ``tokenizer``: its own mask id if it has one,
    else one id appended after its vocabulary (MDLM's GPT-2 recipe)."""
    if tokenizer.mask_id is not None:
        return tokenizer.vocab_size, tokenizer.mask_id
    return tokenizer.vocab_size + 1, tokenizer.vocab_size


def build_model(config: TrainConfig, tokenizer: TextTokenizer) -> nn.Module:
    """A freshly initialized model for ``config`` (deterministic from ``config.seed``)."""
    from mdlm_fast.judge import CausalLM, CausalLMConfig

    gen = torch.Generator().manual_seed(derive_seed(config.seed, "init"))
    if config.kind == "mdlm":
        vocab, mask = model_vocab(tokenizer)
        cfg = DiTConfig(hidden_dim=config.hidden_dim, n_heads=config.n_heads,
                        n_blocks=config.n_blocks, cond_dim=config.cond_dim, vocab_size=vocab,
                        model_length=config.length, time_conditioning=config.time_conditioning,
                        mask_index=mask, dropout=config.dropout)
        check_compatible(tokenizer, cfg.vocab_size, cfg.mask_index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "init-torch"))
            model = DiT(cfg)  # MDLM's init (zero adaLN and head), from the seeded global RNG
        return model
    cfg = CausalLMConfig(vocab_size=tokenizer.vocab_size, hidden_dim=config.hidden_dim,
                         n_heads=config.n_heads, n_blocks=config.n_blocks,
                         max_length=config.length, dropout=config.dropout,
                         tie_embeddings=config.tie_embeddings, eos_id=tokenizer.eos_id)
    return CausalLM(cfg).init_weights_(gen)


def sample_noise(x0: torch.Tensor, noise: LogLinearNoise, generator: torch.Generator, *,
                 antithetic: bool = True, sampling_eps: float = 1e-3
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


def mdlm_loss(model: DiT, x0: torch.Tensor, t: torch.Tensor, masked: torch.Tensor,
              noise: LogLinearNoise) -> torch.Tensor:
    """MDLM's token-averaged NELBO term for given ``t [B]`` and mask pattern ``masked [B, L]``.

    ``sum over masked (b, l) of -log p_SUBS(x0[b, l] | x_t) * loss_weight(t[b]) / (B * L)``.
    """
    mask_index = model.config.mask_index
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


def _autocast(config: TrainConfig, enabled: bool = True):
    dev = torch.device(config.device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled and config.amp == "bf16")


def judge_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.loss(ids)


@torch.no_grad()
def evaluate(model: nn.Module, config: TrainConfig, windows: torch.Tensor, *,
             max_batches: int | None = None, passes: int = 1, amp: bool = True) -> float:
    """Validation loss (nats/token) on fixed windows with a fixed noise seed.

    MDLM: the NELBO estimate of :func:`mdlm_loss` (token-weighted mean over the windows, ``passes``
    independent t/mask draws per window, noise seeded by ``(seed, "val", pass)``); its exp is an
    upper bound on perplexity. Judge: mean next-token cross-entropy (``windows`` of ``length + 1``).
    Runs on the model's device, under ``config.amp`` unless ``amp=False`` (export uses fp32).
    """
    was_training = model.training
    model.eval()
    if hasattr(model, "refresh_constants"):
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
                x = windows[i:i + bs].to(device)
                with _autocast(config, amp):
                    if config.kind == "mdlm":
                        t, masked = sample_noise(x, noise, gen, antithetic=config.antithetic,
                                                 sampling_eps=config.sampling_eps)
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


def _val_windows(corpus: Corpus, config: TrainConfig) -> torch.Tensor:
    return corpus.val_windows(config.length + (1 if config.kind == "judge" else 0))


def _train_batch(corpus: Corpus, config: TrainConfig, step: int) -> torch.Tensor:
    extra = 1 if config.kind == "judge" else 0
    return corpus.train_batch(step, config.batch_size, config.length + extra, config.seed)


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup, then constant or cosine."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    horizon = config.decay_steps if config.decay_steps is not None else config.max_steps
    span = max(1, horizon - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=1e-8)


class _EMA:
    """EMA of parameters (buffers copied), kept in a second model used for eval and export."""

    def __init__(self, model: nn.Module) -> None:
        import copy
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float, num_updates: int) -> None:
        d = min(decay, (1 + num_updates) / (10 + num_updates))
        for pe, p in zip(self.model.parameters(), model.parameters()):
            pe.lerp_(p.detach(), 1 - d)
        for be, b in zip(self.model.buffers(), model.buffers()):
            be.copy_(b)


# --------------------------------------------------------------------------------------------
# State files
# --------------------------------------------------------------------------------------------

def _load_state(run_dir: Path) -> dict | None:
    path = run_dir / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else e}") \
            from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise TrainError(f"{path} is not a mdlm_fast training state (format "
                         f"{_STATE_FORMAT})")
    return state


def _check_resume(saved: dict, config: TrainConfig, run_dir: Path) -> None:
    diffs = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in config.to_dict().items()
             if k not in _RESUMABLE_FIELDS and k in saved and saved[k] != v]
    if diffs:
        raise TrainError(f"run directory {run_dir} was started with other settings "
                         f"({'; '.join(diffs)}); use a new --run-dir or the same arguments")
    if (config.lr_schedule == "cosine" and config.decay_steps is None
            and saved.get("max_steps") != config.max_steps):
        warnings.warn(f"max_steps changed from {saved.get('max_steps')} to {config.max_steps} "
                      f"with a cosine schedule over max_steps: the learning-rate curve differs "
                      f"from an uninterrupted run (set decay_steps to fix the horizon)")


def _read_metrics(path: Path, upto_step: int) -> list[dict]:
    rows: list[dict] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a kill
            if row.get("step", 0) <= upto_step:
                rows.append(row)
    return rows


def _rewrite_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

class _StopFlag:
    """Set by SIGINT/SIGTERM while training; handlers restored afterwards."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> "_StopFlag":
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: give up on the clean stop
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(config: TrainConfig, run_dir: str | os.PathLike, *, time_budget_s: float | None = None,
          progress: bool = True, command: str | None = None,
          tokenizer: TextTokenizer | None = None, callback=None) -> TrainResult:
    """Train (or resume) the run in ``run_dir`` until ``config.max_steps``.

    Stops early, with the state saved, after ``time_budget_s`` seconds of this invocation or on
    SIGINT/SIGTERM. ``command`` (the command line) is recorded for the model card.
    ``tokenizer`` overrides ``config.tokenizer`` (an already loaded one); ``callback(step)`` is
    called after every step (tests use it to send signals).

    Validation (EMA weights, ``eval_batches`` batches) runs every ``eval_every`` steps and at
    ``max_steps``; :func:`export` evaluates on the whole validation split.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    saved = _load_state(run_dir)
    if saved is not None:
        _check_resume(saved["config"], config, run_dir)

    # Tokenizer: a run keeps the one it started with (copied into the run dir).
    from_copy = False
    if tokenizer is None:
        copy = run_dir / TOKENIZER_COPY
        from_copy = saved is not None and copy.is_file()
        tokenizer = load_tokenizer(copy if from_copy else config.tokenizer)
    if saved is not None and saved.get("tokenizer_fingerprint") != tokenizer.fingerprint:
        raise TrainError(f"the tokenizer differs from the one run {run_dir} was started with")
    if from_copy and saved.get("tokenizer_name"):
        tokenizer.name = saved["tokenizer_name"]  # loaded from the run's copy; keep the origin
    corpus = load_corpus(config.data, tokenizer, val_fraction=config.val_fraction,
                         cache_dir=run_dir / "cache")
    if saved is not None and saved.get("data_sha256") != corpus.data_sha256:
        raise TrainError(f"{config.data} changed since run {run_dir} was started "
                         f"(sha256 differs)")
    if saved is None and hasattr(tokenizer.backend, "to_str"):
        tokenizer.save(run_dir / TOKENIZER_COPY)
    val_windows = _val_windows(corpus, config)

    device = torch.device(config.device)
    model = build_model(config, tokenizer).to(device)
    model.train()
    ema = _EMA(model)
    optimizer = _make_optimizer(model, config)
    noise = LogLinearNoise(config.noise_eps)
    step, tokens_seen, wall_before, best_val, last_val = 0, 0, 0.0, None, None
    commands: list[str] = []
    window = [0.0, 0]  # loss sum and step count since the last metrics row
    if saved is not None:
        model.load_state_dict(saved["model"])
        ema.model.load_state_dict(saved["ema"])  # load_state_dict copies onto the device
        optimizer.load_state_dict(saved["optimizer"])
        step, tokens_seen = int(saved["step"]), int(saved["tokens_seen"])
        wall_before = float(saved["wall_time_s"])
        best_val, last_val = saved.get("best_val_loss"), saved.get("val_loss")
        commands = list(saved.get("commands", []))
        torch.set_rng_state(saved["rng"]["torch"])
        window = [float(saved["log_window"][0]), int(saved["log_window"][1])]
    if command and command not in commands:
        commands.append(command)
    metrics_path = run_dir / METRICS_NAME
    _rewrite_metrics(metrics_path, _read_metrics(metrics_path, step))

    def save() -> None:
        with atomic_file(run_dir / STATE_NAME, "wb") as f:
            torch.save({
                "format": _STATE_FORMAT, "config": config.to_dict(), "step": step,
                "tokens_seen": tokens_seen, "wall_time_s": wall_before + (time.time() - t_start),
                "best_val_loss": best_val, "val_loss": last_val, "commands": commands,
                "log_window": list(window),
                "model": model.state_dict(), "ema": ema.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "data": {"seed": config.seed, "next_step": step}},
                "tokenizer_fingerprint": tokenizer.fingerprint, "tokenizer_name": tokenizer.name,
                "data_sha256": corpus.data_sha256, "data_path": str(config.data),
                "n_params": sum(p.numel() for p in model.parameters()),
            }, f)

    t_start = time.time()
    stopped = "max_steps"
    new_rows: list[dict] = []
    last_loss = None
    window_t0, window_step0 = time.time(), step
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=config.max_steps, initial=step, desc=f"train {config.kind}",
                   file=sys.stderr, dynamic_ncols=True, leave=True)
    try:
        with _StopFlag() as stop, open(metrics_path, "a", encoding="utf-8") as mlog:
            while step < config.max_steps:
                # ---- one step (everything random is keyed by (seed, step)) ----
                lr = lr_at(config, step)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                x = _train_batch(corpus, config, step).to(device)
                torch.manual_seed(derive_seed(config.seed, "dropout", step))
                with _autocast(config):
                    if config.kind == "mdlm":
                        gen = torch.Generator().manual_seed(
                            derive_seed(config.seed, "noise", step))
                        t, masked = sample_noise(x, noise, gen, antithetic=config.antithetic,
                                                 sampling_eps=config.sampling_eps)
                        loss = mdlm_loss(model, x, t, masked, noise)
                    else:
                        loss = judge_loss(model, x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                ema.update(model, config.ema_decay, step)
                step += 1
                tokens_seen += config.tokens_per_step
                last_loss = loss.detach().item()
                if not math.isfinite(last_loss):
                    raise TrainError(f"loss became {last_loss} at step {step}; lower --lr")
                window[0] += last_loss
                window[1] += 1

                # ---- eval / log / save ----
                val = None
                if step % config.eval_every == 0 or step == config.max_steps:
                    t_eval = time.time()
                    val = evaluate(ema.model, config, val_windows,
                                   max_batches=config.eval_batches)
                    window_t0 += time.time() - t_eval  # tokens/s counts training time only
                    last_val = val
                    best_val = val if best_val is None else min(best_val, val)
                if step % config.log_every == 0 or val is not None or step == config.max_steps:
                    now = time.time()
                    row = {"step": step, "loss": window[0] / window[1], "lr": lr,
                           "grad_norm": float(grad_norm), "tokens_seen": tokens_seen,
                           "tokens_per_s": config.tokens_per_step * (step - window_step0)
                           / max(now - window_t0, 1e-9),
                           "wall_time_s": wall_before + (now - t_start)}
                    if val is not None:
                        row["val_loss"] = val
                        if config.kind == "mdlm":
                            row["val_ppl_bound"] = math.exp(val)
                        else:
                            row["val_ppl"] = math.exp(val)
                    mlog.write(json.dumps(row) + "\n")
                    mlog.flush()
                    new_rows.append(row)
                    if bar is not None:
                        post = {"loss": f"{row['loss']:.3f}",
                                "tok/s": f"{row['tokens_per_s']:.0f}"}
                        if last_val is not None:
                            post["val"] = f"{last_val:.3f}"
                        bar.set_postfix(post, refresh=False)
                    window = [0.0, 0]
                    window_t0, window_step0 = now, step
                if bar is not None:
                    bar.update(1)
                if step % config.save_every == 0:
                    save()
                if callback is not None:
                    callback(step)
                if stop.signum is not None:
                    stopped = "signal"
                    break
                if time_budget_s is not None and time.time() - t_start >= time_budget_s:
                    stopped = "time_budget"
                    break
            save()
    finally:
        if bar is not None:
            bar.close()
    if stopped != "max_steps":
        name = {"signal": "interrupted", "time_budget": "time budget reached"}[stopped]
        print(f"{name}: state saved at step {step}/{config.max_steps} in {run_dir}; run the "
              f"same command to resume", file=sys.stderr)
    return TrainResult(step=step, tokens_seen=tokens_seen,
                       wall_time_s=wall_before + (time.time() - t_start), stopped=stopped,
                       last_loss=last_loss, val_loss=last_val, best_val_loss=best_val,
                       run_dir=str(run_dir), metrics=new_rows)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
           val_passes: int | None = None, dtype: str = "fp32",
           include_tokenizer: bool = True) -> dict:
    """Write the EMA weights of ``run_dir`` as a model directory, with a card and the tokenizer.

    MDLM: :func:`~mdlm_fast.checkpoint.save_denoiser` layout; judge:
    :func:`~mdlm_fast.judge.save_judge` layout. Adds ``MODEL_CARD.md``, ``training.json`` (the
    numbers of the card) and, with ``include_tokenizer``, ``tokenizer.json``. ``dtype="bf16"``
    stores the weights in bfloat16 (half the size; the loaders upcast to fp32). The validation
    loss is recomputed in fp32 on the whole validation split with the weights as stored (EMA,
    rounded to bf16 if so exported; ``val_passes`` noise draws per window for MDLM). The
    directory is replaced atomically. Returns the card's numbers.
    """
    from mdlm_fast.checkpoint import _check_replaceable, save_denoiser
    from mdlm_fast.judge import save_judge

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    saved = _load_state(run_dir)
    if saved is None:
        raise TrainError(f"no training state in {run_dir} ({STATE_NAME} missing)")
    config = TrainConfig.from_dict(saved["config"])
    tok_file = run_dir / TOKENIZER_COPY
    tokenizer = load_tokenizer(tok_file if tok_file.is_file() else config.tokenizer)
    if dtype not in ("fp32", "bf16"):
        raise TrainError(f"export dtype must be 'fp32' or 'bf16', got {dtype!r}")
    model = build_model(config, tokenizer)
    model.load_state_dict(saved["ema"])
    model.eval()
    if dtype == "bf16":
        model.to(torch.bfloat16).to(torch.float32)  # evaluate exactly the shipped weights
    corpus = load_corpus(config.data, tokenizer, val_fraction=config.val_fraction,
                         cache_dir=run_dir / "cache")
    windows = _val_windows(corpus, config)
    passes = (val_passes or config.export_val_passes) if config.kind == "mdlm" else 1
    t0 = time.time()
    val = evaluate(model, config, windows, passes=passes, amp=False)
    eval_s = time.time() - t0

    info = {
        "kind": config.kind, "step": int(saved["step"]), "max_steps": config.max_steps,
        "tokens_seen": int(saved["tokens_seen"]), "wall_time_s": float(saved["wall_time_s"]),
        "val_loss": val, "val_windows": int(windows.shape[0]), "val_passes": passes,
        "weights_dtype": dtype,
        "val_tokens": int(windows.numel()), "eval_time_s": eval_s,
        "data": Path(config.data).name, "data_sha256": corpus.data_sha256,
        "train_tokens": int(corpus.train.numel()), "val_fraction": config.val_fraction,
        "tokenizer": saved.get("tokenizer_name"),
        "tokenizer_sha256": tokenizer.fingerprint,
        "n_params": sum(p.numel() for p in model.parameters()),
        "commands": saved.get("commands", []), "config": saved["config"],
        "torch": torch.__version__,
    }
    if config.kind == "mdlm":
        info["val_ppl_bound"] = math.exp(val)
    else:
        info["val_ppl"] = math.exp(val)

    _check_replaceable(out_dir)
    with atomic_directory(out_dir, tag="export") as staging:
        if dtype == "bf16":
            model.to(torch.bfloat16)
        if config.kind == "mdlm":
            save_denoiser(model, staging)
        else:
            save_judge(model, staging)
        if include_tokenizer and hasattr(tokenizer.backend, "to_str"):
            tokenizer.save(staging / TOKENIZER_COPY)
        (staging / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (staging / "MODEL_CARD.md").write_text(_model_card(info, config), encoding="utf-8")
    return info


def _model_card(info: dict, config: TrainConfig) -> str:
    kind = "MDLM denoiser (DiT, SUBS, log-linear noise)" if config.kind == "mdlm" \
        else "causal language model (GPT-style judge)"
    cmds = info["commands"] or ["(Python API; see the config below)"]
    lines = [
        f"# {kind}: {config.n_blocks} blocks, d={config.hidden_dim}, {config.n_heads} heads",
        "",
        f"- **Parameters:** {info['n_params']:,} (stored as {info['weights_dtype']})",
        f"- **Data:** `{info['data']}` (sha256 `{info['data_sha256']}`); training split "
        f"{info['train_tokens']:,} tokens; validation = the last {config.val_fraction:.0%} of the "
        f"file as one contiguous block (see `mdlm_fast/data.py`)",
        f"- **Tokenizer:** {info['tokenizer']} (sha256 of its JSON "
        f"`{info['tokenizer_sha256'][:16]}...`)",
        f"- **Steps:** {info['step']:,} of {config.max_steps:,}, batch {config.batch_size} x "
        f"{config.length} tokens",
        f"- **Tokens seen:** {info['tokens_seen']:,}",
        f"- **Training wall time:** {info['wall_time_s'] / 60:.1f} min "
        f"(torch {info['torch']})",
    ]
    if config.kind == "mdlm":
        lines.append(f"- **Validation loss (NELBO, EMA weights):** {info['val_loss']:.4f} "
                     f"nats/token -> perplexity bound exp(loss) = {info['val_ppl_bound']:.2f} "
                     f"({info['val_windows']} windows x {info['val_passes']} noise draws, "
                     f"fixed seed)")
    else:
        lines.append(f"- **Validation loss (EMA weights):** {info['val_loss']:.4f} nats/token "
                     f"-> perplexity {info['val_ppl']:.2f} ({info['val_windows']} windows of "
                     f"{config.length + 1} tokens)")
    lines += ["", "## Command", "", "```"] + cmds + ["```", "",
              "Rerunning the command (same run directory) resumes; with a fresh run directory "
              "it retrains from scratch and reproduces these figures on the same machine type "
              "and thread count (every batch, mask and dropout draw is seeded by (seed, step)).",
              "", "## Config", "", "```json", json.dumps(info["config"], indent=2,
                                                         sort_keys=True), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``mdlm-fast train`` (defaults: the embedded heavy MDLM's settings)."""
    from mdlm_fast import cli_validate as check

    d = TrainConfig(data="")
    a = parser.add_argument
    a("--kind", choices=["mdlm", "judge"], default=d.kind, help="what to train (default mdlm)")
    a("--data", required=True, help="UTF-8 text file to train on, e.g. the full corpus, or embedded:sample "
                                    "(100k characters shipped for quick runs)")
    a("--run-dir", required=True, help="run directory (state.pt, metrics.jsonl); resumed if present")
    a("--tokenizer", default=d.tokenizer,
      help="'embedded', a tokenizer.json, or a local Hugging Face tokenizer directory (default embedded)")
    a("--val-fraction", type=check.held_out_fraction, default=d.val_fraction,
      help=f"last fraction of the file held out for validation (default {d.val_fraction})")
    a("--n-blocks", type=check.positive_int, default=d.n_blocks, help=f"Transformer blocks (default {d.n_blocks})")
    a("--hidden-dim", type=check.positive_int, default=d.hidden_dim, help=f"model width (default {d.hidden_dim})")
    a("--n-heads", type=check.positive_int, default=d.n_heads, help=f"attention heads (default {d.n_heads})")
    a("--cond-dim", type=check.positive_int, default=d.cond_dim,
      help=f"MDLM conditioning width (default {d.cond_dim})")
    a("--length", type=check.positive_int, default=d.length, help=f"sequence length in tokens (default {d.length})")
    a("--dropout", type=check.non_negative_float, default=d.dropout, help=f"dropout rate (default {d.dropout})")
    a("--time-conditioning", action="store_true", help="MDLM: condition on sigma(t)")
    a("--untied", action="store_true", help="judge: untie the head from the token embedding")
    a("--batch-size", type=check.positive_int, default=d.batch_size,
      help=f"sequences per step (default {d.batch_size})")
    a("--lr", type=check.positive_float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    a("--betas", type=check.fraction, nargs=2, default=list(d.betas), metavar=("B1", "B2"),
      help=f"AdamW betas (default {d.betas[0]} {d.betas[1]})")
    a("--weight-decay", type=check.non_negative_float, default=d.weight_decay,
      help=f"AdamW weight decay (default {d.weight_decay})")
    a("--warmup-steps", type=check.non_negative_int, default=d.warmup_steps,
      help=f"linear warmup steps (default {d.warmup_steps})")
    a("--lr-schedule", choices=["cosine", "constant"], default=d.lr_schedule,
      help=f"learning-rate schedule after warmup (default {d.lr_schedule})")
    a("--decay-steps", type=check.positive_int, default=None, help="cosine horizon (default: --max-steps)")
    a("--min-lr-ratio", type=check.fraction, default=d.min_lr_ratio,
      help=f"cosine floor as a fraction of --lr (default {d.min_lr_ratio})")
    a("--grad-clip", type=check.non_negative_float, default=d.grad_clip,
      help=f"gradient-norm clip (default {d.grad_clip})")
    a("--ema-decay", type=check.fraction, default=d.ema_decay,
      help=f"EMA decay of the exported weights (default {d.ema_decay})")
    a("--no-antithetic", action="store_true", help="MDLM: plain uniform t instead of antithetic")
    a("--max-steps", type=check.positive_int, default=d.max_steps, help=f"training steps (default {d.max_steps})")
    a("--eval-every", type=check.positive_int, default=d.eval_every,
      help=f"steps between validations (default {d.eval_every})")
    a("--eval-batches", type=check.non_negative_int, default=d.eval_batches,
      help=f"validation batches per periodic eval, 0 = all; the final eval uses all (default {d.eval_batches})")
    a("--save-every", type=check.positive_int, default=d.save_every,
      help=f"steps between saves of state.pt (default {d.save_every})")
    a("--log-every", type=check.positive_int, default=d.log_every,
      help=f"steps between metrics rows (default {d.log_every})")
    a("--export-val-passes", type=check.positive_int, default=d.export_val_passes,
      help=f"MDLM: noise draws per validation window for the exported card (default {d.export_val_passes})")
    a("--seed", type=check.seed, default=d.seed, help=f"seed of batches, masks and dropout (default {d.seed})")
    a("--threads", type=check.positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    a("--amp", choices=["none", "bf16"], default=d.amp,
      help="bf16 autocast for the matmuls (fp32 weights); about 2x faster on CPUs with "
           "avx512_bf16/AMX. The exported card's validation loss is always computed in fp32 (default none)")
    a("--device", default=d.device, help=f"torch device to train on: cpu, cuda or cuda:N (default {d.device})")
    a("--time-budget", type=check.positive_float, default=None, metavar="MINUTES",
      help="stop cleanly (state saved) after this many minutes; rerun to continue (default: no limit)")
    a("--export", default=None, metavar="DIR",
      help="after training reaches --max-steps, export the EMA model (+ card) to DIR (default: no export)")
    a("--export-dtype", choices=["fp32", "bf16"], default="fp32",
      help="weights dtype of the export; bf16 halves the size, and the card is measured on it (default fp32)")
    a("--export-no-tokenizer", action="store_true",
      help="do not copy tokenizer.json into the export (e.g. when it ships once beside it)")
    a("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_train_arguments(args: argparse.Namespace) -> None:
    """Everything ``train`` can check before it builds a model: paths, device, tokenizer spec."""
    from mdlm_fast import cli_validate as check

    check.text("--data", args.data)
    check.output_dir("--run-dir", args.run_dir)
    if args.export is not None:
        check.output_dir("--export", args.export)
    check.tokenizer("--tokenizer", args.tokenizer)
    check.device("--device", args.device)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data, kind=args.kind, tokenizer=args.tokenizer, val_fraction=args.val_fraction,
        n_blocks=args.n_blocks, hidden_dim=args.hidden_dim, n_heads=args.n_heads,
        cond_dim=args.cond_dim, length=args.length, dropout=args.dropout,
        time_conditioning=args.time_conditioning, tie_embeddings=not args.untied,
        batch_size=args.batch_size, lr=args.lr, betas=tuple(args.betas),
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule, decay_steps=args.decay_steps,
        min_lr_ratio=args.min_lr_ratio, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
        antithetic=not args.no_antithetic, max_steps=args.max_steps,
        eval_every=args.eval_every, eval_batches=args.eval_batches or None,
        save_every=args.save_every, log_every=args.log_every,
        export_val_passes=args.export_val_passes, seed=args.seed, threads=args.threads,
        amp=args.amp, device=args.device)


def run_train(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """``mdlm-fast train``: train/resume, then export if asked and finished. Returns 0.

    User errors raise :class:`TrainError` / :class:`TokenizerError` / FileNotFoundError (all
    one-line); the CLI prints them without a traceback.
    """
    check_train_arguments(args)
    config = config_from_args(args)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "mdlm-fast " + shlex.join(argv) if argv else None
    budget = None if args.time_budget is None else args.time_budget * 60.0
    result = train(config, args.run_dir, time_budget_s=budget, progress=not args.no_progress,
                   command=command)
    summary = {"run_dir": result.run_dir, "step": result.step, "max_steps": config.max_steps,
               "stopped": result.stopped, "tokens_seen": result.tokens_seen,
               "wall_time_s": round(result.wall_time_s, 1), "last_loss": result.last_loss,
               "val_loss": result.val_loss}
    if args.export and result.step >= config.max_steps:
        info = export(args.run_dir, args.export, dtype=args.export_dtype,
                      include_tokenizer=not args.export_no_tokenizer)
        summary["export"] = args.export
        summary["export_val_loss"] = info["val_loss"]
    elif args.export:
        summary["export"] = "not yet: training has not reached --max-steps"
    print(json.dumps(summary))
    return 0


def add_tokenizer_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``mdlm-fast tokenizer``."""
    from mdlm_fast import cli_validate as check

    parser.add_argument("--data", required=True, help="UTF-8 text file, or embedded:sample")
    parser.add_argument("--vocab-size", type=check.positive_int, default=8192,
                        help="BPE ids including <|endoftext|>; [MASK] is appended after them (default 8192)")
    parser.add_argument("--out", required=True, help="tokenizer.json to write")
    parser.add_argument("--val-fraction", type=check.held_out_fraction, default=0.05,
                        help="tail of the file left out of tokenizer training (default 0.05)")
    return parser


def run_train_tokenizer(args: argparse.Namespace) -> int:
    """``mdlm-fast tokenizer``: train the byte-level BPE and write it. Returns 0."""
    from mdlm_fast import cli_validate as check
    from mdlm_fast.data import resolve_text

    check.text("--data", args.data)
    check.output_file("--out", args.out)
    if args.vocab_size < 258:
        raise check.CliError(f"--vocab-size must be at least 258 (256 bytes, <|endoftext|> and one merge), "
                             f"got {args.vocab_size}")
    tok = train_bpe_tokenizer(resolve_text(args.data), args.vocab_size, args.out,
                              val_fraction=args.val_fraction)
    print(json.dumps({"out": str(args.out), "vocab_size": tok.vocab_size, "mask_id": tok.mask_id,
                      "eos_id": tok.eos_id, "sha256": tok.fingerprint}))
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """Run ``train`` on its own (``python -m mdlm_fast.train ...``)."""
    from mdlm_fast.cli_validate import OneLineParser

    parser = add_train_arguments(OneLineParser(prog="mdlm-fast train"))
    args = parser.parse_args(argv)
    try:
        return run_train(args, argv=["train", *(sys.argv[1:] if argv is None else argv)])
    except (ValueError, FileNotFoundError) as e:  # TrainError, TokenizerError, CliError
        print(f"mdlm-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(train_main())

"""The training loop: MDLM denoisers and the causal-LM judge, resumable, with EMA and validation.

Python API: :func:`train` here, :class:`~mdlm_fast.training.config.TrainConfig`,
:func:`~mdlm_fast.training.export.export`, and the losses in :mod:`mdlm_fast.training.objectives`.
The ``mdlm-fast train`` and ``mdlm-fast tokenizer`` commands are in :mod:`mdlm_fast.cli.train`.

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

import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from mdlm_fast.models.dit import DiT
from mdlm_fast.schedules.noise import LogLinearNoise
from mdlm_fast.text.data import Corpus, derive_seed, load_corpus
from mdlm_fast.text.tokenizer import TextTokenizer, load_tokenizer
from mdlm_fast.training.config import (
    METRICS_NAME,
    RESUMABLE_FIELDS,
    STATE_FORMAT,
    STATE_NAME,
    TOKENIZER_COPY,
    TrainConfig,
    TrainError,
    TrainResult,
)
from mdlm_fast.training.objectives import (
    TrainModel,
    autocast,
    build_model,
    evaluate,
    judge_loss,
    mdlm_loss,
    sample_noise,
)
from mdlm_fast.util.atomic import atomic_file


def validation_windows(corpus: Corpus, config: TrainConfig) -> torch.Tensor:
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
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=1e-8)


class _EMA:
    """EMA of parameters (buffers copied), kept in a second model used for eval and export."""

    def __init__(self, model: TrainModel) -> None:
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


def load_state(run_dir: Path) -> dict | None:
    path = run_dir / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainError(f"{path} is not a mdlm_fast training state (format {STATE_FORMAT})")
    return state


def _check_resume(saved: dict, config: TrainConfig, run_dir: Path) -> None:
    diffs = [
        f"{k}: {saved[k]!r} -> {v!r}"
        for k, v in config.to_dict().items()
        if k not in RESUMABLE_FIELDS and k in saved and saved[k] != v
    ]
    if diffs:
        raise TrainError(
            f"run directory {run_dir} was started with other settings "
            f"({'; '.join(diffs)}); use a new --run-dir or the same arguments"
        )
    if config.lr_schedule == "cosine" and config.decay_steps is None and saved.get("max_steps") != config.max_steps:
        warnings.warn(
            f"max_steps changed from {saved.get('max_steps')} to {config.max_steps} "
            f"with a cosine schedule over max_steps: the learning-rate curve differs "
            f"from an uninterrupted run (set decay_steps to fix the horizon)",
            stacklevel=2,
        )


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


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    time_budget_s: float | None = None,
    progress: bool = True,
    command: str | None = None,
    tokenizer: TextTokenizer | None = None,
    callback=None,
) -> TrainResult:
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
    saved = load_state(run_dir)
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
    if from_copy and saved is not None and saved.get("tokenizer_name"):
        tokenizer.name = saved["tokenizer_name"]  # loaded from the run's copy; keep the origin
    corpus = load_corpus(config.data, tokenizer, val_fraction=config.val_fraction, cache_dir=run_dir / "cache")
    if saved is not None and saved.get("data_sha256") != corpus.data_sha256:
        raise TrainError(f"{config.data} changed since run {run_dir} was started (sha256 differs)")
    if saved is None and hasattr(tokenizer.backend, "to_str"):
        tokenizer.save(run_dir / TOKENIZER_COPY)
    val_windows = validation_windows(corpus, config)

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
            torch.save(
                {
                    "format": STATE_FORMAT,
                    "config": config.to_dict(),
                    "step": step,
                    "tokens_seen": tokens_seen,
                    "wall_time_s": wall_before + (time.time() - t_start),
                    "best_val_loss": best_val,
                    "val_loss": last_val,
                    "commands": commands,
                    "log_window": list(window),
                    "model": model.state_dict(),
                    "ema": ema.model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "data": {"seed": config.seed, "next_step": step}},
                    "tokenizer_fingerprint": tokenizer.fingerprint,
                    "tokenizer_name": tokenizer.name,
                    "data_sha256": corpus.data_sha256,
                    "data_path": str(config.data),
                    "n_params": sum(p.numel() for p in model.parameters()),
                },
                f,
            )

    t_start = time.time()
    stopped = "max_steps"
    new_rows: list[dict] = []
    last_loss = None
    window_t0, window_step0 = time.time(), step
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=config.max_steps,
            initial=step,
            desc=f"train {config.kind}",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )
    try:
        with _StopFlag() as stop, open(metrics_path, "a", encoding="utf-8") as mlog:
            while step < config.max_steps:
                # ---- one step (everything random is keyed by (seed, step)) ----
                lr = lr_at(config, step)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                x = _train_batch(corpus, config, step).to(device)
                torch.manual_seed(derive_seed(config.seed, "dropout", step))
                with autocast(config):
                    if isinstance(model, DiT):  # kind "mdlm"
                        gen = torch.Generator().manual_seed(derive_seed(config.seed, "noise", step))
                        t, masked = sample_noise(
                            x, noise, gen, antithetic=config.antithetic, sampling_eps=config.sampling_eps
                        )
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
                    val = evaluate(ema.model, config, val_windows, max_batches=config.eval_batches)
                    window_t0 += time.time() - t_eval  # tokens/s counts training time only
                    last_val = val
                    best_val = val if best_val is None else min(best_val, val)
                if step % config.log_every == 0 or val is not None or step == config.max_steps:
                    now = time.time()
                    row = {
                        "step": step,
                        "loss": window[0] / window[1],
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "tokens_seen": tokens_seen,
                        "tokens_per_s": config.tokens_per_step * (step - window_step0) / max(now - window_t0, 1e-9),
                        "wall_time_s": wall_before + (now - t_start),
                    }
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
                        post = {"loss": f"{row['loss']:.3f}", "tok/s": f"{row['tokens_per_s']:.0f}"}
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
        print(
            f"{name}: state saved at step {step}/{config.max_steps} in {run_dir}; run the same command to resume",
            file=sys.stderr,
        )
    return TrainResult(
        step=step,
        tokens_seen=tokens_seen,
        wall_time_s=wall_before + (time.time() - t_start),
        stopped=stopped,
        last_loss=last_loss,
        val_loss=last_val,
        best_val_loss=best_val,
        run_dir=str(run_dir),
        metrics=new_rows,
    )

"""Export of a finished run: the EMA weights as a model directory, ``training.json`` and a model card."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from mdlm_fast.analysis.judge import save_judge
from mdlm_fast.models.checkpoint import save_denoiser
from mdlm_fast.models.checkpoints.hf import check_replaceable
from mdlm_fast.models.dit import DiT
from mdlm_fast.text.data import load_corpus
from mdlm_fast.text.tokenizer import load_tokenizer
from mdlm_fast.training.config import STATE_NAME, TOKENIZER_COPY, TrainConfig, TrainError
from mdlm_fast.training.loop import load_state, validation_windows
from mdlm_fast.training.objectives import build_model, evaluate
from mdlm_fast.util.atomic import atomic_directory


def export(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_passes: int | None = None,
    dtype: str = "fp32",
    include_tokenizer: bool = True,
) -> dict:
    """Write the EMA weights of ``run_dir`` as a model directory, with a card and the tokenizer.

    MDLM: :func:`~mdlm_fast.models.checkpoint.save_denoiser` layout; judge:
    :func:`~mdlm_fast.analysis.judge.save_judge` layout. Adds ``MODEL_CARD.md``, ``training.json`` (the
    numbers of the card) and, with ``include_tokenizer``, ``tokenizer.json``. ``dtype="bf16"``
    stores the weights in bfloat16 (half the size; the loaders upcast to fp32). The validation
    loss is recomputed in fp32 on the whole validation split with the weights as stored (EMA,
    rounded to bf16 if so exported; ``val_passes`` noise draws per window for MDLM). The
    directory is replaced atomically. Returns the card's numbers.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    saved = load_state(run_dir)
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
    corpus = load_corpus(config.data, tokenizer, val_fraction=config.val_fraction, cache_dir=run_dir / "cache")
    windows = validation_windows(corpus, config)
    passes = (val_passes or config.export_val_passes) if config.kind == "mdlm" else 1
    t0 = time.time()
    val = evaluate(model, config, windows, passes=passes, amp=False)
    eval_s = time.time() - t0

    info = {
        "kind": config.kind,
        "step": int(saved["step"]),
        "max_steps": config.max_steps,
        "tokens_seen": int(saved["tokens_seen"]),
        "wall_time_s": float(saved["wall_time_s"]),
        "val_loss": val,
        "val_windows": int(windows.shape[0]),
        "val_passes": passes,
        "weights_dtype": dtype,
        "val_tokens": int(windows.numel()),
        "eval_time_s": eval_s,
        "data": Path(config.data).name,
        "data_sha256": corpus.data_sha256,
        "train_tokens": int(corpus.train.numel()),
        "val_fraction": config.val_fraction,
        "tokenizer": saved.get("tokenizer_name"),
        "tokenizer_sha256": tokenizer.fingerprint,
        "n_params": sum(p.numel() for p in model.parameters()),
        "commands": saved.get("commands", []),
        "config": saved["config"],
        "torch": torch.__version__,
    }
    if config.kind == "mdlm":
        info["val_ppl_bound"] = math.exp(val)
    else:
        info["val_ppl"] = math.exp(val)

    check_replaceable(out_dir)
    with atomic_directory(out_dir, tag="export") as staging:
        if dtype == "bf16":
            model.to(torch.bfloat16)
        if isinstance(model, DiT):  # kind "mdlm"
            save_denoiser(model, staging)
        else:
            save_judge(model, staging)
        if include_tokenizer and hasattr(tokenizer.backend, "to_str"):
            tokenizer.save(staging / TOKENIZER_COPY)
        (staging / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (staging / "MODEL_CARD.md").write_text(_model_card(info, config), encoding="utf-8")
    return info


def _model_card(info: dict, config: TrainConfig) -> str:
    kind = (
        "MDLM denoiser (DiT, SUBS, log-linear noise)"
        if config.kind == "mdlm"
        else "causal language model (GPT-style judge)"
    )
    cmds = info["commands"] or ["(Python API; see the config below)"]
    lines = [
        f"# {kind}: {config.n_blocks} blocks, d={config.hidden_dim}, {config.n_heads} heads",
        "",
        f"- **Parameters:** {info['n_params']:,} (stored as {info['weights_dtype']})",
        f"- **Data:** `{info['data']}` (sha256 `{info['data_sha256']}`); training split "
        f"{info['train_tokens']:,} tokens; validation = the last {config.val_fraction:.0%} of the "
        f"file as one contiguous block (see `mdlm_fast/text/data.py`)",
        f"- **Tokenizer:** {info['tokenizer']} (sha256 of its JSON `{info['tokenizer_sha256'][:16]}...`)",
        f"- **Steps:** {info['step']:,} of {config.max_steps:,}, batch {config.batch_size} x {config.length} tokens",
        f"- **Tokens seen:** {info['tokens_seen']:,}",
        f"- **Training wall time:** {info['wall_time_s'] / 60:.1f} min (torch {info['torch']})",
    ]
    if config.kind == "mdlm":
        lines.append(
            f"- **Validation loss (NELBO, EMA weights):** {info['val_loss']:.4f} "
            f"nats/token -> perplexity bound exp(loss) = {info['val_ppl_bound']:.2f} "
            f"({info['val_windows']} windows x {info['val_passes']} noise draws, "
            f"fixed seed)"
        )
    else:
        lines.append(
            f"- **Validation loss (EMA weights):** {info['val_loss']:.4f} nats/token "
            f"-> perplexity {info['val_ppl']:.2f} ({info['val_windows']} windows of "
            f"{config.length + 1} tokens)"
        )
    lines += (
        ["", "## Command", "", "```"]
        + cmds
        + [
            "```",
            "",
            "Rerunning the command (same run directory) resumes; with a fresh run directory "
            "it retrains from scratch and reproduces these figures on the same machine type "
            "and thread count (every batch, mask and dropout draw is seeded by (seed, step)).",
            "",
            "## Config",
            "",
            "```json",
            json.dumps(info["config"], indent=2, sort_keys=True),
            "```",
            "",
        ]
    )
    return "\n".join(lines)

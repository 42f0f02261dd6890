"""``mdlm-fast train`` and ``mdlm-fast tokenizer``: their flags and what they run."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Sequence

from mdlm_fast.cli import validate as check
from mdlm_fast.text.data import resolve_text
from mdlm_fast.training.bpe import train_bpe_tokenizer
from mdlm_fast.training.config import TrainConfig
from mdlm_fast.training.export import export
from mdlm_fast.training.loop import train


def register(sub) -> None:
    add_train_arguments(sub.add_parser("train", help="train an MDLM or a causal-LM judge on a text file"))
    sub.choices["train"].set_defaults(func=lambda args: run_train(args, sys.argv[1:]))
    add_tokenizer_arguments(sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer"))
    sub.choices["tokenizer"].set_defaults(func=run_train_tokenizer)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``mdlm-fast train`` (defaults: the embedded heavy MDLM's settings)."""
    d = TrainConfig(data="")
    a = parser.add_argument
    a("--kind", choices=["mdlm", "judge"], default=d.kind, help="what to train (default mdlm)")
    a(
        "--data",
        required=True,
        help="UTF-8 text file to train on, e.g. the full corpus, or embedded:sample "
        "(100k characters shipped for quick runs)",
    )
    a("--run-dir", required=True, help="run directory (state.pt, metrics.jsonl); resumed if present")
    a(
        "--tokenizer",
        default=d.tokenizer,
        help="'embedded', a tokenizer.json, or a local Hugging Face tokenizer directory (default embedded)",
    )
    a(
        "--val-fraction",
        type=check.held_out_fraction,
        default=d.val_fraction,
        help=f"last fraction of the file held out for validation (default {d.val_fraction})",
    )
    # Flags that set one TrainConfig field of the same name, with its default.
    for flag, kind, what in (
        ("--n-blocks", check.positive_int, "Transformer blocks"),
        ("--hidden-dim", check.positive_int, "model width"),
        ("--n-heads", check.positive_int, "attention heads"),
        ("--cond-dim", check.positive_int, "MDLM conditioning width"),
        ("--length", check.positive_int, "sequence length in tokens"),
        ("--dropout", check.non_negative_float, "dropout rate"),
        ("--batch-size", check.positive_int, "sequences per step"),
        ("--lr", check.positive_float, "peak learning rate"),
        ("--weight-decay", check.non_negative_float, "AdamW weight decay"),
        ("--warmup-steps", check.non_negative_int, "linear warmup steps"),
        ("--min-lr-ratio", check.fraction, "cosine floor as a fraction of --lr"),
        ("--grad-clip", check.non_negative_float, "gradient-norm clip"),
        ("--ema-decay", check.fraction, "EMA decay of the exported weights"),
        ("--max-steps", check.positive_int, "training steps"),
        ("--eval-every", check.positive_int, "steps between validations"),
        (
            "--eval-batches",
            check.non_negative_int,
            "validation batches per periodic eval, 0 = all; the final eval uses all",
        ),
        ("--save-every", check.positive_int, "steps between saves of state.pt"),
        ("--log-every", check.positive_int, "steps between metrics rows"),
        ("--export-val-passes", check.positive_int, "MDLM: noise draws per validation window for the exported card"),
    ):
        default = getattr(d, flag[2:].replace("-", "_"))
        a(flag, type=kind, default=default, help=f"{what} (default {default})")
    a("--time-conditioning", action="store_true", help="MDLM: condition on sigma(t)")
    a("--untied", action="store_true", help="judge: untie the head from the token embedding")
    a(
        "--betas",
        type=check.fraction,
        nargs=2,
        default=list(d.betas),
        metavar=("B1", "B2"),
        help=f"AdamW betas (default {d.betas[0]} {d.betas[1]})",
    )
    a(
        "--lr-schedule",
        choices=["cosine", "constant"],
        default=d.lr_schedule,
        help=f"learning-rate schedule after warmup (default {d.lr_schedule})",
    )
    a("--decay-steps", type=check.positive_int, default=None, help="cosine horizon (default: --max-steps)")
    a("--no-antithetic", action="store_true", help="MDLM: plain uniform t instead of antithetic")
    a("--seed", type=check.seed, default=d.seed, help=f"seed of batches, masks and dropout (default {d.seed})")
    a("--threads", type=check.positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    a(
        "--amp",
        choices=["none", "bf16"],
        default=d.amp,
        help="bf16 autocast for the matmuls (fp32 weights); about 2x faster on CPUs with "
        "avx512_bf16/AMX. The exported card's validation loss is always computed in fp32 (default none)",
    )
    a("--device", default=d.device, help=f"torch device to train on: cpu, cuda or cuda:N (default {d.device})")
    a(
        "--time-budget",
        type=check.positive_float,
        default=None,
        metavar="MINUTES",
        help="stop cleanly (state saved) after this many minutes; rerun to continue (default: no limit)",
    )
    a(
        "--export",
        default=None,
        metavar="DIR",
        help="after training reaches --max-steps, export the EMA model (+ card) to DIR (default: no export)",
    )
    a(
        "--export-dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="weights dtype of the export; bf16 halves the size, and the card is measured on it (default fp32)",
    )
    a(
        "--export-no-tokenizer",
        action="store_true",
        help="do not copy tokenizer.json into the export (e.g. when it ships once beside it)",
    )
    a("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_train_arguments(args: argparse.Namespace) -> None:
    """Everything ``train`` can check before it builds a model: paths, device, tokenizer spec."""
    check.text("--data", args.data)
    check.output_dir("--run-dir", args.run_dir)
    if args.export is not None:
        check.output_dir("--export", args.export)
    check.tokenizer("--tokenizer", args.tokenizer)
    check.device("--device", args.device)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data,
        kind=args.kind,
        tokenizer=args.tokenizer,
        val_fraction=args.val_fraction,
        n_blocks=args.n_blocks,
        hidden_dim=args.hidden_dim,
        n_heads=args.n_heads,
        cond_dim=args.cond_dim,
        length=args.length,
        dropout=args.dropout,
        time_conditioning=args.time_conditioning,
        tie_embeddings=not args.untied,
        batch_size=args.batch_size,
        lr=args.lr,
        betas=tuple(args.betas),
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule,
        decay_steps=args.decay_steps,
        min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip,
        ema_decay=args.ema_decay,
        antithetic=not args.no_antithetic,
        max_steps=args.max_steps,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches or None,
        save_every=args.save_every,
        log_every=args.log_every,
        export_val_passes=args.export_val_passes,
        seed=args.seed,
        threads=args.threads,
        amp=args.amp,
        device=args.device,
    )


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
    result = train(config, args.run_dir, time_budget_s=budget, progress=not args.no_progress, command=command)
    summary = {
        "run_dir": result.run_dir,
        "step": result.step,
        "max_steps": config.max_steps,
        "stopped": result.stopped,
        "tokens_seen": result.tokens_seen,
        "wall_time_s": round(result.wall_time_s, 1),
        "last_loss": result.last_loss,
        "val_loss": result.val_loss,
    }
    if args.export and result.step >= config.max_steps:
        info = export(
            args.run_dir, args.export, dtype=args.export_dtype, include_tokenizer=not args.export_no_tokenizer
        )
        summary["export"] = args.export
        summary["export_val_loss"] = info["val_loss"]
    elif args.export:
        summary["export"] = "not yet: training has not reached --max-steps"
    print(json.dumps(summary))
    return 0


def add_tokenizer_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``mdlm-fast tokenizer``."""
    parser.add_argument("--data", required=True, help="UTF-8 text file, or embedded:sample")
    parser.add_argument(
        "--vocab-size",
        type=check.positive_int,
        default=8192,
        help="BPE ids including <|endoftext|>; [MASK] is appended after them (default 8192)",
    )
    parser.add_argument("--out", required=True, help="tokenizer.json to write")
    parser.add_argument(
        "--val-fraction",
        type=check.held_out_fraction,
        default=0.05,
        help="tail of the file left out of tokenizer training (default 0.05)",
    )
    return parser


def run_train_tokenizer(args: argparse.Namespace) -> int:
    """``mdlm-fast tokenizer``: train the byte-level BPE and write it. Returns 0."""

    check.text("--data", args.data)
    check.output_file("--out", args.out)
    if args.vocab_size < 258:
        raise check.CliError(
            f"--vocab-size must be at least 258 (256 bytes, <|endoftext|> and one merge), got {args.vocab_size}"
        )
    tok = train_bpe_tokenizer(resolve_text(args.data), args.vocab_size, args.out, val_fraction=args.val_fraction)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "vocab_size": tok.vocab_size,
                "mask_id": tok.mask_id,
                "eos_id": tok.eos_id,
                "sha256": tok.fingerprint,
            }
        )
    )
    return 0

"""Loading what the commands work on -- denoisers, tokenizers, judges -- with errors that name the flag."""

from __future__ import annotations

from mdlm_fast.cli import validate as check
from mdlm_fast.cli.validate import CliError


def load_model(path: str, flag: str, args):
    """The denoiser at ``path`` (a checkpoint spec), read as ``--trust-checkpoint`` / ``--mask-index`` say."""
    from mdlm_fast.models.checkpoint import MASK_INDEX_ARGUMENT, CheckpointError, load_denoiser

    try:
        return load_denoiser(
            check.checkpoint(flag, path), trust_checkpoint=args.trust_checkpoint, mask_index=args.mask_index
        )
    except CheckpointError as exc:
        if args.mask_index is not None and str(exc).startswith(MASK_INDEX_ARGUMENT):
            raise CliError(f"--mask-index {str(exc)[len(MASK_INDEX_ARGUMENT) :]}") from None
        raise


def check_scheduled_pair(models, names) -> None:
    """Scheduled models must share vocabulary and mask id with the heavy one (index 0): the
    library's check, its error naming the flags and paths."""
    from mdlm_fast.models.denoiser import as_denoisers

    flags = ["--heavy"] + ["--light"] * (len(names) - 1)
    try:
        as_denoisers(models, flags)
    except ValueError as exc:
        given = ", ".join(f"{flag} {name}" for flag, name in zip(flags, names))
        raise CliError(f"{exc} ({given})") from None


def load_tokenizer(spec: str, model):
    """The tokenizer ``spec``, checked against ``model``'s vocabulary and mask id."""
    from mdlm_fast.text.tokenizer import check_compatible
    from mdlm_fast.text.tokenizer import load_tokenizer as load

    tokenizer = load(check.tokenizer("--tokenizer", spec))
    check_compatible(tokenizer, model.config.vocab_size, model.config.mask_index)
    return tokenizer


def load_judge(spec: str, judge_tokenizer: str | None, device=None):
    """``(judge, judge_tokenizer)`` for a ``--judge`` spec other than ``none``."""
    from mdlm_fast.analysis.metrics import load_judge_and_tokenizer

    check.judge("--judge", spec)
    check.tokenizer("--judge-tokenizer", judge_tokenizer)
    return load_judge_and_tokenizer(spec, judge_tokenizer, device=device)

"""The ``mdlm-fast`` command line.

Subcommands: ``generate`` (the main job), ``info`` (what this build holds); ``train`` and
``tokenizer`` when the training module is present. Results go to stdout, progress to stderr;
bad arguments end with a one-line error and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import torch


class CliError(ValueError):
    """A user error: printed as one line, no traceback. A ValueError, so that ``main`` catches it
    even where ``python -m mdlm_fast.cli`` has loaded this module twice (as ``__main__`` too)."""


def _load_models(args) -> list:
    from mdlm_fast.checkpoint import load_denoiser

    heavy = args.heavy or "embedded:heavy"
    light = args.light if args.light is not None else ("embedded:light" if args.heavy is None else None)
    paths = [heavy] + ([light] if light else [])
    if args.heavy is None and args.light is not None:
        raise CliError("--light needs --heavy as well")
    models = []
    for path in paths:
        if not str(path).startswith("embedded:") and not os.path.exists(path):
            raise CliError(f"no checkpoint at {path}")
        models.append(load_denoiser(path))
    return models


def _load_tokenizer(args, models):
    from mdlm_fast.tokenizer import check_compatible, load_tokenizer

    spec = args.tokenizer or ("embedded" if args.heavy is None else None)
    if spec is None:
        return None
    if spec != "embedded" and not os.path.exists(spec):
        raise CliError(f"no tokenizer at {spec}")
    tokenizer = load_tokenizer(spec)
    config = models[0].config
    check_compatible(tokenizer, config.vocab_size, config.mask_index)
    return tokenizer


def _quality(args, texts, tokens, device) -> dict:
    from mdlm_fast import eval as ev

    report = {"unigram_entropy": ev.unigram_entropy(tokens)}
    if args.judge == "none" or not texts:
        return report
    from mdlm_fast.judge import load_judge
    from mdlm_fast.tokenizer import load_tokenizer

    judge_path = args.judge or "embedded"
    if judge_path != "embedded" and not os.path.exists(judge_path):
        raise CliError(f"no judge at {judge_path}")
    judge = load_judge(judge_path, device=device)
    judge_tokenizer = load_tokenizer(args.judge_tokenizer or ("embedded" if judge_path == "embedded" else judge_path))
    gen = ev.generative_perplexity(texts, judge, judge_tokenizer)
    report.update(gen)
    report["judge"] = judge_path
    return report


def _savings(stats) -> dict:
    """FLOPs savings of a run: the schedule's prediction (eq. 3, blocks only), the schedule's saving
    on the rows actually run, and the whole run against a reference-style all-heavy run."""
    executed, analytic = stats.executed_flops, stats.analytic_flops
    if not executed or not analytic:
        return {}
    all_heavy = analytic["total"] / (1 - analytic["analytic_saving"]) if analytic["analytic_saving"] < 1 else None
    return {
        "predicted_block_saving": stats.predicted_saving,
        "executed_flops": executed["total"],
        "reference_all_heavy_flops": all_heavy,
        "executed_saving_vs_reference_all_heavy": 1 - executed["total"] / all_heavy if all_heavy else None,
    }


def _cmd_generate(args) -> int:
    import mdlm_fast as mf
    from mdlm_fast.schedule import ModelSchedule, ScheduleError

    from mdlm_fast.compute_dtype import resolve_dtype

    models = _load_models(args)
    device = torch.device(args.device) if args.device else torch.device("cpu")
    models = [m.to(device=device, dtype=resolve_dtype(args.dtype, device).dtype) for m in models]
    tokenizer = _load_tokenizer(args, models)
    length = args.length or models[0].config.model_length
    steps = args.steps or length
    try:
        schedule = ModelSchedule.coerce(args.schedule if len(models) > 1 else "heavy", steps)
        schedule.validate_for(len(models))
    except ScheduleError as exc:
        raise CliError(str(exc)) from None
    prefix = None
    if args.prefix is not None:
        if tokenizer is None:
            raise CliError("--prefix needs a tokenizer (--tokenizer PATH)")
        prefix = tokenizer.encode(args.prefix)
        if len(prefix) > length:
            raise CliError(f"--prefix is {len(prefix)} tokens but --length is {length}")
    result = mf.sample(models, steps=steps, batch_size=args.batch_size, length=length, schedule=schedule,
                       sampler=args.sampler, seed=args.seed, prefix=prefix, precision=args.precision,
                       device=device, progress=not args.json, dtype=args.dtype)
    stats = result.stats
    tokens = result.tokens.tolist()
    mask = models[0].config.mask_index
    texts = [tokenizer.decode(row, mask_id=mask) for row in tokens] if tokenizer is not None else []
    report = {
        "models": [args.heavy or "embedded:heavy"] + ([args.light or "embedded:light"] if len(models) > 1 else []),
        "blocks": [m.config.n_blocks for m in models],
        "stats": stats.as_dict(),
        "flops": _savings(stats),
        "quality": _quality(args, texts, tokens, device),
        "samples": [{"tokens": row, **({"text": text} if texts else {})}
                    for row, text in zip(tokens, texts or [None] * len(tokens))],
    }
    if args.out:
        from mdlm_fast.atomic import atomic_file

        with atomic_file(args.out) as f:
            for sample in report["samples"]:
                f.write(json.dumps(sample) + "\n")
    if args.json:
        print(json.dumps(report))
        return 0
    _print_report(report, stats)
    return 0


def _print_report(report: dict, stats) -> None:
    for i, sample in enumerate(report["samples"]):
        body = sample.get("text") if "text" in sample else str(sample["tokens"])
        print(f"--- sample {i} ---\n{body.strip()}\n")
    flops, quality = report["flops"], report["quality"]
    blocks = "/".join(str(b) for b in report["blocks"])
    print(f"models {blocks} blocks, sampler {stats.sampler} ({stats.precision}), dtype {stats.dtype} "
          f"({stats.dtype_reason}), {stats.steps} steps, "
          f"length {stats.length}, batch {stats.batch_size}, schedule {stats.schedule}")
    print(f"wall time {stats.wall_time_s:.2f} s; forwards per model {stats.forwards} "
          f"({stats.forwards_per_step:.2f} per step), rows {stats.rows}, head positions {stats.head_positions}")
    if flops:
        print(f"FLOPs: predicted block saving {flops['predicted_block_saving']:.1%} (eq. 3); executed "
              f"{flops['executed_flops']:.3g} vs {flops['reference_all_heavy_flops']:.3g} for the reference sampler "
              f"all-heavy ({flops['executed_saving_vs_reference_all_heavy']:.1%} saved)")
    line = f"unigram entropy {quality['unigram_entropy']:.3f} nats"
    if "gen_ppl" in quality:
        line = (f"gen-PPL {quality['gen_ppl']:.1f} ± {quality['gen_ppl_se']:.1f} (judge {quality['judge']}, "
                f"{quality['samples']} samples, {quality['tokens']} tokens); ") + line
    print(line)


def _cmd_info(args) -> int:
    import mdlm_fast as mf

    info = {"version": mf.__version__, "torch": torch.__version__, **mf.build_info()}
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdlm-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="sample text from a heavy/light pair under a model schedule")
    gen.add_argument("--heavy", help="heavy denoiser: HF-style directory or Lightning .ckpt (default: embedded)")
    gen.add_argument("--light", help="light denoiser, same vocabulary and mask id (default: embedded)")
    gen.add_argument("--tokenizer", help="'embedded', a tokenizer.json or a local HF tokenizer directory")
    gen.add_argument("--judge", help="gen-PPL judge: 'embedded' (default for embedded models), a judge "
                                     "directory, or 'none'")
    gen.add_argument("--judge-tokenizer", help="the judge's tokenizer (default: the judge's own)")
    gen.add_argument("--schedule", default="sandwich:0.25", help="schedule spec (default sandwich:0.25)")
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (default: the length)")
    gen.add_argument("--length", type=int, default=None, help="tokens per sample (default: model_length)")
    gen.add_argument("--batch-size", type=int, default=4)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--prefix", help="text to condition on (kept at the start of every sample)")
    gen.add_argument("--precision", default="fp64", choices=["fp64", "fp32-mdlm"])
    gen.add_argument("--sampler", default="fast", choices=["fast", "reference"])
    gen.add_argument("--device", default=None)
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                     help="compute dtype (default auto: bfloat16 where the CPU or GPU does it natively)")
    gen.add_argument("--out", help="write samples as JSON lines")
    gen.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    gen.set_defaults(func=_cmd_generate)

    info = sub.add_parser("info", help="version and compiled backends")
    info.set_defaults(func=_cmd_info)

    from mdlm_fast import train as training

    training.add_train_arguments(sub.add_parser("train", help="train an MDLM or a causal-LM judge on a text file"))
    sub.choices["train"].set_defaults(func=lambda args: training.run_train(args, sys.argv[1:]))
    training.add_tokenizer_arguments(sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer"))
    sub.choices["tokenizer"].set_defaults(func=training.run_train_tokenizer)

    from mdlm_fast import cli_analysis

    cli_analysis.register(sub)  # evaluate, importance, search, calibrate
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ValueError, FileNotFoundError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"mdlm-fast: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

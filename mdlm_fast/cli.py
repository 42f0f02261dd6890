"""The ``mdlm-fast`` command line.

Subcommands: ``generate`` (the main job), ``info`` (what this build holds); ``train`` and
``tokenizer`` when the training module is present. Results go to stdout, progress to stderr;
bad arguments end with a one-line error and exit status 2.
"""
from __future__ import annotations

import math
import os
import re
import sys
from typing import Sequence

from mdlm_fast import cli_validate as check
from mdlm_fast.cli_validate import CliError, OneLineParser
from mdlm_fast.json_output import dumps

DEFAULT_SCHEDULE = "sandwich:0.25"


def _check_generate_arguments(args) -> None:
    """Every check that needs no model: run before anything is loaded."""
    if args.heavy is None and args.light is not None:
        raise CliError("--light needs --heavy as well")
    two_models = args.heavy is None or args.light is not None
    if args.schedule is not None and not two_models:
        raise CliError(f"--schedule {args.schedule} needs two models to schedule: give --light as well")
    if args.schedule_file is not None:
        if args.schedule is not None:
            raise CliError("give --schedule or --schedule-file, not both")
        if not two_models:
            raise CliError(f"--schedule-file {args.schedule_file} needs two models to schedule: give --light as well")
        _read_schedule_file(args)
    check.checkpoint("--heavy", args.heavy or "embedded:heavy")
    if args.light is not None:
        check.checkpoint("--light", args.light)
    check.tokenizer("--tokenizer", args.tokenizer)
    if args.judge is not None:
        check.judge("--judge", args.judge)
    check.tokenizer("--judge-tokenizer", args.judge_tokenizer)
    if args.sampler != "reference" and args.precision != "fp64":
        raise CliError(f"--precision {args.precision} is for --sampler reference only "
                       f"(the {args.sampler} sampler draws exactly)")
    if args.sampler == "reference" and args.temperature != 1:
        raise CliError(f"--temperature {args.temperature}: the reference sampler is MDLM's and samples at "
                       f"temperature 1; use --sampler fast or confidence")
    if args.prefix is not None:
        if not args.prefix:
            raise CliError("--prefix is empty; give the text to start from, or leave --prefix out")
        try:
            args.prefix.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = args.prefix[exc.start].encode("utf-8", "surrogateescape")
            raise CliError(f"--prefix is not UTF-8 text (byte 0x{byte.hex()} at position {exc.start})") from None
    check.output_file("--out", args.out)
    args.device = check.device("--device", args.device)
    check.threads(args.threads)


def _load_models(args) -> list:
    from mdlm_fast.checkpoint import load_denoiser

    heavy = args.heavy or "embedded:heavy"
    light = args.light if args.light is not None else ("embedded:light" if args.heavy is None else None)
    paths = [heavy] + ([light] if light else [])
    return [load_denoiser(path, trust_checkpoint=args.trust_checkpoint, mask_index=args.mask_index)
            for path in paths]


def _load_tokenizer(args, models):
    from mdlm_fast.tokenizer import check_compatible, load_tokenizer

    spec = args.tokenizer or ("embedded" if args.heavy is None else None)
    if spec is None:
        return None
    tokenizer = load_tokenizer(spec)
    config = models[0].config
    check_compatible(tokenizer, config.vocab_size, config.mask_index)
    return tokenizer


def _load_judge(args, tokenizer, device):
    """``(judge, judge_tokenizer, name)``, or Nones where no gen-PPL is computed; loaded before
    sampling so that a bad judge costs no samples."""
    if args.judge == "none":
        return None, None, None
    if tokenizer is None:
        if args.judge is not None:
            raise CliError(f"--judge {args.judge} scores text, and these samples have no tokenizer to "
                           f"decode them: give --tokenizer as well (or --judge none)")
        return None, None, None
    from mdlm_fast.eval import load_judge_and_tokenizer

    name = args.judge or "embedded"
    judge, judge_tokenizer = load_judge_and_tokenizer(name, args.judge_tokenizer, device=device)
    return judge, judge_tokenizer, name


def _encode_prefix(args, tokenizer, length: int, mask_index: int):
    if args.prefix is None:
        return None
    if tokenizer is None:
        raise CliError("--prefix needs a tokenizer (--tokenizer PATH)")
    prefix = tokenizer.encode(args.prefix)
    if len(prefix) > length:
        raise CliError(f"--prefix is {len(prefix)} tokens but --length is {length}")
    if mask_index in prefix:
        raise CliError(f"--prefix holds the mask token's text (id {mask_index}); a prefix must be real tokens")
    return prefix


def _quality(texts, tokens, judge, judge_tokenizer, judge_name) -> dict:
    from mdlm_fast import eval as ev

    report = {"unigram_entropy": ev.unigram_entropy(tokens)}
    if judge is None or not texts:
        return report
    report.update(ev.generative_perplexity(texts, judge, judge_tokenizer))
    report["judge"] = judge_name
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


def _read_schedule_file(args):
    from mdlm_fast.schedule import ScheduleError
    from mdlm_fast.time_schedule import TimeSchedule

    try:
        return TimeSchedule.load(args.schedule_file)
    except ScheduleError as exc:
        raise CliError(f"--schedule-file: {exc}") from None


def _cmd_generate(args) -> int:
    import mdlm_fast as mf
    from mdlm_fast.schedule import ScheduleError
    from mdlm_fast.time_schedule import resolve_schedule

    _check_generate_arguments(args)
    device = args.device
    models = [m.to(device) for m in _load_models(args)]
    if len(models) > 1:
        (h, l) = (m.config for m in models)
        if (l.vocab_size, l.mask_index) != (h.vocab_size, h.mask_index):
            raise CliError(f"--light has vocab_size {l.vocab_size} / mask id {l.mask_index}, the heavy model "
                           f"{h.vocab_size} / {h.mask_index}: scheduled models must share both")
    model_length = min(m.config.model_length for m in models)
    what = "the models' model_length" if len(models) > 1 else "the model's model_length"
    length = check.at_most("--length", args.length, model_length, what) if args.length else model_length
    steps = args.steps if args.steps is not None else length
    spec = (args.schedule or DEFAULT_SCHEDULE) if len(models) > 1 else "heavy"
    flag = "--schedule"
    if args.schedule_file is not None:
        spec, flag = _read_schedule_file(args), "--schedule-file"
    try:
        schedule = resolve_schedule(spec, steps).validate_for(len(models))
    except ScheduleError as exc:
        raise CliError(f"{flag} {spec}: {exc}") from None
    tokenizer = _load_tokenizer(args, models)
    mask = models[0].config.mask_index
    prefix = _encode_prefix(args, tokenizer, length, mask)
    judge, judge_tokenizer, judge_name = _load_judge(args, tokenizer, device)
    try:
        result = mf.sample(models, steps=steps, batch_size=args.batch_size, length=length, schedule=schedule,
                           sampler=args.sampler, seed=args.seed, prefix=prefix, precision=args.precision,
                           temperature=args.temperature, device=device, dtype=args.dtype,
                           progress=not (args.no_progress or args.json))
    except (MemoryError, RuntimeError) as exc:
        _raise_if_out_of_memory(exc, f"--batch-size {args.batch_size} x --length {length}")
        raise
    stats = result.stats
    tokens = result.tokens.tolist()
    texts = [tokenizer.decode(row, mask_id=mask) for row in tokens] if tokenizer is not None else []
    report = {
        "models": [args.heavy or "embedded:heavy"] + ([args.light or "embedded:light"] if len(models) > 1 else []),
        "blocks": [m.config.n_blocks for m in models],
        "stats": stats.as_dict(),
        "flops": _savings(stats),
        "quality": _quality(texts, tokens, judge, judge_tokenizer, judge_name),
        "samples": [{"tokens": row, **({"text": text} if texts else {})}
                    for row, text in zip(tokens, texts or [None] * len(tokens))],
    }
    if args.out:
        from mdlm_fast.atomic import atomic_file

        with atomic_file(args.out) as f:
            for sample in report["samples"]:
                f.write(dumps(sample) + "\n")
    if args.json:
        print(dumps(report))
        return 0
    _print_report(report, stats)
    return 0


def _raise_if_out_of_memory(exc: BaseException, sizes: str) -> None:
    """Turn an allocation failure into one line naming the sizes that caused it."""
    text = str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text \
            or "not enough memory" in text:
        tried = re.search(r"tried to allocate [^.;(]*", text)
        detail = tried.group(0).strip() if tried else ""
        raise CliError(f"out of memory at {sizes}{': ' + detail if detail else ''}; "
                       f"try a smaller --batch-size") from None


def _number(value) -> str:
    """One decimal, or 'n/a' where there is no finite value (the standard error of one sample)."""
    return f"{value:.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


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
        line = (f"gen-PPL {_number(quality['gen_ppl'])} ± {_number(quality['gen_ppl_se'])} (judge {quality['judge']}, "
                f"{quality['samples']} samples, {quality['tokens']} tokens); ") + line
    print(line)


def _cmd_info(args) -> int:
    import torch

    import mdlm_fast as mf

    info = {"version": mf.__version__, "torch": torch.__version__, **mf.build_info()}
    print(dumps(info, indent=2))
    return 0


def _add_generate_arguments(gen) -> None:
    a = gen.add_argument
    a("--heavy", help="heavy denoiser: HF-style directory or Lightning .ckpt (default: embedded:heavy)")
    a("--light", help="light denoiser, same vocabulary and mask id (default: embedded:light when --heavy "
                      "is not given, else none: one model)")
    check.add_checkpoint_arguments(gen)
    a("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
      help="compute dtype (default auto: bfloat16 where the CPU or GPU does it natively, else float32)")
    a("--tokenizer", help="'embedded', a tokenizer.json or a local HF tokenizer directory (default: embedded "
                          "for the embedded models, else none: samples are shown as ids)")
    a("--judge", help="gen-PPL judge: 'embedded', a judge directory, a local HF causal-LM directory (needs "
                      "transformers) or 'none' (default: embedded where there is a tokenizer, else none)")
    a("--judge-tokenizer", help="the judge's tokenizer (default: the judge's own)")
    a("--schedule", default=None, help=f"which model runs each step, for two models only: a spec such as "
                                       f"'{DEFAULT_SCHEDULE}', 'q2:25%%', 'L32-H192-L32', or in diffusion time "
                                       f"'time:0.9-1=L,0-0.1=L' (default {DEFAULT_SCHEDULE})")
    a("--schedule-file", default=None, metavar="FILE",
      help="a time-schedule JSON file (written by calibrate or search), applied at any --steps; "
           "instead of --schedule (default: none)")
    a("--steps", type=check.positive_int, default=None, help="denoising steps (default: the length)")
    a("--length", type=check.positive_int, default=None,
      help="tokens per sample, at most the model's model_length (default: model_length)")
    a("--batch-size", type=check.positive_int, default=4, help="samples (default 4)")
    a("--seed", type=check.seed, default=0, help="random seed; same seed, same samples (default 0)")
    a("--prefix", help="text every sample starts with, kept as given (default: none)")
    a("--sampler", default="fast", choices=["fast", "reference", "confidence"],
      help="fast (MDLM's distribution, reveal-first), reference (MDLM's ddpm_cache) or confidence "
           "(LLaDA-style, another distribution) (default fast)")
    a("--temperature", type=check.non_negative_float, default=1.0,
      help="of the token draws, fast and confidence samplers; 0 = argmax (default 1)")
    a("--precision", default="fp64", choices=["fp64", "fp32-mdlm"],
      help="fp32-mdlm: MDLM's float32 Gumbel noise, reference sampler only (default fp64)")
    a("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    a("--threads", type=check.positive_int, default=None,
      help="torch CPU threads; fewer is often faster on a busy machine (default: torch's choice)")
    a("--out", help="also write the samples to this file as JSON lines (default: none)")
    a("--json", action="store_true", help="the whole report as one JSON object on stdout")
    a("--no-progress", action="store_true", help="no progress bar on stderr (--json implies it)")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="mdlm-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="sample text from a heavy/light pair under a model schedule")
    _add_generate_arguments(gen)
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


def _error(message: str) -> int:
    print(f"mdlm-fast: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Exit status: 0 done, 2 a bad argument (one line on stderr), 130 Ctrl-C,
    141 stdout closed early (``| head``), the shell's status for a program stopped by SIGPIPE."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help (0) or a parse error (2, its line already printed)
            return exc.code if isinstance(exc.code, int) else 0
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, where it can still be handled
        return code
    except KeyboardInterrupt:
        print("mdlm-fast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Later writes (and the interpreter's final flush) must not fail again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (ValueError, OSError) as exc:  # CliError, CheckpointError, TokenizerError, ... are ValueErrors
        text = str(exc).strip()
        return _error(text.splitlines()[0] if text else type(exc).__name__)
    except MemoryError as exc:
        try:
            _raise_if_out_of_memory(exc, "these sizes")
        except CliError as err:
            return _error(str(err))
    except RuntimeError as exc:
        try:
            _raise_if_out_of_memory(exc, "these sizes")
        except CliError as err:
            return _error(str(err))
        raise


if __name__ == "__main__":
    sys.exit(main())

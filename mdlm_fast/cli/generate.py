"""``mdlm-fast generate`` (the main job: sample from a heavy/light pair under a model schedule) and ``mdlm-fast info``.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import math
from typing import Any

from mdlm_fast.cli import infill, loaders
from mdlm_fast.cli import validate as check
from mdlm_fast.cli.validate import CliError
from mdlm_fast.models.compute_dtype import DTYPE_CHOICES
from mdlm_fast.models.embedded import EMBEDDED_MODELS
from mdlm_fast.sampling.api import PRECISIONS, SAMPLER_ALIASES, SAMPLERS
from mdlm_fast.util.json_output import dumps

DEFAULT_SCHEDULE = "sandwich:0.25"


def register(sub: Any) -> None:
    gen = sub.add_parser("generate", help="sample text from a heavy/light pair under a model schedule")
    add_generate_arguments(gen)
    gen.set_defaults(func=_cmd_generate)
    info = sub.add_parser("info", help="version and compiled backends")
    info.set_defaults(func=_cmd_info)


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
    if args.sampler == "reference":
        args.sampler = "mdlm"  # its 0.1 name
    if args.sampler != "mdlm" and args.precision != "fp64":
        raise CliError(
            f"--precision {args.precision} is for --sampler mdlm only (the {args.sampler} sampler draws exactly)"
        )
    if args.sampler == "mdlm" and args.temperature != 1:
        raise CliError(
            f"--temperature {args.temperature}: the mdlm sampler is MDLM's own and samples at "
            f"temperature 1; use --sampler fast or confidence"
        )
    if args.prefix is not None:
        if not args.prefix:
            raise CliError("--prefix is empty; give the text to start from, or leave --prefix out")
        infill.utf8_text("--prefix", args.prefix)
    if args.infill is not None:
        if args.prefix is not None:
            raise CliError("give --prefix or --infill, not both (a prefix is a template's text before its first span)")
        args.infill_parts = infill.template("--infill", args.infill)
    if args.num_samples is not None and args.sampler != "fast":
        raise CliError(
            f"--num-samples runs the samples through the engine, which packs the fast sampler only; "
            f"use --sampler fast, or --batch-size alone with --sampler {args.sampler}"
        )
    if args.max_rows is not None and args.num_samples is None:
        raise CliError("--max-rows is the engine's row budget per forward: give --num-samples as well")
    check.output_file("--out", args.out)
    args.device = check.device("--device", args.device)
    check.threads(args.threads)


def _model_names(args) -> list[str]:
    """The embedded pair by default; a given --heavy alone runs one model."""
    heavy = args.heavy or "embedded:heavy"
    light = args.light if args.light is not None else ("embedded:light" if args.heavy is None else None)
    return [heavy] + ([light] if light else [])


def _load_tokenizer(args, models):
    spec = args.tokenizer or ("embedded" if args.heavy is None else None)
    return None if spec is None else loaders.load_tokenizer(spec, models[0])


def _load_judge(args, tokenizer, device):
    """``(judge, judge_tokenizer, name)``, or Nones where no gen-PPL is computed; loaded before
    sampling so that a bad judge costs no samples."""
    if args.judge == "none":
        return None, None, None
    if tokenizer is None:
        if args.judge is not None:
            raise CliError(
                f"--judge {args.judge} scores text, and these samples have no tokenizer to "
                f"decode them: give --tokenizer as well (or --judge none)"
            )
        return None, None, None
    name = args.judge or "embedded"
    judge, judge_tokenizer = loaders.load_judge(name, args.judge_tokenizer, device=device)
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
    from mdlm_fast.analysis import metrics as ev

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
    all_heavy = analytic["all_heavy_total"] or None
    return {
        "predicted_block_saving": stats.predicted_saving,
        "executed_flops": executed["total"],
        "reference_all_heavy_flops": all_heavy,
        "executed_saving_vs_reference_all_heavy": 1 - executed["total"] / all_heavy if all_heavy else None,
    }


def _read_schedule_file(args):
    from mdlm_fast.schedules.model_schedule import ScheduleError
    from mdlm_fast.schedules.time_schedule import TimeSchedule

    try:
        return TimeSchedule.load(args.schedule_file)
    except ScheduleError as exc:
        raise CliError(f"--schedule-file: {exc}") from None


def _cmd_generate(args) -> int:
    from mdlm_fast.sampling import api as sampling
    from mdlm_fast.sampling.many import sample_many
    from mdlm_fast.schedules.model_schedule import ScheduleError
    from mdlm_fast.schedules.time_schedule import resolve_schedule

    _check_generate_arguments(args)
    device = args.device
    names = _model_names(args)
    models = [loaders.load_model(name, flag, args).to(device) for name, flag in zip(names, ("--heavy", "--light"))]
    loaders.check_scheduled_pair(models, names)
    model_length = min(m.config.model_length for m in models)
    what = "the models' model_length" if len(models) > 1 else "the model's model_length"
    length = check.at_most("--length", args.length, model_length, what) if args.length else model_length
    tokenizer = _load_tokenizer(args, models)
    mask = models[0].config.mask_index
    given = None
    if args.infill is not None:
        given, length = infill.given(
            "--infill", args.infill_parts, tokenizer, mask, length if args.length else None, model_length, what
        )
    steps = args.steps if args.steps is not None else length
    spec = (args.schedule or DEFAULT_SCHEDULE) if len(models) > 1 else "heavy"
    flag = "--schedule"
    if args.schedule_file is not None:
        spec, flag = _read_schedule_file(args), "--schedule-file"
    try:
        schedule = resolve_schedule(spec, steps).validate_for(len(models))
    except ScheduleError as exc:
        raise CliError(f"{flag} {spec}: {exc}") from None
    prefix = _encode_prefix(args, tokenizer, length, mask)
    judge, judge_tokenizer, judge_name = _load_judge(args, tokenizer, device)
    engine_stats = None
    result: Any
    try:
        if args.num_samples is not None:
            many = sample_many(
                models,
                samples=args.num_samples,
                batch_size=args.batch_size,
                steps=steps,
                length=length,
                schedule=schedule,
                seed=args.seed,
                prefix=prefix,
                given=given,
                temperature=args.temperature,
                device=device,
                dtype=args.dtype,
                max_rows=args.max_rows,
            )
            result, engine_stats = many, many.engine
        else:
            result = sampling.sample(
                models,
                steps=steps,
                batch_size=args.batch_size,
                length=length,
                schedule=schedule,
                sampler=args.sampler,
                seed=args.seed,
                prefix=prefix,
                given=given,
                precision=args.precision,
                temperature=args.temperature,
                device=device,
                dtype=args.dtype,
                progress=not (args.no_progress or args.json),
            )
    except (MemoryError, RuntimeError) as exc:
        rows = (
            f"--max-rows {args.max_rows or 'default'}"
            if args.num_samples is not None
            else f"--batch-size {args.batch_size}"
        )
        check.raise_if_out_of_memory(exc, f"{rows} x --length {length}")
        raise
    stats = result.stats
    tokens = result.tokens.tolist()
    texts = [tokenizer.decode(row, mask_id=mask) for row in tokens] if tokenizer is not None else []
    report = {
        "models": names,
        "blocks": [m.config.n_blocks for m in models],
        "stats": stats.as_dict(),
        **({"engine": engine_stats} if engine_stats is not None else {}),
        "flops": _savings(stats),
        "quality": _quality(texts, tokens, judge, judge_tokenizer, judge_name),
        "samples": [
            {"tokens": row, **({"text": text} if texts else {})}
            for row, text in zip(tokens, texts or [None] * len(tokens))
        ],
    }
    if args.out:
        from mdlm_fast.util.atomic import atomic_file

        # seed and row reproduce a sample: the draws are keyed by (seed, row), whatever the batch.
        with atomic_file(args.out, make_parents=False) as f:
            for row, sample in enumerate(report["samples"]):
                f.write(dumps({"seed": args.seed, "row": row, **sample}) + "\n")
    if args.json:
        print(dumps(report))
        return 0
    _print_report(report, stats)
    if engine_stats is not None:
        print(
            f"engine: {engine_stats['requests_done']} batches in flight together, row budget "
            f"{engine_stats['max_rows']}, {engine_stats['rows_per_forward']:.2f} rows per forward "
            f"({engine_stats['fill']:.1%} full)"
        )
    return 0


def _number(value) -> str:
    """One decimal, or 'n/a' where there is no finite value (the standard error of one sample)."""
    return f"{value:.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _print_report(report: dict, stats) -> None:
    for i, sample in enumerate(report["samples"]):
        body = sample.get("text") if "text" in sample else str(sample["tokens"])
        print(f"--- sample {i} ---\n{body.strip()}\n")
    flops, quality = report["flops"], report["quality"]
    blocks = "/".join(str(b) for b in report["blocks"])
    precision = f" ({stats.precision})" if stats.sampler == "mdlm" else ""  # an option of the mdlm sampler only
    print(
        f"models {blocks} blocks, sampler {stats.sampler}{precision}, dtype {stats.dtype} "
        f"({stats.dtype_reason}), {stats.steps} steps, "
        f"length {stats.length}, batch {stats.batch_size}, schedule {stats.schedule}"
    )
    print(
        f"wall time {stats.wall_time_s:.2f} s; forwards per model {stats.forwards} "
        f"({stats.forwards_per_step:.2f} per step), rows {stats.rows}, head positions {stats.head_positions}"
    )
    if flops:
        print(
            f"FLOPs: predicted block saving {flops['predicted_block_saving']:.1%} (eq. 3); executed "
            f"{flops['executed_flops']:.3g} vs {flops['reference_all_heavy_flops']:.3g} for the mdlm sampler "
            f"all-heavy ({flops['executed_saving_vs_reference_all_heavy']:.1%} saved)"
        )
    line = f"unigram entropy {quality['unigram_entropy']:.3f} nats"
    if "gen_ppl" in quality:
        line = (
            f"gen-PPL {_number(quality['gen_ppl'])} ± {_number(quality['gen_ppl_se'])} (judge {quality['judge']}, "
            f"{quality['samples']} samples, {quality['tokens']} tokens); "
        ) + line
    print(line)


def _cmd_info(args) -> int:
    import torch

    from mdlm_fast._build import build_info
    from mdlm_fast.version import __version__

    info = {"version": __version__, "torch": torch.__version__, **build_info()}
    print(dumps(info, indent=2))
    return 0


def add_generate_arguments(gen) -> None:
    a = gen.add_argument
    a(
        "--heavy",
        help=f"heavy denoiser: HF-style directory, Lightning .ckpt or one of {', '.join(EMBEDDED_MODELS)} "
        f"(default: {EMBEDDED_MODELS[0]})",
    )
    a(
        "--light",
        help="light denoiser, same vocabulary and mask id (default: embedded:light when --heavy "
        "is not given, else none: one model)",
    )
    check.add_checkpoint_arguments(gen)
    a(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="compute dtype (default auto: bfloat16 where the CPU or GPU does it natively, else float32)",
    )
    a(
        "--tokenizer",
        help="'embedded', a tokenizer.json or a local HF tokenizer directory (default: embedded "
        "for the embedded models, else none: samples are shown as ids)",
    )
    a(
        "--judge",
        help="gen-PPL judge: 'embedded', a judge directory, a local HF causal-LM directory (needs "
        "transformers) or 'none' (default: embedded where there is a tokenizer, else none)",
    )
    a("--judge-tokenizer", help="the judge's tokenizer (default: the judge's own)")
    a(
        "--schedule",
        default=None,
        help=f"which model runs each step, for two models only: a spec such as "
        f"'{DEFAULT_SCHEDULE}', 'q2:25%%', 'L32-H192-L32', or in diffusion time "
        f"'time:0.9-1=L,0-0.1=L' (default {DEFAULT_SCHEDULE})",
    )
    a(
        "--schedule-file",
        default=None,
        metavar="FILE",
        help="a time-schedule JSON file (written by calibrate or search), applied at any --steps; "
        "instead of --schedule (default: none)",
    )
    a("--steps", type=check.positive_int, default=None, help="denoising steps (default: the length)")
    a(
        "--length",
        type=check.positive_int,
        default=None,
        help="tokens per sample, at most the model's model_length (default: model_length)",
    )
    a(
        "--batch-size",
        type=check.positive_int,
        default=4,
        help="samples of one seed: one sample() call (default 4); with --num-samples, the batches of seeds "
        "seed, seed+1, ... the samples are split into",
    )
    a(
        "--num-samples",
        type=check.positive_int,
        default=None,
        help="samples in all, through the engine: every batch in flight at once, each forward packed with up "
        "to --max-rows rows; batch k's samples are those --batch-size with --seed seed+k gives "
        "(default: one batch of --batch-size)",
    )
    a(
        "--max-rows",
        type=check.positive_int,
        default=None,
        help="with --num-samples: rows per forward (default: the device's, 8 on a CPU, 128 on a GPU)",
    )
    a("--seed", type=check.seed, default=0, help="random seed; same seed, same samples (default 0)")
    a("--prefix", help="text every sample starts with, kept as given (default: none)")
    a(
        "--infill",
        metavar="TEMPLATE",
        help="fill the spans of a template such as 'text [MASK:20] more text': "
        "[MASK:N] is N tokens to generate, the text is kept; --length "
        "defaults to the template's (default: none)",
    )
    a(
        "--sampler",
        default="fast",
        choices=[*SAMPLERS, *SAMPLER_ALIASES],
        help="fast (MDLM's distribution, reveal-first), mdlm (MDLM's ddpm_cache; 'reference' is its 0.1 name) "
        "or confidence (LLaDA-style, another distribution) (default fast)",
    )
    a(
        "--temperature",
        type=check.non_negative_float,
        default=1.0,
        help="of the token draws, fast and confidence samplers; 0 = argmax (default 1)",
    )
    a(
        "--precision",
        default="fp64",
        choices=PRECISIONS,
        help="fp32-mdlm: MDLM's float32 Gumbel noise, mdlm sampler only (default fp64)",
    )
    a("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    a(
        "--threads",
        type=check.positive_int,
        default=None,
        help="torch CPU threads; idle ones sleep (OMP_WAIT_POLICY=PASSIVE unless set), so the default holds up on "
        "a busy machine (default: torch's choice, one per core)",
    )
    a(
        "--out",
        help="also write the samples to this file as JSON lines with seed, row, tokens and text; its "
        "directory must exist, an existing file keeps its mode, a read-only one is refused (default: none)",
    )
    a("--json", action="store_true", help="the whole report as one JSON object on stdout")
    a("--no-progress", action="store_true", help="no progress bar on stderr (--json implies it)")

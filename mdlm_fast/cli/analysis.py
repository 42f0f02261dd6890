"""Analysis subcommands of ``mdlm-fast``: ``evaluate``, ``importance``, ``search``, ``calibrate``.

Each runs on the embedded models by default (``embedded:heavy``, ``embedded:light``, judge
``embedded``), writes JSON + CSV (+ PNG) into ``--out`` (atomically), shows progress on stderr and
a summary (or ``--json``) on stdout. ``evaluate`` and ``search`` run data-parallel under
``torchrun`` (gloo): ``evaluate`` shards sampling seeds, ``search`` shards schedules; rank 0
writes the outputs. ``search`` is resumable: rerun the same command to continue.

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mdlm_fast.analysis.importance import METRICS
from mdlm_fast.analysis.search import STUDIES
from mdlm_fast.cli import infill, loaders
from mdlm_fast.cli import validate as check
from mdlm_fast.cli.validate import CliError
from mdlm_fast.models.compute_dtype import DTYPE_CHOICES
from mdlm_fast.models.embedded import EMBEDDED_MODELS
from mdlm_fast.sampling.api import PRECISIONS, SAMPLER_ALIASES, SAMPLERS
from mdlm_fast.util.atomic import write_csv, write_json
from mdlm_fast.util.json_output import dumps

DEFAULT_OUT = "runs/analysis"
DEFAULT_DATA = "embedded:heldout"  # the split the embedded models were validated on, shipped
#: Sizes that keep one analysis within minutes on 2 CPU cores with the embedded models.
DEFAULT_STEPS, DEFAULT_LENGTH, DEFAULT_SAMPLES, DEFAULT_BATCH = 40, 64, 8, 8


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--heavy",
        help=f"heavy denoiser: HF-style directory, Lightning .ckpt or one of "
        f"{', '.join(EMBEDDED_MODELS)} (default {EMBEDDED_MODELS[0]})",
    )
    p.add_argument(
        "--light",
        action="append",
        help="light denoiser (default embedded:light); search --study light-size takes several",
    )
    check.add_checkpoint_arguments(p)
    p.add_argument("--tokenizer", default="embedded", help="the denoisers' tokenizer (default embedded)")
    p.add_argument("--seed", type=check.seed, default=0, help="first seed; sampling batch k uses seed + k (default 0)")
    p.add_argument(
        "--threads", type=check.positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument(
        "--out", default=DEFAULT_OUT, help=f"directory for JSON, CSV and PNG results (default {DEFAULT_OUT})"
    )
    p.add_argument("--json", action="store_true", help="print the full result as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=check.positive_int, default=None, help=f"denoising steps (default {DEFAULT_STEPS})")
    p.add_argument(
        "--length",
        type=check.positive_int,
        default=None,
        help=f"tokens per sample, at most the model's model_length (default {DEFAULT_LENGTH})",
    )
    p.add_argument(
        "--samples", type=check.positive_int, default=None, help=f"samples per schedule (default {DEFAULT_SAMPLES})"
    )
    p.add_argument(
        "--batch-size",
        type=check.positive_int,
        default=None,
        help=f"samples per sampling call (default {DEFAULT_BATCH})",
    )
    # The studies measure MDLM's distribution; confidence decoding draws another one.
    p.add_argument(
        "--sampler",
        default=None,
        choices=[s for s in (*SAMPLERS, *SAMPLER_ALIASES) if s != "confidence"],
        help="fast, or mdlm (MDLM's own sampler; 'reference' is its 0.1 name) (default fast)",
    )
    p.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="fp32-mdlm: MDLM's float32 Gumbel noise, mdlm sampler only (default fp64)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="the denoisers' compute dtype (default auto: bfloat16 where the CPU does it natively)",
    )
    p.add_argument(
        "--judge",
        default="embedded",
        help="gen-PPL judge: 'embedded', a judge directory, or a "
        "local Hugging Face causal-LM directory (needs transformers) (default embedded)",
    )
    p.add_argument("--judge-tokenizer", default=None, help="the judge's tokenizer (default: the judge's own)")


def _add_importance(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="held-out text: embedded:heldout (used whole: the split "
        "the embedded models were validated on) or a text file, whose last 5%% is used "
        f"(default {DEFAULT_DATA})",
    )
    p.add_argument("--windows", type=check.positive_int, default=32, help="held-out windows (default 32)")
    p.add_argument(
        "--window-length", type=check.positive_int, default=None, help="tokens per window (default: the model's length)"
    )
    p.add_argument(
        "--t-points", type=check.positive_int, default=10, help="points of the t grid, (k + 1/2) / n (default 10)"
    )
    p.add_argument("--importance-batch", type=check.positive_int, default=8, help="windows per forward (default 8)")
    p.add_argument(
        "--heavy-twin",
        "--reference",
        dest="heavy_twin",
        default=None,
        help="a second heavy model (another training seed), the noise floor that normalizes "
        "eq. 6/7; without it the profile is unnormalized (--reference: its 0.1 name) (default: none)",
    )


def register(sub: Any) -> None:
    """Add the analysis subcommands to ``mdlm-fast``'s subparsers."""
    ev = sub.add_parser("evaluate", help="gen-PPL, entropy, distinct-n and FLOPs of schedules")
    _add_common(ev)
    _add_sampling(ev)
    ev.add_argument(
        "--schedule",
        action="append",
        help="schedule spec, repeatable; 'time:...' specs too (default: heavy and sandwich:0.25)",
    )
    ev.add_argument(
        "--baseline",
        default="heavy",
        help="schedule every other one is compared with, paired "
        "(same seeds); added to the run when not given (default heavy)",
    )
    ev.add_argument(
        "--infill",
        metavar="TEMPLATE",
        default=None,
        help="evaluate infilling: every sample fills the "
        "[MASK:N] spans of this template, e.g. 'text [MASK:20] more text'; --length defaults to the "
        "template's; the metrics cover whole samples (default: none, unconditional samples)",
    )
    ev.set_defaults(func=cmd_evaluate)

    imp = sub.add_parser("importance", help="step importance (eq. 6/7) of the light model over t")
    _add_common(imp)
    _add_importance(imp)
    imp.set_defaults(func=cmd_importance)

    se = sub.add_parser("search", help="schedule studies: exhaustive segment search, placements, sweeps")
    _add_common(se)
    _add_sampling(se)
    se.add_argument("--study", default="exhaustive", choices=STUDIES, help="which study (default exhaustive)")
    se.add_argument(
        "--segments", type=check.positive_int, default=10, help="exhaustive: number of segments (default 10)"
    )
    se.add_argument(
        "--n-light", type=check.non_negative_int, default=4, help="exhaustive: light segments per schedule (default 4)"
    )
    se.add_argument(
        "--top",
        type=check.positive_int,
        default=20,
        help="exhaustive: top/bottom N for segment frequencies (default 20)",
    )
    se.add_argument("--fraction", type=check.fraction, default=0.25, help="placement: light fraction (default 0.25)")
    se.add_argument(
        "--placements", default="q1,q2,q3,q4,sandwich", help="placement: comma list (default q1,q2,q3,q4,sandwich)"
    )
    se.add_argument("--fractions", default=None, help="fraction / light-size: comma list (default 0,0.1,...,1 / 0.25)")
    se.add_argument("--placement", default="sandwich", help="fraction / light-size: placement (default sandwich)")
    se.add_argument(
        "--max-schedules",
        type=check.positive_int,
        default=None,
        help="evaluate at most this many new schedules (per process), then stop; rerun to continue (default: all)",
    )
    se.add_argument(
        "--time-budget",
        type=check.positive_float,
        default=None,
        help="minutes: start no new schedule after this (default: no limit)",
    )
    se.set_defaults(func=cmd_search)

    ca = sub.add_parser("calibrate", help="pick a schedule for a FLOPs budget from the importance profile")
    _add_common(ca)
    _add_sampling(ca)
    _add_importance(ca)
    ca.add_argument(
        "--importance",
        default=None,
        help="importance.json from 'mdlm-fast importance' (default: measure it now with the importance options)",
    )
    ca.add_argument(
        "--metric",
        default=None,
        choices=METRICS,
        help="profile column to rank segments by (default kl_normalized if measured, else kl)",
    )
    ca.add_argument(
        "--saving",
        type=check.fraction,
        default=None,
        help="required predicted block-FLOPs saving, eq. 3 (default: use --n-light)",
    )
    ca.add_argument(
        "--n-light",
        type=check.non_negative_int,
        default=None,
        help="number of light segments (default: the search's, else 4)",
    )
    ca.add_argument(
        "--segments", type=check.positive_int, default=None, help="number of segments (default: the search's, else 10)"
    )
    ca.add_argument(
        "--search",
        default=None,
        help="exhaustive.json (or its directory) from 'mdlm-fast search' "
        "to compare against; its sampling settings are reused (default: none)",
    )
    ca.set_defaults(func=cmd_calibrate)


# --------------------------------------------------------------------------------------------
# Shared setup
# --------------------------------------------------------------------------------------------


def _setup(args) -> None:
    """Checks every subcommand shares, before any model is loaded."""
    _PLOT_NOTE_SHOWN.clear()
    check.threads(args.threads)
    check.output_dir("--out", args.out)
    check.checkpoint("--heavy", args.heavy or "embedded:heavy")
    for light in args.light or []:
        check.checkpoint("--light", light)
    check.tokenizer("--tokenizer", args.tokenizer)
    if getattr(args, "judge", None) is not None:
        check.judge("--judge", args.judge)
        check.tokenizer("--judge-tokenizer", args.judge_tokenizer)
    if getattr(args, "data", None) is not None:
        check.text("--data", args.data)
    if getattr(args, "heavy_twin", None) is not None:
        check.checkpoint("--heavy-twin", args.heavy_twin)


_PLOT_NOTE_SHOWN: set = set()  # the note is shown once per command run (_setup clears it)


def _matplotlib_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _can_plot() -> bool:
    """Whether PNG plots can be drawn; where not, one note on stderr, at the point the plots are
    skipped (after the results, so that an error is the only line a failed run prints)."""
    if _matplotlib_installed():
        return True
    if _PLOT_NOTE_SHOWN:
        return False
    _PLOT_NOTE_SHOWN.add(True)
    print(
        "mdlm-fast: note: matplotlib is not installed, so no PNG plots are drawn "
        "(pip install 'mdlm_fast[plot]'); JSON and CSV are written as usual",
        file=sys.stderr,
    )
    return False


def _load_models(args, max_lights: int = 1) -> tuple[list, list[str]]:
    """``([heavy, light, ...], names)``; refuses pairs that do not share vocabulary and mask id."""
    heavy_name = args.heavy or "embedded:heavy"
    light_names = args.light or ["embedded:light"]
    if len(light_names) > max_lights:
        raise CliError(f"--light was given {len(light_names)} times; only search --study light-size takes several")
    names = [heavy_name, *light_names]
    models = [loaders.load_model(heavy_name, "--heavy", args)] + [
        loaders.load_model(n, "--light", args) for n in light_names
    ]
    if getattr(args, "dtype", None) is not None:  # the sampling commands; importance stays fp32
        from mdlm_fast.models.compute_dtype import resolve_dtype

        models = [m.to(dtype=resolve_dtype(args.dtype, "cpu").dtype) for m in models]
    loaders.check_scheduled_pair(models, names)
    return models, names


def _load_judge(args):
    if check.judge("--judge", args.judge) == "none":
        return None, None
    return loaders.load_judge(args.judge, args.judge_tokenizer)


def _sampling(args, fallback: dict | None = None) -> dict:
    """Sampling settings from the arguments; unset ones from ``fallback`` (e.g. a search's), then defaults."""
    fallback = fallback or {}
    defaults = {
        "steps": DEFAULT_STEPS,
        "length": DEFAULT_LENGTH,
        "samples": DEFAULT_SAMPLES,
        "batch_size": DEFAULT_BATCH,
        "sampler": "fast",
        "precision": "fp64",
    }
    out = {}
    for key, default in defaults.items():
        given = getattr(args, key)
        if given is not None and key in fallback and given != fallback[key]:
            flag = "--" + key.replace("_", "-")
            raise CliError(
                f"{flag} {given} differs from the search's {fallback[key]}; leave it out to compare "
                f"at the search's settings"
            )
        out[key] = given if given is not None else fallback.get(key, default)
    for key in ("steps", "length", "samples", "batch_size"):
        check.positive_setting("--" + key.replace("_", "-"), out[key])
    if out["sampler"] == "fast" and out["precision"] != "fp64":
        raise CliError("--precision fp32-mdlm is for --sampler mdlm only")
    return out


def _check_length(models, length: int, flag: str = "--length") -> None:
    limit = models[0].config.model_length
    if length > limit:
        raise CliError(f"{flag} {length} exceeds the heavy model's model_length {limit}")


def _record(args, names, models, tokenizer, judge_tokenizer) -> dict:
    return {
        "models": names,
        "blocks": [m.config.n_blocks for m in models],
        "tokenizer": getattr(tokenizer, "name", None),
        "judge": None if args.judge == "none" else args.judge,
        "judge_tokenizer": getattr(judge_tokenizer, "name", None),
        "dtype": str(next(models[0].parameters()).dtype).replace("torch.", ""),
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _quality(row: dict) -> str:
    ppl = f"gen-PPL {_fmt(row.get('gen_ppl'))} ± {_fmt(row.get('gen_ppl_se'))}, " if "gen_ppl" in row else ""
    return (
        f"{ppl}entropy {_fmt(row.get('unigram_entropy'), '.3f')}, saving {_fmt(row.get('predicted_saving'), '.1%')}, "
        f"time {_fmt(row.get('wall_time_s'))} s"
    )


def _add_paired_columns(rows: list[dict], baseline: dict | None) -> None:
    """Each row's paired comparison with ``baseline`` (same seeds), as flat ``paired_*`` columns
    beside the unpaired ones (mdlm_fast.analysis.paired)."""
    from mdlm_fast.analysis.paired import compare_rows

    if baseline is None:
        return
    for row in rows:
        if row is not baseline:
            row.update({f"paired_{k}": v for k, v in compare_rows(row, baseline).items()})


def _paired_text(row: dict) -> str:
    if "paired_gen_ppl_ratio" not in row:
        return ""
    return (
        f"; vs {row['paired_baseline']}: gen-PPL x{row['paired_gen_ppl_ratio']:.3f} "
        f"[{row['paired_gen_ppl_ratio_ci_low']:.3f}, {row['paired_gen_ppl_ratio_ci_high']:.3f}] (paired 95%)"
    )


def _write_time_schedule(path: Path, spec: str, source: dict) -> Path:
    """The chosen schedule in diffusion time, so ``generate --schedule-file`` runs it at any steps."""
    from mdlm_fast.schedules.model_schedule import ModelSchedule
    from mdlm_fast.schedules.time_schedule import TimeSchedule

    TimeSchedule.from_model_schedule(ModelSchedule.parse(spec), source=source).save(path)
    return path


def _emit(args, result: dict, lines: list[str]) -> None:
    if args.json:
        print(dumps(result))
    else:
        print("\n".join(lines))


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def cmd_evaluate(args) -> int:
    from mdlm_fast.analysis.distributed import from_env
    from mdlm_fast.analysis.metrics import evaluate_schedule
    from mdlm_fast.schedules.time_schedule import resolve_schedule

    _setup(args)
    parts = infill.template("--infill", args.infill) if args.infill is not None else None
    settings = _sampling(args)
    models, names = _load_models(args)
    if parts is None or args.length is not None:
        _check_length(models, settings["length"])
    specs = args.schedule or ["heavy", "sandwich:0.25"]
    schedules = []
    for flag, spec in [("--schedule", s) for s in specs] + [("--baseline", args.baseline)]:
        try:
            schedules.append(resolve_schedule(spec, settings["steps"]).validate_for(len(models)))
        except ValueError as exc:
            raise CliError(f"{flag} {spec}: {exc}") from None
    baseline = schedules.pop()
    if baseline not in schedules:
        specs, schedules = [args.baseline] + list(specs), [baseline] + schedules
    tokenizer = loaders.load_tokenizer(args.tokenizer, models[0])
    given = None
    if parts is not None:
        given, settings["length"] = infill.given(
            "--infill",
            parts,
            tokenizer,
            models[0].config.mask_index,
            args.length,
            models[0].config.model_length,
            "the heavy model's model_length",
        )
        settings["infill"] = args.infill
    judge, judge_tokenizer = _load_judge(args)
    record = _record(args, names, models, tokenizer, judge_tokenizer)
    rows = []
    with from_env() as dist:
        from tqdm.auto import tqdm

        for spec, schedule in tqdm(
            list(zip(specs, schedules)), desc="evaluate", disable=args.no_progress or not dist.is_main
        ):
            row = evaluate_schedule(
                models,
                schedule,
                tokenizer=tokenizer,
                judge=judge,
                judge_tokenizer=judge_tokenizer,
                seed=args.seed,
                record=record,
                dist=dist,
                given=given,
                **{k: settings[k] for k in ("steps", "length", "samples", "batch_size", "sampler", "precision")},
            )
            rows.append({"key": spec, **row})
        if not dist.is_main:
            return 0
    _add_paired_columns(rows, next(r for r, s in zip(rows, schedules) if s == baseline))
    result = {"settings": {**settings, "seed": args.seed, **record}, "baseline": args.baseline, "rows": rows}
    out = Path(args.out)
    write_json(out / "evaluate.json", result)
    write_csv(out / "evaluate.csv", rows)
    _emit(
        args,
        result,
        [f"{r['key']:>20} ({r['schedule']}): {_quality(r)}{_paired_text(r)}" for r in rows]
        + [f"results in {out}/evaluate.json, evaluate.csv"],
    )
    return 0


# --------------------------------------------------------------------------------------------
# importance
# --------------------------------------------------------------------------------------------


def _measure_importance(args, models, names, tokenizer):
    from mdlm_fast.analysis.importance import default_t_grid, step_importance
    from mdlm_fast.text.data import held_out_fraction, load_corpus

    for flag, value in (
        ("--windows", args.windows),
        ("--t-points", args.t_points),
        ("--importance-batch", args.importance_batch),
        ("--window-length", args.window_length),
    ):
        check.positive_setting(flag, value)
    length = args.window_length or models[0].config.model_length
    _check_length(models, length, "--window-length")
    twin = loaders.load_model(args.heavy_twin, "--heavy-twin", args) if args.heavy_twin else None
    if twin is not None and twin.config.mask_index != models[0].config.mask_index:
        raise CliError(f"--heavy-twin {args.heavy_twin} has another mask id than the heavy model")
    corpus = load_corpus(
        check.text("--data", args.data),
        tokenizer,
        val_fraction=held_out_fraction(args.data),
        cache_dir=Path(args.out) / "cache",
    )
    all_windows = corpus.val_windows(length)
    if args.windows > all_windows.shape[0]:
        raise CliError(
            f"--windows {args.windows}: the held-out split has only {all_windows.shape[0]} windows of {length} tokens"
        )
    # Evenly spaced windows cover the whole held-out text rather than its first scenes.
    pick = torch.linspace(0, all_windows.shape[0] - 1, args.windows).round().long().unique()
    start = time.perf_counter()
    profile = step_importance(
        models[0],
        models[1],
        all_windows[pick],
        default_t_grid(args.t_points),
        heavy_twin=twin,
        seed=args.seed,
        batch_size=args.importance_batch,
        progress=not args.no_progress,
        record={
            "heavy": names[0],
            "light": names[1],
            "heavy_twin": args.heavy_twin,
            "data": args.data,
            "data_sha256": corpus.data_sha256,
            "tokenizer": tokenizer.name,
        },
    )
    profile.record["wall_time_s"] = time.perf_counter() - start
    return profile


def _write_importance(profile, out: Path) -> None:
    from mdlm_fast.analysis import plots

    write_json(out / "importance.json", profile.as_dict())
    write_csv(out / "importance.csv", [p.as_dict() for p in profile.points])
    if _can_plot():
        plots.plot_importance(profile, out / "importance.png")


def cmd_importance(args) -> int:
    _setup(args)
    models, names = _load_models(args)
    tokenizer = loaders.load_tokenizer(args.tokenizer, models[0])
    profile = _measure_importance(args, models, names, tokenizer)
    out = Path(args.out)
    _write_importance(profile, out)
    norm = profile.normalized
    lines = [
        f"{'t':>6} {'masked':>7} {'CE heavy':>9} {'CE light':>9} {'|dCE|':>7} {'KL':>7}"
        + (f" {'KL/KLref':>9}" if norm else "")
    ]
    for p in profile.points:
        lines.append(
            f"{p.t:6.3f} {p.masked_tokens:7d} {p.ce_heavy:9.3f} {p.ce_light:9.3f} {p.ce_abs_diff:7.3f} "
            f"{p.kl:7.3f}" + (f" {p.kl_normalized:9.3f}" if norm else "")
        )
    if not norm:
        lines.append("unnormalized: no --heavy-twin (a second heavy model of another training seed) was given")
    lines.append(
        f"{profile.record['wall_time_s']:.1f} s; results in {out}/importance.json, importance.csv, importance.png"
    )
    _emit(args, profile.as_dict(), lines)
    return 0


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"{flag} must be a comma-separated list of numbers, got {text!r}") from None
    if not values or not all(0 <= v <= 1 for v in values):
        raise CliError(f"{flag} values must lie in [0, 1], got {text!r}")
    return values


def _study_items(args, steps: int, light_names: list[str]) -> tuple[list[dict], dict]:
    """Work items of the study and the settings that define them (part of the log's settings)."""
    from mdlm_fast.analysis import search
    from mdlm_fast.schedules.model_schedule import PLACEMENTS

    try:
        if args.study == "exhaustive":
            check.positive_setting("--segments", args.segments)
            if args.segments > steps:
                raise CliError(f"--segments {args.segments} exceeds --steps {steps}")
            if not 0 <= args.n_light <= args.segments:
                raise CliError(f"--n-light must be in [0, --segments={args.segments}], got {args.n_light}")
            return (
                search.exhaustive_items(steps, args.segments, args.n_light),
                {"n_segments": args.segments, "n_light": args.n_light},
            )
        if args.study == "placement":
            if not 0 <= args.fraction <= 1:
                raise CliError(f"--fraction must be in [0, 1], got {args.fraction}")
            placements = [p.strip() for p in args.placements.split(",") if p.strip()]
            bad = [p for p in placements if p not in PLACEMENTS]
            if bad or not placements:
                raise CliError(
                    f"--placements: unknown placement {bad[0] if bad else '(none)'}; expected {', '.join(PLACEMENTS)}"
                )
            return search.placement_items(steps, args.fraction, placements), {}
        if args.placement not in PLACEMENTS:
            raise CliError(f"--placement {args.placement}: expected one of {', '.join(PLACEMENTS)}")
        if args.study == "fraction":
            fractions = _floats(args.fractions or "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", "--fractions")
            return search.fraction_items(steps, fractions, args.placement), {}
        fractions = _floats(args.fractions or "0.25", "--fractions")
        return search.light_size_items(steps, light_names, fractions, args.placement), {}
    except ValueError as exc:
        if isinstance(exc, CliError):
            raise
        raise CliError(str(exc)) from None


def _search_analysis(args, rows: list[dict], extra: dict) -> dict:
    from mdlm_fast.analysis import search

    if args.study != "exhaustive" or not rows or not any("gen_ppl" in r for r in rows):
        return {}
    order = search.ranked(rows)
    n = extra["n_segments"]
    top, bottom = search.segment_frequency(rows, n, args.top)
    brief = [{k: r.get(k) for k in ("key", "schedule", "gen_ppl", "gen_ppl_se", "unigram_entropy")} for r in order]
    from mdlm_fast.analysis.paired import segment_score_se

    try:
        score_se = segment_score_se(rows, n)
    except ValueError:  # rows from a log written before per-sample values were kept
        score_se = None
    return {
        "segment_scores": search.segment_scores(rows, n),
        "segment_score_se": score_se,
        "top5": brief[:5],
        "bottom5": brief[-5:][::-1],
        "top_n": min(args.top, len(order)),
        "segment_frequency_top": top,
        "segment_frequency_bottom": bottom,
    }


def _search_plots(args, rows, analysis, out: Path) -> list[str]:
    from mdlm_fast.analysis import plots

    made: list[Path] = []
    if not _can_plot():
        return []
    if analysis:
        made.append(plots.plot_segment_scores(analysis["segment_scores"], out / "exhaustive_segment_scores.png"))
        made.append(
            plots.plot_segment_frequency(
                analysis["segment_frequency_top"],
                analysis["segment_frequency_bottom"],
                analysis["top_n"],
                out / "exhaustive_segment_frequency.png",
            )
        )
    elif args.study == "placement":
        made.append(plots.plot_bars(rows, out / "placement.png"))
    elif args.study == "fraction":
        made.append(
            plots.plot_sweep(rows, "fraction", out / "fraction.png", xlabel=f"light fraction ({args.placement})")
        )
    elif args.study == "light-size":
        made.append(
            plots.plot_sweep(
                rows,
                "fraction",
                out / "light-size.png",
                group="light_model",
                xlabel=f"light fraction ({args.placement})",
            )
        )
    return [str(p) for p in made]


def cmd_search(args) -> int:
    from mdlm_fast.analysis import search
    from mdlm_fast.analysis.distributed import from_env
    from mdlm_fast.analysis.metrics import evaluate_schedule
    from mdlm_fast.analysis.search import ResultsLog, run_items
    from mdlm_fast.schedules.model_schedule import ModelSchedule

    _setup(args)
    settings = _sampling(args)
    check.positive_setting("--max-schedules", args.max_schedules)
    check.positive_setting("--top", args.top)
    if args.time_budget is not None and args.time_budget <= 0:
        raise CliError(f"--time-budget must be positive minutes, got {args.time_budget}")
    models, names = _load_models(args, max_lights=64 if args.study == "light-size" else 1)
    _check_length(models, settings["length"])
    items, item_settings = _study_items(args, settings["steps"], names[1:])
    tokenizer = loaders.load_tokenizer(args.tokenizer, models[0])
    judge, judge_tokenizer = _load_judge(args)
    if judge is None:
        raise CliError("search ranks schedules by gen-PPL: --judge none is not possible here")
    record = _record(args, names, models, tokenizer, judge_tokenizer)
    log_settings = {"study": args.study, **settings, "seed": args.seed, **record, **item_settings}
    deadline = time.monotonic() + 60 * args.time_budget if args.time_budget else None

    def evaluate(item: dict) -> dict:
        light = models[1 + item.get("light", 0)]
        return evaluate_schedule(
            [models[0], light],
            item["schedule"],
            tokenizer=tokenizer,
            judge=judge,
            judge_tokenizer=judge_tokenizer,
            seed=args.seed,
            record=None,
            **{k: settings[k] for k in ("steps", "length", "samples", "batch_size", "sampler", "precision")},
        )

    out = Path(args.out)
    with from_env() as dist:
        log = ResultsLog(out, args.study, log_settings, dist.rank, dist.world_size)
        rows, complete = run_items(
            items,
            evaluate,
            log,
            dist=dist,
            max_new=args.max_schedules,
            progress=not args.no_progress,
            desc=args.study,
            deadline=deadline,
        )
        if not dist.is_main:
            return 0
    heavy_spec = ModelSchedule.all_heavy(settings["steps"]).to_spec()
    _add_paired_columns(rows, next((r for r in rows if r.get("schedule") == heavy_spec), None))
    analysis = _search_analysis(args, rows, item_settings)
    for row in rows:
        row.pop("record", None)  # the settings hold it once for all rows
        row.pop("per_sample", None)  # kept in the resumable log
    result = {
        "settings": log_settings,
        "complete": complete,
        "finished": len(rows),
        "total": len(items),
        "rows": rows,
        **analysis,
    }
    write_json(out / f"{args.study}.json", result)
    write_csv(out / f"{args.study}.csv", rows)
    pngs = _search_plots(args, rows, analysis, out) if rows else []
    lines = [
        f"{args.study}: {len(rows)} of {len(items)} schedules finished"
        + ("" if complete else " -- rerun the same command to continue")
    ]
    if analysis:
        lines.append("segment scores (eq. 8, gen-PPL): " + " ".join(f"{s:+.2f}" for s in analysis["segment_scores"]))
        lines += ["top 5:"] + [f"  {r['key']:>22}  gen-PPL {_fmt(r['gen_ppl'])}" for r in analysis["top5"]]
        lines += ["bottom 5:"] + [f"  {r['key']:>22}  gen-PPL {_fmt(r['gen_ppl'])}" for r in analysis["bottom5"]]
    else:
        lines += [f"  {r['key']:>22}: {_quality(r)}" for r in rows]
    best = search.ranked(rows)[:1] if rows and any("gen_ppl" in r for r in rows) else []
    if best:
        files = [
            str(
                _write_time_schedule(
                    out / f"{args.study}_best_schedule.json",
                    best[0]["schedule"],
                    {
                        "from": f"mdlm-fast search --study {args.study}",
                        "key": best[0]["key"],
                        "gen_ppl": best[0].get("gen_ppl"),
                        "settings": log_settings,
                    },
                )
            )
        ]
        lines.append(f"best schedule {best[0]['key']} in diffusion time: {files[0]}")
    lines.append(f"results in {out}/{args.study}.json, {args.study}.csv" + (", " + ", ".join(pngs) if pngs else ""))
    _emit(args, result, lines)
    return 0


# --------------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------------


def _read_search(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "exhaustive.json"
    if not p.is_file():
        raise CliError(f"--search: no search results at {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        data["settings"], data["rows"]
    except (ValueError, KeyError, TypeError):
        raise CliError(f"--search: {p} is not a results file of 'mdlm-fast search'") from None
    if data["settings"].get("study") != "exhaustive":
        raise CliError(f"--search: {p} is a {data['settings'].get('study')} study, not the exhaustive search")
    return data


def cmd_calibrate(args) -> int:
    from mdlm_fast.analysis.calibrate import calibrate, compare_with_search
    from mdlm_fast.analysis.importance import ImportanceProfile
    from mdlm_fast.analysis.metrics import evaluate_schedule

    _setup(args)
    searched = _read_search(args.search) if args.search else None
    fallback = searched["settings"] if searched else {}
    settings = _sampling(args, fallback)
    if searched and args.seed != fallback.get("seed", args.seed):
        raise CliError(f"--seed {args.seed} differs from the search's {fallback['seed']}")
    seed = fallback.get("seed", args.seed)
    models, names = _load_models(args)
    if searched and names != fallback.get("models"):
        raise CliError(f"the models {names} differ from the search's {fallback.get('models')}")
    _check_length(models, settings["length"])
    tokenizer = loaders.load_tokenizer(args.tokenizer, models[0])
    out = Path(args.out)
    n_segments = args.segments or fallback.get("n_segments", 10)
    if args.saving is not None and args.n_light is not None:
        raise CliError("give --saving or --n-light, not both")
    n_light = (
        args.n_light if args.n_light is not None else (None if args.saving is not None else fallback.get("n_light", 4))
    )
    if n_segments > settings["steps"]:
        raise CliError(f"--segments {n_segments} exceeds --steps {settings['steps']}")
    if n_light is not None and n_light > n_segments:
        raise CliError(f"--n-light {n_light} exceeds --segments {n_segments}")
    judge, judge_tokenizer = _load_judge(args)
    if args.importance:
        try:
            profile = ImportanceProfile.from_dict(json.loads(Path(args.importance).read_text(encoding="utf-8")))
        except OSError:
            raise CliError(f"--importance: cannot read {args.importance}") from None
        except ValueError as exc:
            raise CliError(f"--importance: {args.importance} is not an importance profile ({exc})") from None
    else:
        profile = _measure_importance(args, models, names, tokenizer)
        _write_importance(profile, out)
    metric = args.metric or ("kl_normalized" if profile.normalized else "kl")
    try:
        chosen = calibrate(
            profile,
            settings["steps"],
            block_counts=[m.config.n_blocks for m in models[:2]],
            saving=args.saving,
            n_light=n_light,
            n_segments=n_segments,
            metric=metric,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    record = _record(args, names, models, tokenizer, judge_tokenizer)
    evaluation = evaluate_schedule(
        models[:2],
        chosen.schedule,
        tokenizer=tokenizer,
        judge=judge,
        judge_tokenizer=judge_tokenizer,
        seed=seed,
        record=record,
        **{k: settings[k] for k in ("steps", "length", "samples", "batch_size", "sampler", "precision")},
    )
    result = {
        "calibration": chosen.as_dict(),
        "evaluation": evaluation,
        "importance": {"normalized": profile.normalized, "record": profile.record},
    }
    if searched:
        result["comparison"] = compare_with_search(
            {**evaluation, "schedule": chosen.schedule.to_spec(), "predicted_saving": chosen.predicted_saving},
            searched["rows"],
        )
    schedule_file = _write_time_schedule(
        out / "calibrate_schedule.json",
        chosen.schedule.to_spec(),
        {"from": "mdlm-fast calibrate", **chosen.as_dict(), "importance": result["importance"]},
    )
    write_json(out / "calibrate.json", result)
    from mdlm_fast.analysis import plots

    if _can_plot():
        plots.plot_segment_scores(
            [d for d in chosen.segment_divergence],
            out / "calibrate_divergence.png",
            ylabel=f"segment divergence ({metric})",
            highlight=chosen.light_segments,
        )
    lines = [
        f"calibrated schedule (metric {metric}{'' if profile.normalized else ', unnormalized'}): "
        f"light segments {chosen.light_segments} of {n_segments} -> {chosen.schedule.to_spec()}",
        f"  predicted saving {chosen.predicted_saving:.1%}; {_quality(evaluation)}",
    ]
    comp = result.get("comparison")
    if comp and comp.get("best_searched"):
        best = comp["best_searched"]
        rank = comp["calibrated_rank"]
        lines.append(
            f"  best searched at the same budget: {best['key']} gen-PPL {_fmt(best['gen_ppl'])}; "
            f"calibrated rank {rank if rank else '-'} of {comp['searched_at_same_budget']}, "
            f"median {_fmt(comp['median_searched'])}"
        )
    lines.append(f"the schedule in diffusion time (for generate --schedule-file): {schedule_file}")
    lines.append(f"results in {out}/calibrate.json, calibrate_divergence.png")
    _emit(args, result, lines)
    return 0

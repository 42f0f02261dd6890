"""Paired reruns of the schedule studies in docs/findings.md, on the embedded models.

Every schedule -- all-light, the eight placements at 25% light, the sandwich light-fraction curve,
and the calibrated schedules against same-budget alternatives -- is sampled round by round with
the same seeds as the all-heavy baseline, until every gen-PPL ratio to all-heavy has a paired
relative standard error of at most --target-se, or --max-samples are reached
(mdlm_fast.analysis.adaptive). Resumable: rerun the same command to continue (--time-budget stops it
cleanly). Writes <out>/paired.jsonl (the log) and <out>/paired.json (merged rows with their paired
columns, and the stopping status).

    .venv/bin/python benchmarks/studies/paired_findings.py --out docs/findings/paired --time-budget 60
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import mdlm_fast as mf
from mdlm_fast.analysis import metrics as ev
from mdlm_fast.analysis.adaptive import evaluate_until
from mdlm_fast.analysis.paired import compare_rows
from mdlm_fast.analysis.search import ResultsLog
from mdlm_fast.schedules.model_schedule import PLACEMENTS, ModelSchedule
from mdlm_fast.text.data import held_out_fraction, load_corpus
from mdlm_fast.util.atomic import write_text

#: Calibrated picks at 4 of 10 segments light (docs/findings.md sections 4 and 1b) and the
#: hand-made schedules of the same budget they are judged against.
SAME_BUDGET = {
    "calibrated-kl": (0, 1, 2, 8),
    "calibrated-kl-normalized": (6, 7, 8, 9),
    "segments-first4": (0, 1, 2, 3),
    "segments-middle4": (3, 4, 5, 6),
    "segments-sandwich4": (0, 1, 8, 9),
}
FRACTIONS = (0.125, 0.5, 0.75, 0.875)
#: Direct paired comparisons between schedules (A / B), beyond each one against all-heavy.
PAIRS = (
    ("q4:0.25", "q2:0.25"),
    ("q4:0.25", "middle:0.25"),
    ("q4:0.25", "q3:0.25"),
    ("q1:0.25", "q2:0.25"),
    ("q1:0.25", "q4:0.25"),
    ("sandwich:0.25", "middle:0.25"),
    ("sandwich:0.25", "q2:0.25"),
    ("sandwich:0.25", "q4:0.25"),
    ("calibrated-kl", "segments-middle4"),
    ("calibrated-kl", "calibrated-kl-normalized"),
    ("calibrated-kl", "segments-first4"),
    ("calibrated-kl", "segments-sandwich4"),
    ("segments-sandwich4", "segments-middle4"),
    ("sandwich:0.5", "sandwich:0.25"),
    ("sandwich:0.75", "sandwich:0.5"),
    ("sandwich:0.875", "sandwich:0.75"),
    ("light", "sandwich:0.875"),
)


def items(steps: int) -> list[dict]:
    out = [
        {"key": "heavy", "study": "baseline", "schedule": ModelSchedule.all_heavy(steps).to_spec(), "fraction": 0.0},
        {"key": "light", "study": "baseline", "schedule": ModelSchedule.all_light(steps).to_spec(), "fraction": 1.0},
    ]
    for placement in PLACEMENTS:
        out.append(
            {
                "key": f"{placement}:0.25",
                "study": "placement",
                "placement": placement,
                "fraction": 0.25,
                "schedule": ModelSchedule.from_fraction(steps, 0.25, placement).to_spec(),
            }
        )
    for fraction in FRACTIONS:
        out.append(
            {
                "key": f"sandwich:{fraction:g}",
                "study": "fraction",
                "placement": "sandwich",
                "fraction": fraction,
                "schedule": ModelSchedule.from_fraction(steps, fraction, "sandwich").to_spec(),
            }
        )
    for name, segments in SAME_BUDGET.items():
        schedule = ModelSchedule.segments(steps, segments, 10)
        out.append(
            {
                "key": name,
                "study": "same-budget",
                "light_segments": list(segments),
                "fraction": schedule.light_fraction,
                "schedule": schedule.to_spec(),
            }
        )
    return out


def _json_ready(value):
    """Non-finite numbers as null: the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def pairwise(rows: dict) -> list[dict]:
    """The PAIRS, each a paired comparison of two schedules' samples (same seeds)."""
    out = []
    for a, b in PAIRS:
        paired = compare_rows(rows[a], rows[b])
        out.append({"a": a, "b": b, **{k: v for k, v in paired.items() if k != "baseline"}})
    return out


def held_out_reference(tokenizer, judge, judge_tokenizer, length: int, windows: int) -> dict:
    """The judge on held-out text cut like the samples: ``windows`` windows of ``length`` model
    tokens of the shipped validation split, decoded and re-tokenized as samples are."""
    corpus = load_corpus("embedded:heldout", tokenizer, val_fraction=held_out_fraction("embedded:heldout"))
    all_windows = corpus.val_windows(length)
    pick = torch.linspace(0, all_windows.shape[0] - 1, min(windows, all_windows.shape[0])).round().long().unique()
    row = ev.evaluate_samples(
        all_windows[pick].tolist(), tokenizer=tokenizer, judge=judge, judge_tokenizer=judge_tokenizer
    )
    row.pop("per_sample", None)
    return {**row, "windows": int(pick.numel()), "length": length}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/findings/paired", help="output directory (default %(default)s)")
    p.add_argument("--steps", type=int, default=128, help="sampling steps (default %(default)s)")
    p.add_argument("--length", type=int, default=128, help="sample length (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per round (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of round 0 (default %(default)s)")
    p.add_argument(
        "--target-se",
        type=float,
        default=0.01,
        help="paired relative SE of every gen-PPL ratio to stop at (default %(default)s)",
    )
    p.add_argument("--max-samples", type=int, default=128, help="sample cap per schedule (default %(default)s)")
    p.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="model dtype (default %(default)s)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--time-budget", type=float, default=None, help="minutes; stop cleanly after them")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    models = [mf.load_denoiser("embedded:heavy", dtype=dtype), mf.load_denoiser("embedded:light", dtype=dtype)]
    tokenizer = mf.load_tokenizer("embedded")
    judge, judge_tokenizer = ev.load_judge_and_tokenizer("embedded")
    settings = {
        "steps": args.steps,
        "length": args.length,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "dtype": args.dtype,
        "models": ["embedded:heavy", "embedded:light"],
        "judge": "embedded",
        "sampler": "fast",
        "precision": "fp64",
    }
    log = ResultsLog(args.out, "paired", settings)
    deadline = time.monotonic() + 60 * args.time_budget if args.time_budget else None

    def evaluate_round(item, seed, size):
        row = ev.evaluate_schedule(
            models,
            item["schedule"],
            steps=args.steps,
            length=args.length,
            samples=size,
            batch_size=size,
            seed=seed,
            tokenizer=tokenizer,
            judge=judge,
            judge_tokenizer=judge_tokenizer,
            record={"judge": "embedded"},
        )
        print(
            f"  {item['key']:<26} seed {seed}: gen-PPL {row['gen_ppl']:.1f} ({row['wall_time_s']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        return row

    rows, status = evaluate_until(
        items(args.steps),
        "heavy",
        evaluate_round,
        batch_size=args.batch_size,
        seed=args.seed,
        target_se=args.target_se,
        max_samples=args.max_samples,
        log=log,
        deadline=deadline,
    )
    labels = {item["key"]: item for item in items(args.steps)}
    complete = status["reason"] != "deadline"
    result = {
        "settings": settings,
        "status": status,
        "target_se": args.target_se,
        "max_samples": args.max_samples,
        "rows": [{**{k: v for k, v in labels[key].items() if k != "schedule"}, **row} for key, row in rows.items()],
        "pairwise": pairwise(rows) if complete else [],
        "held_out": held_out_reference(tokenizer, judge, judge_tokenizer, args.length, 128) if complete else None,
    }
    write_text(
        Path(args.out) / "paired.json", json.dumps(_json_ready(result), indent=1, allow_nan=False, default=str) + "\n"
    )
    print(
        f"{status['reason']}: {status['rounds']} rounds, {status['samples']} samples per schedule, "
        f"worst paired relative SE {status['worst_ratio_se']:.4f}",
        file=sys.stderr,
    )
    return 0 if status["reason"] != "deadline" else 3


if __name__ == "__main__":
    sys.exit(main())

"""Wall-clock against FLOPs: the mdlm and fast samplers side by side (Table 2 of arXiv:2604.02340).

Every table leads with the MDLM-speed baseline: the mdlm sampler (MDLM's ddpm_cache) with `precision="fp32-mdlm"`
and fp32 weights, which runs at about MDLM's own `ddpm_cache` loop's speed (1.14-1.25x it, measured
side by side on this project's CPU). The fp64 reference is the exactness baseline and runs too.
The fast sampler runs in the compute dtype `auto` picks (bf16 where the CPU or GPU does it
natively) and in fp32, so the bf16 gain is a ratio inside the run.

For each light fraction (sandwich placement) every variant generates with the same models, steps
and seeds; each row reports the predicted block-FLOPs saving (eq. 3), executed FLOPs, median wall
time, the measured speedup of each variant against its own all-heavy row (the median of per-repeat
ratios), realized/predicted = measured saving / predicted saving, and the speedup against the
MDLM-speed row of the same schedule. Repeats are interleaved (every repeat walks all rows, odd
repeats in reverse order) so drift on a shared machine hits all rows alike. With --time-blocks (the
default on a CPU, where the hooks cost nothing measurable) every row also reports the fraction of
its time spent in the Transformer blocks, and the all-heavy rows the eq. 4 bound on
realized/predicted that this fraction implies.

--ablation instead switches the fast sampler's mechanisms on one at a time, all-heavy, from the
MDLM-speed reference: exact draws at the revealed positions only (every mechanism off), then
skipping steps that reveal nothing, skipping rows, the fused head at the revealed positions, the
pruned last block, and bf16; each row with its executed FLOPs and wall-clock.

  python benchmarks/bench_sampler.py --config cpu                 # all rows, every variant
  python benchmarks/bench_sampler.py --config cpu --fractions 0,1 # a subset
  python benchmarks/bench_sampler.py --config cpu --ablation      # where each second goes
  python benchmarks/bench_sampler.py --config paper               # needs a CUDA GPU
  python benchmarks/bench_sampler.py --config cpu --light-sweep   # light 4/6/8/10 blocks at 25%
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


from common import (  # noqa: E402
    BlockTimer,
    add_throughput,
    machine_info,
    parse_run_arguments,
    random_model,
    summary,
    write_results,
)

import mdlm_fast as mf  # noqa: E402
from mdlm_fast.models.compute_dtype import cast_module, resolve_dtype  # noqa: E402
from mdlm_fast.sampling.fast import FastOptions  # noqa: E402

MDLM_SPEED = "mdlm-speed"


@dataclass(frozen=True)
class Variant:
    """One way of sampling: sampler, reference precision, compute dtype, fast-sampler switches."""

    name: str
    sampler: str
    precision: str = "fp64"
    dtype: str = "float32"
    options: FastOptions | None = field(default=None, compare=False)
    label: str = ""

    @property
    def is_reference(self) -> bool:
        return self.sampler == "reference"


def table_variants(names: list[str], dtypes: list[str], device: str) -> list[Variant]:
    """`reference` = the MDLM-speed row and the fp64 exactness row; `fast` = one row per dtype
    (`auto` resolved here, a duplicate of another dtype dropped)."""
    out: list[Variant] = []
    for name in names:
        if name in ("reference", MDLM_SPEED):
            out.append(
                Variant(
                    MDLM_SPEED, "reference", "fp32-mdlm", "float32", label="reference, fp32-mdlm, float32 (MDLM speed)"
                )
            )
        if name in ("reference", "reference-fp64"):
            out.append(Variant("reference-fp64", "reference", "fp64", "float32", label="reference, fp64, float32"))
        if name == "fast":
            for dtype in dtypes:
                resolved = resolve_dtype(dtype, device).name
                if all(v.name != f"fast-{resolved}" for v in out):
                    out.append(
                        Variant(
                            f"fast-{resolved}",
                            "fast",
                            "fp64",
                            resolved,
                            label=f"fast, {resolved}" + (" (auto)" if dtype == "auto" else ""),
                        )
                    )
        if name not in ("reference", MDLM_SPEED, "reference-fp64", "fast"):
            raise SystemExit(
                f"unknown sampler variant {name!r}; choose from reference, {MDLM_SPEED}, reference-fp64, fast"
            )
    return out


def ablation_variants(device: str) -> list[Variant]:
    """The MDLM-speed reference, then the fast sampler's mechanisms switched on one at a time."""
    steps = [
        (
            "fast-nothing",
            "fast, every mechanism off: exact draws at revealed positions only",
            FastOptions(False, False, False, False),
        ),
        ("+skip-noop-steps", "+ skip steps that reveal nothing", FastOptions(True, False, False, False)),
        ("+skip-rows", "+ skip rows that reveal nothing", FastOptions(True, True, False, False)),
        ("+fused-head", "+ fused head at revealed positions only", FastOptions(True, True, True, False)),
        ("+pruned-last-block", "+ pruned last block", FastOptions(True, True, True, True)),
    ]
    out = [Variant(MDLM_SPEED, "reference", "fp32-mdlm", "float32", label="reference, fp32-mdlm (MDLM speed)")]
    out += [Variant(name, "fast", "fp64", "float32", options, label) for name, label, options in steps]
    auto = resolve_dtype("auto", device)
    out.append(Variant(f"+{auto.name}", "fast", "fp64", auto.name, FastOptions(), f"+ {auto.name} ({auto.reason})"))
    return out


LIGHT_SWEEP = (4, 6, 8, 10)


@dataclass(frozen=True)
class Case:
    """One row of the table: a schedule over the model list, and what it replaces."""

    light_blocks: int
    light_fraction: float
    schedule: mf.ModelSchedule

    @property
    def key(self) -> tuple:
        return self.light_blocks, self.light_fraction


def fraction_cases(config, fractions, light_blocks, light_index=1) -> list[Case]:
    return [
        Case(light_blocks, f, mf.ModelSchedule.from_fraction(config.steps, f, "sandwich", light=light_index))
        for f in fractions
    ]


def run_cases(
    config, models, cases, variants, repeats, *, reference_keys=None, reference_repeats=None, time_blocks=False
):
    """Time every (variant, case); returns {(variant name, key): (stats of the last run, times, block fractions)}.

    reference_keys / reference_repeats: a subset of cases and fewer repeats for the slow reference
    sampler variants (None: all cases, `repeats`)."""
    # One cast copy per dtype, made before timing; the block timers hook the copies that run.
    by_dtype = {v.dtype: [cast_module(m, resolve_dtype(v.dtype).dtype) for m in models] for v in variants}
    for v in variants:  # warm-up: allocator, thread pools, lazy constants, each dtype's kernels
        mf.sample(
            by_dtype[v.dtype],
            steps=2,
            batch_size=1,
            length=config.length,
            sampler=v.sampler,
            precision=v.precision,
            device=config.device,
            dtype=v.dtype,
        )
    reference_repeats = repeats if reference_repeats is None else reference_repeats
    runs = [
        (v, c)
        for c in cases
        for v in variants
        if not v.is_reference or reference_keys is None or c.key in reference_keys
    ]
    measured = {(v.name, c.key): (None, [], []) for v, c in runs}
    for rep in range(repeats):
        # Odd repeats walk the rows backwards, so a drift of the machine's speed within a repeat
        # pushes a row's ratio to the all-heavy row one way in even repeats and the other way in odd ones.
        for variant, case in runs if rep % 2 == 0 else runs[::-1]:
            if variant.is_reference and rep >= reference_repeats:
                continue
            run_models = by_dtype[variant.dtype]
            timers = [BlockTimer(m, config.device) for m in run_models] if time_blocks else []
            try:
                st = mf.sample(
                    run_models,
                    steps=config.steps,
                    batch_size=config.batch_size,
                    length=config.length,
                    schedule=case.schedule,
                    sampler=variant.sampler,
                    precision=variant.precision,
                    seed=rep,
                    device=config.device,
                    dtype=variant.dtype,
                    _fast_options=variant.options,
                ).stats
            finally:
                for timer in timers:
                    timer.remove()
            _, times, fractions = measured[(variant.name, case.key)]
            times.append(st.wall_time_s)
            if timers:
                fractions.append(sum(t.total_s for t in timers) / st.wall_time_s)
            measured[(variant.name, case.key)] = (st, times, fractions)
            print(
                f"rep {rep} {variant.name:18s} L{case.light_blocks:<2d} {case.schedule.to_spec():18s} "
                f"{st.wall_time_s:8.2f} s  forwards {st.forwards}"
                + (f"  blocks {fractions[-1]:.1%}" if timers else ""),
                file=sys.stderr,
                flush=True,
            )
    return measured


def paired_speedup(base_times: list[float], times: list[float]) -> dict:
    """Speedup against the all-heavy row, repeat by repeat.

    Repeat k of every row runs within the same few minutes (run_cases interleaves them), so the
    ratio t_base[k] / t[k] cancels the machine's slow load drifts that a ratio of medians keeps.
    Falls back to the ratio of medians when the repeat counts differ."""
    if len(base_times) == len(times):
        ratios = [b / t for b, t in zip(base_times, times)]
        return {
            "speedup": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "paired": True,
        }
    ratio = statistics.median(base_times) / statistics.median(times)
    return {"speedup": ratio, "speedup_min": ratio, "speedup_max": ratio, "paired": False}


def ratio_to(times_a: list[float], times_b: list[float]) -> dict:
    """How many times faster b ran than a: paired by repeat where the counts agree (see paired_speedup)."""
    r = paired_speedup(times_a, times_b)
    return {"ratio": r["speedup"], "min": r["speedup_min"], "max": r["speedup_max"], "paired": r["paired"]}


def table_rows(cases, variants, measured, base_key) -> list[dict]:
    rows = []
    for variant in variants:
        base_times = measured[(variant.name, base_key)][1] if (variant.name, base_key) in measured else None
        for case in cases:
            if (variant.name, case.key) not in measured:
                continue
            st, times, fractions = measured[(variant.name, case.key)]
            t = summary(times)
            speed = paired_speedup(base_times, times) if base_times else None
            saving = 1 - 1 / speed["speedup"] if speed else None
            block_fraction = statistics.median(fractions) if fractions else None
            rows.append(
                {
                    "variant": variant.name,
                    "label": variant.label,
                    "sampler": variant.sampler,
                    "precision": variant.precision,
                    "dtype": st.dtype,
                    "dtype_reason": st.dtype_reason,
                    "light_blocks": case.light_blocks,
                    "light_fraction": case.light_fraction,
                    "schedule": st.schedule,
                    "predicted_saving": st.predicted_saving,
                    "analytic_saving": st.analytic_flops["analytic_saving"],
                    "executed_gflops": st.executed_flops["total"] / 1e9,
                    "executed_block_gflops": st.executed_flops["blocks"] / 1e9,
                    "executed_head_gflops": st.executed_flops["head"] / 1e9,
                    "forwards": sum(st.forwards),
                    "forwards_per_step": st.forwards_per_step,
                    "rows_run": sum(st.rows),
                    "head_positions": st.head_positions,
                    "median_s": t["median_s"],
                    "min_s": t["min_s"],
                    "max_s": t["max_s"],
                    "spread": t["spread"],
                    "repeats": t["repeats"],
                    "times_s": list(times),
                    "speedup_vs_own_all_heavy": speed["speedup"] if speed else None,
                    "speedup_min": speed["speedup_min"] if speed else None,
                    "speedup_max": speed["speedup_max"] if speed else None,
                    "speedup_paired": speed["paired"] if speed else None,
                    "measured_saving": saving,
                    "realized_over_predicted": saving / st.predicted_saving
                    if saving is not None and st.predicted_saving
                    else None,
                    # the same ratio at the extreme repeats: how far noise moves it
                    "realized_over_predicted_min": (1 - 1 / speed["speedup_min"]) / st.predicted_saving
                    if speed and st.predicted_saving
                    else None,
                    "realized_over_predicted_max": (1 - 1 / speed["speedup_max"]) / st.predicted_saving
                    if speed and st.predicted_saving
                    else None,
                    "block_fraction": block_fraction,
                    # eq. 4: only block time scales with depth, so realized/predicted <= the all-heavy block fraction
                    "eq4_bound_realized_over_predicted": block_fraction if case.light_fraction == 0 else None,
                }
            )
    times_of = {(r["variant"], r["light_blocks"], r["light_fraction"]): r["times_s"] for r in rows}
    fp32_fast = next((v.name for v in variants if v.sampler == "fast" and v.dtype == "float32" and not v.options), None)
    for r in rows:  # against the baselines at an equal schedule: MDLM speed first
        key = (r["light_blocks"], r["light_fraction"])
        for stem, name in (
            ("vs_mdlm_speed", MDLM_SPEED),
            ("vs_reference_fp64", "reference-fp64"),
            ("vs_fast_float32", fp32_fast),
        ):
            base = times_of.get((name, *key))
            applies = r["variant"] != name and (stem != "vs_fast_float32" or r["sampler"] == "fast")
            ratio = ratio_to(base, r["times_s"]) if base and applies else None
            r[f"speedup_{stem}"] = ratio["ratio"] if ratio else None
            r[f"speedup_{stem}_min"] = ratio["min"] if ratio else None
            r[f"speedup_{stem}_max"] = ratio["max"] if ratio else None
    return rows


def ablation_rows(case, variants, measured) -> list[dict]:
    """One row per mechanism: executed FLOPs, wall-clock, the gain over the row before and the
    total over the MDLM-speed row (paired by repeat where the repeat counts agree)."""
    rows, before = [], None
    mdlm_times = measured[(MDLM_SPEED, case.key)][1]
    for variant in variants:
        st, times, _ = measured[(variant.name, case.key)]
        t = summary(times)
        total = ratio_to(mdlm_times, times)
        step = ratio_to(before[1], times) if before else None
        rows.append(
            {
                "variant": variant.name,
                "label": variant.label,
                "sampler": variant.sampler,
                "precision": variant.precision,
                "dtype": st.dtype,
                "dtype_reason": st.dtype_reason,
                "options": None if variant.options is None else vars(variant.options),
                "schedule": st.schedule,
                "forwards": sum(st.forwards),
                "rows_run": sum(st.rows),
                "head_positions": st.head_positions,
                "executed_gflops": st.executed_flops["total"] / 1e9,
                "executed_block_gflops": st.executed_flops["blocks"] / 1e9,
                "executed_head_gflops": st.executed_flops["head"] / 1e9,
                "flops_vs_previous": before[0].executed_flops["total"] / st.executed_flops["total"] if before else None,
                "median_s": t["median_s"],
                "min_s": t["min_s"],
                "max_s": t["max_s"],
                "spread": t["spread"],
                "repeats": t["repeats"],
                "times_s": list(times),
                "speedup_vs_previous": step["ratio"] if step else None,
                "speedup_vs_previous_min": step["min"] if step else None,
                "speedup_vs_previous_max": step["max"] if step else None,
                "speedup_vs_mdlm_speed": total["ratio"] if variant.name != MDLM_SPEED else 1.0,
                "speedup_vs_mdlm_speed_min": total["min"] if variant.name != MDLM_SPEED else 1.0,
                "speedup_vs_mdlm_speed_max": total["max"] if variant.name != MDLM_SPEED else 1.0,
            }
        )
        before = (st, times)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu", help="cpu | paper | tiny")
    parser.add_argument(
        "--fractions",
        default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
        help="light fractions, comma-separated; must start with 0 for speedups",
    )
    parser.add_argument(
        "--samplers",
        default="reference,fast",
        help=f"variants: reference (= {MDLM_SPEED} and reference-fp64), {MDLM_SPEED}, reference-fp64, fast",
    )
    parser.add_argument(
        "--dtypes", default="auto,float32", help="compute dtypes of the fast sampler's rows (auto = bf16 where native)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--reference-fractions", default=None, help="run the (slow) mdlm sampler only at these fractions (default: all)"
    )
    parser.add_argument(
        "--reference-repeats", type=int, default=None, help="repeats of the mdlm sampler (default: --repeats)"
    )
    parser.add_argument(
        "--light-sweep",
        action="store_true",
        help="instead: light 4/6/8/10 blocks at sandwich 25%% (Table 1 of arXiv:2604.02340)",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="instead: the fast sampler's mechanisms on one at a time, all-heavy, from MDLM speed",
    )
    parser.add_argument(
        "--time-blocks",
        choices=["auto", "on", "off"],
        default="auto",
        help="time the Transformer blocks (eq. 4); auto = on for CPU configs",
    )
    args, config = parse_run_arguments(parser, argv)
    time_blocks = args.time_blocks == "on" or (args.time_blocks == "auto" and config.device == "cpu")
    heavy = random_model(config, config.heavy_blocks, seed=0)
    meta = {
        "config": config.name,
        "config_detail": {k: str(v) for k, v in vars(config).items()},
        "machine": machine_info(config),
        "auto_dtype": str(resolve_dtype("auto", config.device)),
    }
    if args.ablation:
        variants = ablation_variants(config.device)
        models = [heavy]
        case = Case(config.light_blocks, 0.0, mf.ModelSchedule.all_heavy(config.steps))
        measured = run_cases(
            config, models, [case], variants, args.repeats, reference_repeats=args.reference_repeats, time_blocks=False
        )
        rows = ablation_rows(case, variants, measured)
        add_throughput(rows, meta["machine"].get("peaks", {}))
        path = write_results(args.name or f"ablation_{config.name}", {"benchmark": "bench_ablation", **meta}, rows)
        for r in rows:
            gain = f"{r['speedup_vs_previous']:.2f}x" if r["speedup_vs_previous"] else "  –  "
            print(
                f"{r['label']:62s} {r['executed_gflops']:10.1f} GFLOPs  {r['median_s']:8.2f} s (±{r['spread']:.1%})"
                f"  step {gain}  vs MDLM speed {r['speedup_vs_mdlm_speed']:.2f}x"
            )
        print(f"results: {path}")
        return
    variants = table_variants(args.samplers.split(","), args.dtypes.split(","), config.device)
    if args.light_sweep:
        sweep = [b for b in LIGHT_SWEEP if b < config.heavy_blocks] or [config.light_blocks]
        models = [heavy] + [random_model(config, b, seed=i + 1) for i, b in enumerate(sweep)]
        cases = fraction_cases(config, [0.0], sweep[0])
        cases = [Case(0, 0.0, cases[0].schedule)] + [
            c for i, b in enumerate(sweep) for c in fraction_cases(config, [0.25], b, light_index=i + 1)
        ]
        reference_keys = None
        name = args.name or f"light_sweep_{config.name}"
    else:
        models = [heavy, random_model(config, config.light_blocks, seed=1)]
        fractions = [float(f) for f in args.fractions.split(",")]
        cases = fraction_cases(config, fractions, config.light_blocks)
        reference_keys = (
            None
            if args.reference_fractions is None
            else {(config.light_blocks, float(f)) for f in args.reference_fractions.split(",")}
        )
        name = args.name or f"sampler_{config.name}"
    measured = run_cases(
        config,
        models,
        cases,
        variants,
        args.repeats,
        reference_keys=reference_keys,
        reference_repeats=args.reference_repeats,
        time_blocks=time_blocks,
    )
    rows = table_rows(cases, variants, measured, cases[0].key if cases[0].light_fraction == 0 else None)
    add_throughput(rows, meta["machine"].get("peaks", {}))
    path = write_results(
        name, {"benchmark": "bench_sampler", "light_sweep": args.light_sweep, "time_blocks": time_blocks, **meta}, rows
    )
    nan = float("nan")
    for r in rows:
        print(
            f"{r['variant']:15s} L{r['light_blocks']:<2d} f={r['light_fraction']:.2f} "
            f"pred {r['predicted_saving']:.3f}  {r['median_s']:8.2f} s (±{r['spread']:.1%})  "
            f"{r['executed_gflop_per_s']:6.0f} GFLOP/s ({r['fraction_of_gemm_peak'] or nan:.0%} of GEMM peak)  "
            f"vs MDLM speed {r['speedup_vs_mdlm_speed'] or nan:.2f}x  "
            f"speedup {r['speedup_vs_own_all_heavy'] or nan:.3f}  "
            f"realized/pred {r['realized_over_predicted'] or nan:.3f}  "
            f"vs fast fp32 {r['speedup_vs_fast_float32'] or nan:.2f}x  blocks {r['block_fraction'] or nan:.1%}"
        )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

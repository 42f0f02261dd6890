"""Wall-clock against FLOPs: the reference and fast samplers side by side (the paper's Table 2).

For each light fraction (sandwich placement) both samplers generate with the same models, steps
and seeds; each row reports the predicted block-FLOPs saving (eq. 3), executed FLOPs, median
wall time, the measured speedup of each sampler against its own all-heavy row (the median of
per-repeat ratios), and realized/predicted = measured saving / predicted saving. Repeats are
interleaved (every repeat walks all rows, odd repeats in reverse order) so drift on a shared
machine hits all rows alike. With --time-blocks (the default on a CPU, where the hooks cost
nothing measurable) every row also reports the fraction of its time spent in the Transformer
blocks, and the all-heavy rows the eq. 4 bound on realized/predicted that this fraction implies.

  python benchmarks/bench_sampler.py --config cpu                 # all rows, both samplers
  python benchmarks/bench_sampler.py --config cpu --fractions 0,1 # a subset
  python benchmarks/bench_sampler.py --config paper               # needs a CUDA GPU
  python benchmarks/bench_sampler.py --config cpu --light-sweep   # light 4/6/8/10 blocks at 25%
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import mdlm_fast as mf  # noqa: E402
from common import BlockTimer, get_config, machine_info, random_model, summary, write_results  # noqa: E402

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
    return [Case(light_blocks, f, mf.ModelSchedule.from_fraction(config.steps, f, "sandwich", light=light_index))
            for f in fractions]


def run_cases(config, models, cases, samplers, repeats, *, reference_keys=None, reference_repeats=None,
              time_blocks=False):
    """Time every (sampler, case); returns {(sampler, key): (stats of the last run, times, block fractions)}.

    reference_keys / reference_repeats: a subset of cases and fewer repeats for the slow reference
    sampler (None: all cases, `repeats`)."""
    for sampler in samplers:  # warm-up: allocator, thread pools, lazy constants
        mf.sample(models, steps=2, batch_size=1, length=config.length, sampler=sampler, device=config.device)
    reference_repeats = repeats if reference_repeats is None else reference_repeats
    runs = [(s, c) for c in cases for s in samplers
            if s != "reference" or reference_keys is None or c.key in reference_keys]
    measured = {(s, c.key): (None, [], []) for s, c in runs}
    for rep in range(repeats):
        # Odd repeats walk the rows backwards, so a drift of the machine's speed within a repeat
        # pushes a row's ratio to the all-heavy row one way in even repeats and the other way in odd ones.
        for sampler, case in (runs if rep % 2 == 0 else runs[::-1]):
            if sampler == "reference" and rep >= reference_repeats:
                continue
            timers = [BlockTimer(m, config.device) for m in models] if time_blocks else []
            try:
                st = mf.sample(models, steps=config.steps, batch_size=config.batch_size, length=config.length,
                               schedule=case.schedule, sampler=sampler, seed=rep, device=config.device).stats
            finally:
                for timer in timers:
                    timer.remove()
            _, times, fractions = measured[(sampler, case.key)]
            times.append(st.wall_time_s)
            if timers:
                fractions.append(sum(t.total_s for t in timers) / st.wall_time_s)
            measured[(sampler, case.key)] = (st, times, fractions)
            print(f"rep {rep} {sampler:9s} L{case.light_blocks:<2d} {case.schedule.to_spec():18s} "
                  f"{st.wall_time_s:8.2f} s  forwards {st.forwards}"
                  + (f"  blocks {fractions[-1]:.1%}" if timers else ""), file=sys.stderr, flush=True)
    return measured


def paired_speedup(base_times: list[float], times: list[float]) -> dict:
    """Speedup against the all-heavy row, repeat by repeat.

    Repeat k of every row runs within the same few minutes (run_cases interleaves them), so the
    ratio t_base[k] / t[k] cancels the machine's slow load drifts that a ratio of medians keeps.
    Falls back to the ratio of medians when the repeat counts differ."""
    if len(base_times) == len(times):
        ratios = [b / t for b, t in zip(base_times, times)]
        return {"speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
                "paired": True}
    ratio = statistics.median(base_times) / statistics.median(times)
    return {"speedup": ratio, "speedup_min": ratio, "speedup_max": ratio, "paired": False}


def table_rows(cases, samplers, measured, base_key) -> list[dict]:
    rows = []
    for sampler in samplers:
        base_times = measured[(sampler, base_key)][1] if (sampler, base_key) in measured else None
        for case in cases:
            if (sampler, case.key) not in measured:
                continue
            st, times, fractions = measured[(sampler, case.key)]
            t = summary(times)
            speed = paired_speedup(base_times, times) if base_times else None
            saving = 1 - 1 / speed["speedup"] if speed else None
            block_fraction = statistics.median(fractions) if fractions else None
            rows.append({
                "sampler": sampler, "light_blocks": case.light_blocks, "light_fraction": case.light_fraction,
                "schedule": st.schedule, "predicted_saving": st.predicted_saving,
                "analytic_saving": st.analytic_flops["analytic_saving"],
                "executed_gflops": st.executed_flops["total"] / 1e9,
                "executed_block_gflops": st.executed_flops["blocks"] / 1e9,
                "executed_head_gflops": st.executed_flops["head"] / 1e9,
                "forwards": sum(st.forwards), "forwards_per_step": st.forwards_per_step,
                "rows_run": sum(st.rows), "head_positions": st.head_positions,
                "median_s": t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"], "spread": t["spread"],
                "repeats": t["repeats"], "times_s": list(times),
                "speedup_vs_own_all_heavy": speed["speedup"] if speed else None,
                "speedup_min": speed["speedup_min"] if speed else None,
                "speedup_max": speed["speedup_max"] if speed else None,
                "speedup_paired": speed["paired"] if speed else None,
                "measured_saving": saving,
                "realized_over_predicted": saving / st.predicted_saving if saving is not None and st.predicted_saving
                else None,
                # the same ratio at the extreme repeats: how far noise moves it
                "realized_over_predicted_min": (1 - 1 / speed["speedup_min"]) / st.predicted_saving
                if speed and st.predicted_saving else None,
                "realized_over_predicted_max": (1 - 1 / speed["speedup_max"]) / st.predicted_saving
                if speed and st.predicted_saving else None,
                "block_fraction": block_fraction,
                # eq. 4: only block time scales with depth, so realized/predicted <= the all-heavy block fraction
                "eq4_bound_realized_over_predicted": block_fraction if case.light_fraction == 0 else None,
            })
    by_key = {(r["sampler"], r["light_blocks"], r["light_fraction"]): r for r in rows}
    for r in rows:  # fast vs reference at an equal schedule
        ref = by_key.get(("reference", r["light_blocks"], r["light_fraction"]))
        r["speedup_vs_reference"] = ref["median_s"] / r["median_s"] if ref else None
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu", help="cpu | paper | tiny")
    parser.add_argument("--fractions", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
                        help="light fractions, comma-separated; must start with 0 for speedups")
    parser.add_argument("--samplers", default="reference,fast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-fractions", default=None,
                        help="run the (slow) reference sampler only at these fractions (default: all)")
    parser.add_argument("--reference-repeats", type=int, default=None,
                        help="repeats of the reference sampler (default: --repeats)")
    parser.add_argument("--light-sweep", action="store_true",
                        help="instead: light 4/6/8/10 blocks at sandwich 25%% (the paper's Table 1)")
    parser.add_argument("--time-blocks", choices=["auto", "on", "off"], default="auto",
                        help="time the Transformer blocks (eq. 4); auto = on for CPU configs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--name", default=None, help="results file stem (default: sampler_<config>)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = get_config(args.config)
    samplers = args.samplers.split(",")
    time_blocks = args.time_blocks == "on" or (args.time_blocks == "auto" and config.device == "cpu")
    heavy = random_model(config, config.heavy_blocks, seed=0)
    if args.light_sweep:
        sweep = [b for b in LIGHT_SWEEP if b < config.heavy_blocks] or [config.light_blocks]
        models = [heavy] + [random_model(config, b, seed=i + 1) for i, b in enumerate(sweep)]
        cases = fraction_cases(config, [0.0], sweep[0])
        cases = [Case(0, 0.0, cases[0].schedule)] + [c for i, b in enumerate(sweep)
                                                    for c in fraction_cases(config, [0.25], b, light_index=i + 1)]
        reference_keys = None
        name = args.name or f"light_sweep_{config.name}"
    else:
        models = [heavy, random_model(config, config.light_blocks, seed=1)]
        fractions = [float(f) for f in args.fractions.split(",")]
        cases = fraction_cases(config, fractions, config.light_blocks)
        reference_keys = None if args.reference_fractions is None else {
            (config.light_blocks, float(f)) for f in args.reference_fractions.split(",")}
        name = args.name or f"sampler_{config.name}"
    measured = run_cases(config, models, cases, samplers, args.repeats, reference_keys=reference_keys,
                         reference_repeats=args.reference_repeats, time_blocks=time_blocks)
    rows = table_rows(cases, samplers, measured, cases[0].key if cases[0].light_fraction == 0 else None)
    path = write_results(name, {"benchmark": "bench_sampler", "config": config.name,
                                "config_detail": {k: str(v) for k, v in vars(config).items()},
                                "light_sweep": args.light_sweep, "time_blocks": time_blocks,
                                "machine": machine_info(config)}, rows)
    nan = float("nan")
    for r in rows:
        print(f"{r['sampler']:9s} L{r['light_blocks']:<2d} f={r['light_fraction']:.2f} "
              f"pred {r['predicted_saving']:.3f}  {r['median_s']:8.2f} s (±{r['spread']:.1%})  "
              f"speedup {r['speedup_vs_own_all_heavy'] or nan:.3f}  "
              f"realized/pred {r['realized_over_predicted'] or nan:.3f}  "
              f"vs ref {r['speedup_vs_reference'] or nan:.2f}x  blocks {r['block_fraction'] or nan:.1%}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()

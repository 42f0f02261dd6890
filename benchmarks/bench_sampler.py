"""Wall-clock against FLOPs: the reference and fast samplers side by side (the paper's Table 2).

For each light fraction (sandwich placement) both samplers generate with the same models, steps
and seeds; each row reports the predicted block-FLOPs saving (eq. 3), executed FLOPs, median
wall time, the measured speedup of each sampler against its own all-heavy row, and
realized/predicted = measured saving / predicted saving. Repeats are interleaved (every repeat
walks all rows) so drift on a shared machine hits all rows alike.

  python benchmarks/bench_sampler.py --config cpu                 # all rows, both samplers
  python benchmarks/bench_sampler.py --config cpu --fractions 0,1 # a subset
  python benchmarks/bench_sampler.py --config paper               # needs a CUDA GPU
  python benchmarks/bench_sampler.py --config cpu --light-sweep   # light 4/6/8/10 blocks at 25%
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import mdlm_fast as mf  # noqa: E402
from common import get_config, machine_info, random_model, summary, write_results  # noqa: E402


def _run(models, config, schedule, sampler, seed):
    result = mf.sample(models, steps=config.steps, batch_size=config.batch_size, length=config.length,
                       schedule=schedule, sampler=sampler, seed=seed, device=config.device)
    return result.stats


def bench_fractions(config, fractions, samplers, repeats, light_blocks, reference_fractions=None,
                    reference_repeats=None):
    """reference_fractions / reference_repeats: a subset of fractions and fewer repeats for the slow
    reference sampler (None: all fractions, `repeats`)."""
    heavy = random_model(config, config.heavy_blocks, seed=0)
    light = random_model(config, light_blocks, seed=1)
    models = [heavy, light]
    specs = [f"sandwich:{f:g}" for f in fractions]
    # warm-up: one short run per sampler (allocator, thread pools, lazy constants)
    for sampler in samplers:
        mf.sample(models, steps=2, batch_size=1, length=config.length, sampler=sampler, device=config.device)
    ref_specs = specs if reference_fractions is None else [f"sandwich:{f:g}" for f in reference_fractions]
    runs = [(s, spec) for spec in specs for s in samplers if s != "reference" or spec in ref_specs]
    times = {key: [] for key in runs}
    stats = {}
    reference_repeats = repeats if reference_repeats is None else reference_repeats
    for rep in range(repeats):
        for sampler, spec in runs:
            if sampler == "reference" and rep >= reference_repeats:
                continue
            st = _run(models, config, spec, sampler, seed=rep)
            times[(sampler, spec)].append(st.wall_time_s)
            stats[(sampler, spec)] = st
            print(f"rep {rep} {sampler:9s} {spec:14s} {st.wall_time_s:8.2f} s  forwards {st.forwards}",
                  file=sys.stderr, flush=True)
    rows = []
    for sampler in samplers:
        base = summary(times[(sampler, specs[0])])["median_s"] if fractions[0] == 0 else None
        for f, spec in zip(fractions, specs):
            if (sampler, spec) not in stats:
                continue
            st, t = stats[(sampler, spec)], summary(times[(sampler, spec)])
            measured_saving = 1 - t["median_s"] / base if base else None
            rows.append({
                "sampler": sampler, "light_blocks": light_blocks, "light_fraction": f, "schedule": st.schedule,
                "predicted_saving": st.predicted_saving,
                "analytic_saving": st.analytic_flops["analytic_saving"],
                "executed_gflops": st.executed_flops["total"] / 1e9,
                "executed_block_gflops": st.executed_flops["blocks"] / 1e9,
                "executed_head_gflops": st.executed_flops["head"] / 1e9,
                "forwards": sum(st.forwards), "forwards_per_step": st.forwards_per_step,
                "rows_run": sum(st.rows), "head_positions": st.head_positions,
                "median_s": t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"], "spread": t["spread"],
                "repeats": t["repeats"],
                "speedup_vs_own_all_heavy": base / t["median_s"] if base else None,
                "measured_saving": measured_saving,
                "realized_over_predicted": (measured_saving / st.predicted_saving
                                            if measured_saving is not None and st.predicted_saving else None),
            })
    # fast vs reference at equal schedule
    by_key = {(r["sampler"], r["light_fraction"]): r for r in rows}
    for r in rows:
        ref = by_key.get(("reference", r["light_fraction"]))
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
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--name", default=None, help="results file stem (default: sampler_<config>)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = get_config(args.config)
    samplers = args.samplers.split(",")
    if args.light_sweep:
        rows = []
        for light_blocks in (4, 6, 8, 10):
            rows += bench_fractions(config, [0.0, 0.25], samplers, args.repeats, light_blocks)
        name = args.name or f"light_sweep_{config.name}"
    else:
        fractions = [float(f) for f in args.fractions.split(",")]
        ref = None if args.reference_fractions is None else [float(f) for f in args.reference_fractions.split(",")]
        rows = bench_fractions(config, fractions, samplers, args.repeats, config.light_blocks, ref,
                               args.reference_repeats)
        name = args.name or f"sampler_{config.name}"
    path = write_results(name, {"benchmark": "bench_sampler", "config": config.name,
                                "config_detail": {k: str(v) for k, v in vars(config).items()},
                                "machine": machine_info(config)}, rows)
    for r in rows:
        print(f"{r['sampler']:9s} L{r['light_blocks']:<2d} f={r['light_fraction']:.2f} "
              f"pred {r['predicted_saving']:.3f}  {r['median_s']:8.2f} s (±{r['spread']:.1%})  "
              f"speedup {r['speedup_vs_own_all_heavy'] or float('nan'):.3f}  "
              f"realized/pred {r['realized_over_predicted'] or float('nan'):.3f}  "
              f"vs ref {r['speedup_vs_reference'] or float('nan'):.2f}x")
    print(f"results: {path}")


if __name__ == "__main__":
    main()

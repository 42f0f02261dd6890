"""Where the time goes (eq. 4): Transformer blocks vs everything else.

Model scheduling can only shrink the block time: if a fraction p of an all-heavy run is spent in
the blocks, replacing the heavy model by the light one on a fraction f of the steps saves at most
p * f * (1 - n_light / n_heavy) of the wall time, i.e. realized/predicted <= p. This script runs
each sampler all-heavy and all-light, times the blocks with hooks on the first and last block
(synchronized on a GPU), and reports p and the bound it implies, beside the measured
all-heavy -> all-light saving.

  python benchmarks/bench_breakdown.py --config cpu
  python benchmarks/bench_breakdown.py --config paper     # needs a CUDA GPU

Equation numbers (eq. 3-8) are those of arXiv:2604.02340 (Sedykh, Sorokin, Malykh 2026), which
docs/design.md keeps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


from common import BlockTimer, machine_info, parse_run_arguments, random_model, write_results  # noqa: E402

import mdlm_fast as mf  # noqa: E402


def breakdown(config, sampler: str, models: list, schedule: str, repeats: int) -> dict:
    """Median wall time and block-time fraction of `repeats` runs (hooks on every model)."""
    walls, fractions = [], []
    for rep in range(repeats):
        timers = [BlockTimer(m, config.device) for m in models]
        try:
            stats = mf.sample(
                models,
                steps=config.steps,
                batch_size=config.batch_size,
                length=config.length,
                schedule=schedule,
                sampler=sampler,
                seed=rep,
                device=config.device,
            ).stats
        finally:
            for timer in timers:
                timer.remove()
        blocks = sum(t.total_s for t in timers)
        walls.append(stats.wall_time_s)
        fractions.append(blocks / stats.wall_time_s)
        print(
            f"rep {rep} {sampler:9s} {schedule:6s} wall {stats.wall_time_s:8.2f} s  blocks {blocks:8.2f} s "
            f"({blocks / stats.wall_time_s:.1%})",
            file=sys.stderr,
            flush=True,
        )
    return {
        "wall_s": statistics.median(walls),
        "wall_min_s": min(walls),
        "wall_max_s": max(walls),
        "block_fraction": statistics.median(fractions),
        "block_fraction_min": min(fractions),
        "block_fraction_max": max(fractions),
        "repeats": repeats,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu", help="cpu | paper | tiny")
    parser.add_argument("--samplers", default="reference,fast")
    parser.add_argument("--repeats", type=int, default=2)
    args, config = parse_run_arguments(parser, argv)
    models = [random_model(config, config.heavy_blocks, seed=0), random_model(config, config.light_blocks, seed=1)]
    for sampler in args.samplers.split(","):  # warm-up
        mf.sample(models, steps=2, batch_size=1, length=config.length, sampler=sampler, device=config.device)
    ratio = config.light_blocks / config.heavy_blocks
    rows = []
    for sampler in args.samplers.split(","):
        heavy = breakdown(config, sampler, models, "heavy", args.repeats)
        light = breakdown(config, sampler, models, "light", args.repeats)
        p = heavy["block_fraction"]
        predicted = 1 - ratio  # eq. 3 at f = 1
        measured = 1 - light["wall_s"] / heavy["wall_s"]
        rows.append(
            {
                "sampler": sampler,
                "heavy_wall_s": heavy["wall_s"],
                "heavy_block_fraction": p,
                "heavy_block_fraction_min": heavy["block_fraction_min"],
                "heavy_block_fraction_max": heavy["block_fraction_max"],
                "light_wall_s": light["wall_s"],
                "light_block_fraction": light["block_fraction"],
                "predicted_saving_all_light": predicted,
                "bound_saving_all_light": p * predicted,  # eq. 4
                "bound_speedup_all_light": 1 / (1 - p * predicted),
                "measured_saving_all_light": measured,
                "realized_over_predicted": measured / predicted,
                "bound_realized_over_predicted": p,
                "repeats": args.repeats,
            }
        )
    path = write_results(
        args.name or f"breakdown_{config.name}",
        {
            "benchmark": "bench_breakdown",
            "config": config.name,
            "config_detail": {k: str(v) for k, v in vars(config).items()},
            "machine": machine_info(config),
        },
        rows,
    )
    for r in rows:
        print(
            f"{r['sampler']:9s} blocks {r['heavy_block_fraction']:.1%} of the heavy run, "
            f"{r['light_block_fraction']:.1%} of the light run; all-light saving: predicted "
            f"{r['predicted_saving_all_light']:.1%}, bound {r['bound_saving_all_light']:.1%}, "
            f"measured {r['measured_saving_all_light']:.1%}"
        )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

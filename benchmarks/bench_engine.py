"""The engine against sample() at the same row budget: forwards, rows per forward, wall-clock.

A workload of N samples in batches of B (the row budget) with seeds seed, seed + 1, ... runs two
ways: batch after batch through sample() (each call waits for its slowest row, and a forward runs
only the batch's rows that reveal something at that step), and all at once through the Engine with
max_rows = B (every forward packed from any batch's ready rows). Both draw the same tokens (checked
here). Each is run at T = L and T = 4L steps (--factors) with interleaved repeats; rows report
forwards, mean rows per forward, the fill (rows per forward / B) over the whole run and under
sustained load (forwards started while requests still waited in the queue), forwards per sample,
median wall-clock and samples/s.

The forward-cost curve times one trunk forward (last block pruned to a step's few revealed
positions, as the samplers run it) over R rows: the per-row cost against R is what sets the
device's default row budget (flat on a CPU: a small budget; falling on a GPU: a large one).

  python benchmarks/bench_engine.py --config embedded            # the embedded models, L 64
  python benchmarks/bench_engine.py --config embedded --length 32 --threads 1   # a busy machine
  python benchmarks/bench_engine.py --config paper               # needs a CUDA GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine_info, parse_run_arguments, random_model, summary, synchronize, write_results  # noqa: E402

import mdlm_fast as mf  # noqa: E402
from mdlm_fast.sampling.engine import default_max_rows  # noqa: E402
from mdlm_fast.sampling.many import batch_seeds  # noqa: E402

# Per config: (length, row budget, samples, curve rows). The embedded models run at L 64 here so
# that the whole benchmark stays within minutes on a 2-core CPU; the paper config at its own L.
SIZES = {
    "embedded": (64, 8, 48, [1, 2, 4, 8, 16]),
    "cpu": (128, 8, 24, [1, 2, 4, 8]),
    "paper": (1024, 64, 128, [1, 4, 16, 32, 64, 128, 256]),
    "tiny": (32, 4, 12, [1, 2, 4, 8]),
}


def forward_cost_curve(model, config, length, rows_list, repeats) -> list[dict]:
    """Median time of one pruned trunk forward over R rows (2 revealed positions per row)."""
    device = config.device
    denoiser = mf.Denoiser(model)
    inputs = {}
    for rows in rows_list:
        x = torch.full((rows, length), denoiser.mask_index, dtype=torch.int64, device=device)
        positions = torch.tensor([[0, length // 2]] * rows, device=device)
        inputs[rows] = (x, torch.full((rows,), 1.0, device=device), positions)
    times = {rows: [] for rows in rows_list}
    with torch.inference_mode():
        for rows in rows_list:  # warm-up
            denoiser.hidden_at(*inputs[rows])
        for rep in range(repeats):
            for rows in rows_list if rep % 2 == 0 else rows_list[::-1]:
                synchronize(device)
                start = time.perf_counter()
                denoiser.hidden_at(*inputs[rows])
                synchronize(device)
                times[rows].append(time.perf_counter() - start)
    out = []
    for rows in rows_list:
        s = summary(times[rows])
        out.append({"rows": rows, **s, "per_row_s": s["median_s"] / rows})
    base = out[0]["per_row_s"]
    for row in out:
        row["per_row_vs_one_row"] = row["per_row_s"] / base
    return out


def run_batches(models, batches, steps, length, schedule, device):
    """Batch after batch through sample(): tokens, forwards, rows, wall."""
    synchronize(device)
    start = time.perf_counter()
    tokens, forwards, rows = [], 0, 0
    for seed, size in batches:
        result = mf.sample(
            models, steps=steps, batch_size=size, length=length, schedule=schedule, seed=seed, device=device
        )
        tokens.append(result.tokens)
        forwards += sum(result.stats.forwards)
        rows += sum(result.stats.rows)
    synchronize(device)
    return torch.cat(tokens), forwards, rows, time.perf_counter() - start, None


def run_engine(models, batches, steps, length, schedule, device, budget):
    """All batches through one Engine: tokens, forwards, rows, wall, and the fill under sustained load."""
    engine = mf.Engine(models, device=device, max_rows=budget, max_queue=len(batches))
    synchronize(device)
    start = time.perf_counter()
    handles = [
        engine.submit(mf.Request(n=size, length=length, steps=steps, schedule=schedule, seed=seed))
        for seed, size in batches
    ]
    done, loaded_forwards, loaded_rows = {}, 0, 0
    while not engine.idle:
        waiting = engine.queue_depth > 0
        rows_before = sum(engine.stats()["rows"])
        for c in engine.step():
            done[c.handle] = c
        if waiting:
            loaded_forwards += 1
            loaded_rows += sum(engine.stats()["rows"]) - rows_before
    synchronize(device)
    wall = time.perf_counter() - start
    stats = engine.stats()
    steady = loaded_rows / (loaded_forwards * budget) if loaded_forwards else None
    return torch.cat([done[h].tokens for h in handles]), sum(stats["forwards"]), sum(stats["rows"]), wall, steady


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="embedded")
    parser.add_argument("--factors", default="1,4", help="steps as multiples of the length (default 1,4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--curve-repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=None, help="samples per run (default: per config)")
    parser.add_argument("--budget", type=int, default=None, help="row budget B (default: per config)")
    parser.add_argument("--length", type=int, default=None, help="sequence length L (default: per config)")
    parser.add_argument("--schedule", default="sandwich:0.25")
    parser.add_argument("--seed", type=int, default=0)
    args, config = parse_run_arguments(parser, argv)
    length, budget, samples, curve_rows = SIZES[config.name]
    budget = args.budget or budget
    length = args.length or length
    samples = args.samples or samples
    factors = [int(f) for f in args.factors.split(",")]
    load_before = os.getloadavg()

    heavy = random_model(config, config.heavy_blocks, 0)
    light = random_model(config, config.light_blocks, 1)
    models = [heavy, light]
    curve = forward_cost_curve(heavy, config, length, curve_rows, args.curve_repeats)
    batches = batch_seeds(samples, budget, args.seed)
    results = {}
    for rep in range(args.repeats):
        for factor in factors:
            order = ["sample", "engine"] if rep % 2 == 0 else ["engine", "sample"]
            for variant in order:
                steps = factor * length
                if variant == "sample":
                    out = run_batches(models, batches, steps, length, args.schedule, config.device)
                else:
                    out = run_engine(models, batches, steps, length, args.schedule, config.device, budget)
                results.setdefault((factor, variant), []).append(out)
                print(
                    f"repeat {rep} T={steps} {variant}: {out[3]:.2f} s, {out[1]} forwards, "
                    f"{out[2] / out[1]:.2f} rows per forward",
                    file=sys.stderr,
                )

    rows = []
    for factor in factors:
        reference = results[(factor, "sample")][0][0]
        for variant in ("sample", "engine"):
            runs = results[(factor, variant)]
            _, forwards, rows_run, _, steady = runs[0]
            walls = [r[3] for r in runs]
            s = summary(walls)
            rows.append(
                {
                    "variant": variant,
                    "steps_factor": factor,
                    "steps": factor * length,
                    "length": length,
                    "row_budget": budget,
                    "samples": samples,
                    "schedule": args.schedule,
                    "forwards": forwards,
                    "rows_run": rows_run,
                    "rows_per_forward": rows_run / forwards,
                    "fill": rows_run / (forwards * budget),
                    "fill_under_load": steady,
                    "forwards_per_sample": forwards / samples,
                    **s,
                    "wall_s": walls,
                    "samples_per_s": samples / s["median_s"],
                    "tokens_equal_sample": all(torch.equal(r[0], reference) for r in runs),
                }
            )
        sample_row, engine_row = rows[-2], rows[-1]
        ratios = [a[3] / b[3] for a, b in zip(results[(factor, "sample")], results[(factor, "engine")])]
        engine_row["speedup_vs_sample"] = statistics.median(ratios)
        engine_row["speedup_min"], engine_row["speedup_max"] = min(ratios), max(ratios)
        engine_row["forwards_ratio_vs_sample"] = sample_row["forwards"] / engine_row["forwards"]
    payload = {
        "benchmark": "bench_engine",
        "config": config.name,
        "machine": machine_info(config),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "default_max_rows": default_max_rows(torch.device(config.device)),
        "forward_cost_curve": curve,
    }
    path = write_results(args.name or f"engine_{config.name}", payload, rows)
    for r in rows:
        print(
            f"T={r['steps']:5d} {r['variant']:6s} forwards {r['forwards']:6d} rows/forward {r['rows_per_forward']:.2f} "
            f"fill {r['fill']:.1%} (under load {'n/a' if r['fill_under_load'] is None else format(r['fill_under_load'], '.1%')}) "
            f"{r['median_s']:.2f} s "
            f"{r['samples_per_s']:.2f} samples/s tokens equal {r['tokens_equal_sample']}"
        )
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
